"""The mypy gate's internals: what ``divergefork check`` adds to plain mypy and the plugin.

- ``codes``: the error codes (``divergefork-entry``, ``-indirect``, ``-unsound``, ``-hookimpl``,
  ``-config``) and the names of what the gate knows about.
- ``divergence``: when a type proves divergence, and where a type that does not meets one that
  declares it.
- ``markers``: a pluggy hookimpl marker of divergefork, recognised by what it is, not how it is spelt.
- ``postpass``: one walk over a type-checked module: every place a value flows into a declared
  divergent type (the sinks), indirect uses of the fork functions, NoReturn proofs that were
  switched off.
- ``driver``: runs mypy's build with the typed trees kept, the post-pass over the modules it
  checked, a cache of the post-pass for the modules mypy did not re-check, and the report of
  configuration that switches the gate off.

Only mypy (through ``divergefork.mypy``) and the ``divergefork check`` child process import this
package; the runtime never does.
"""

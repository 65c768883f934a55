"""Build throwaway plugin distributions: a module plus a ``*.dist-info`` with an entry point.

``importlib.metadata`` finds a distribution through any ``NAME-VERSION.dist-info`` directory
with a ``METADATA`` file on ``sys.path``, so a temporary directory on ``sys.path`` (or on
``PYTHONPATH`` for a subprocess) is a real installed distribution as far as discovery goes.
Broken plugins live here as source text, not as files under ``tests/``: mypy checks ``tests``
strictly, and these are broken on purpose.
"""

from __future__ import annotations

import itertools
import os
import textwrap
from pathlib import Path

_counter = itertools.count()


def unique(prefix: str) -> str:
    """A module name no other test uses (imported modules stay in ``sys.modules``)."""
    return f"{prefix}_{os.getpid()}_{next(_counter)}"


def make_distribution(
    site: Path,
    dist: str,
    modules: dict[str, str],
    entry_points: dict[str, str],
    version: str = "0.1.0",
) -> Path:
    """Write ``modules`` (name -> source) and a dist-info for ``dist`` into ``site``."""
    site.mkdir(parents=True, exist_ok=True)
    for module, source in modules.items():
        (site / f"{module}.py").write_text(textwrap.dedent(source))
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    lines = ["[divergefork]", *(f"{name} = {value}" for name, value in entry_points.items())]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    return site


#: A plugin whose child writes a marker file when it runs (to prove nothing was forked).
MARKER_PLUGIN = """
    from __future__ import annotations
    from pathlib import Path
    from typing import NoReturn
    import divergefork as df

    def touch(path: str) -> NoReturn:
        Path(path).write_text("forked")
        df.exit_child(0)

    @df.hookimpl
    def divergefork_children(config):
        return [df.ChildSpec({name!r}, {marker!r}, touch)]
"""


def marker_plugin(name: str, marker: Path) -> str:
    source = MARKER_PLUGIN.replace("{name!r}", repr(name)).replace("{marker!r}", repr(str(marker)))
    return textwrap.dedent(source)

"""The ``divergefork`` command line: a thin layer that parses, calls the API, prints and maps
outcomes to exit codes. One idea a module:

- ``_main``: ``main()``, the dispatch to a command, ``divergefork list``;
- ``_parse``: the parser, the pre-scan that finds plugins before the full parse, option types;
- ``_run``: ``divergefork run``'s loop: fork through a ``Scope``, follow, cancel, exit code;
- ``_view``: what is shown while it runs (live view on a terminal, plain lines, ``-q``);
- ``_lines``: children's captured output, line-whole and prefixed with their names;
- ``_summary``: the final text: table, failure details, whole reports (``-v``), verdict;
- ``_style``: colour (``--color``, ``NO_COLOR``);
- ``_files``: report files (JSON document of the run, JUnit XML), written atomically;
- ``_signals``: SIGTERM handled as Ctrl-C, and the live view's clock (SIGALRM);
- ``_streams``: writing to stdout/stderr when the reader may go away (exit 141).

Exit codes (see ``_exitcodes``): 0 every child ``ok``; 1 something failed after forking; 2
usage, configuration or plugin error, and then nothing was forked; 130 interrupted by Ctrl-C
or SIGTERM (every child terminated and reaped first, report files still written); 141 our
stdout was closed by its reader: the children still run to their end and are reaped.

With ``--json -`` stdout carries the JSON document and nothing else: the table goes to stderr,
children's output is captured, and whatever a plugin hook prints to ``sys.stdout`` is sent to
stderr.
"""

from __future__ import annotations

from .._exitcodes import EXIT_BROKEN_PIPE, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE
from ._files import junit_xml, write_atomic
from ._main import main
from ._parse import build_parser, prescan

__all__ = [
    "EXIT_BROKEN_PIPE",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "build_parser",
    "junit_xml",
    "main",
    "prescan",
    "write_atomic",
]

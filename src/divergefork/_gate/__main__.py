"""``python -m divergefork._gate``: the gate's child process (see ``driver``)."""

from __future__ import annotations

import sys

from .driver import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

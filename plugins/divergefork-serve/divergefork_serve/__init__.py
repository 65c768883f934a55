"""Example divergefork plugin: a server-style child, and how its deadline is enforced.

The ``serve`` child "serves" (ticks) in a loop. By default it stops on its own after
``--serve-seconds`` (0.5 s) and exits 0, so a plain ``divergefork run`` stays green. With
``--serve-forever`` it never stops: its deadline (``--serve-timeout``, 1 s) passes, the parent
sends SIGTERM to its process group, then SIGKILL after the grace period if it is still there,
and the report says ``timed_out``. The entry diverges either way, which is what ``-> NoReturn``
promises: it exits, or it loops until it is killed.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NoReturn, final

import divergefork as df

__all__ = ["ServeConfig", "divergefork_addoption", "divergefork_children", "serve"]


@final
@dataclass(frozen=True, slots=True)
class ServeConfig:
    """What the parent lends the child: how long to serve (``None``: until killed)."""

    seconds: float | None
    tick: float = 0.05


def serve(config: ServeConfig) -> NoReturn:
    """The child's entry: tick until ``config.seconds`` pass, or forever."""
    started = time.monotonic()
    ticks = 0
    while config.seconds is None or time.monotonic() - started < config.seconds:
        time.sleep(config.tick)  # stands in for handling one request
        ticks += 1
    df.exit_child(0, result={"ticks": ticks})


def _seconds(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0, not {text!r}")
    return value


@df.hookimpl
def divergefork_addoption(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("divergefork-serve")
    group.add_argument(
        "--serve-seconds", type=_seconds, default=0.5, metavar="S", help="how long serve runs (default 0.5)"
    )
    group.add_argument(
        "--serve-forever",
        action="store_true",
        help="serve never stops on its own, so its deadline ends it (outcome timed_out)",
    )
    group.add_argument(
        "--serve-timeout", type=_seconds, default=1.0, metavar="S", help="serve's deadline (default 1.0)"
    )


@df.hookimpl
def divergefork_children(config: df.Config) -> Sequence[df.ChildSpec[ServeConfig]]:
    options = config.options
    seconds = None if options.serve_forever else float(options.serve_seconds)
    timeout = float(options.serve_timeout)
    if seconds is not None:
        # Without --serve-forever serve must end on its own, so its deadline never fires first.
        timeout = max(timeout, seconds + 5.0)
    return [df.ChildSpec("serve", ServeConfig(seconds), serve, timeout=timeout)]

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Final, NoReturn, Protocol, TypeVar, cast, overload

import pluggy
from typing_extensions import TypeGuard, TypeIs

import divergefork as df

T = TypeVar("T")


def entry(n: int) -> NoReturn:
    df.exit_child(n)


def loose(n: int) -> Any:
    os._exit(n)



"""Module-level functions the tests send to workers (importable by reference
under every start method)."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from parloop import parallel_for


def square(x: int) -> int:
    return x * x


def add(x: int, y: int = 0, *, z: int = 0) -> int:
    return x + y + z


def pid_of(_: object) -> int:
    return os.getpid()


def sleep_then(x: float) -> float:
    time.sleep(x)
    return x


def fail_on(x: int, bad: int = 3) -> int:
    if x == bad:
        raise ValueError(f"item {x} is bad")
    return x


def raise_base(x: int, kind: str = "KeyboardInterrupt") -> int:
    if x == 1:
        raise {"KeyboardInterrupt": KeyboardInterrupt, "SystemExit": SystemExit}[kind]()
    return x


def die_on(x: int, bad: int = 2, how: str = "exit") -> int:
    if x == bad:
        if how == "exit":
            os._exit(7)
        elif how == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif how == "segv":
            import ctypes
            ctypes.string_at(0)
    return x


class Unpicklable:
    """Pickles fine in the caller, refuses to unpickle anywhere."""

    def __init__(self, value: int) -> None:
        self.value = value

    def __reduce__(self) -> Any:
        return (_refuse, (self.value,))


def _refuse(value: int) -> Any:
    raise RuntimeError(f"cannot rebuild {value}")


class NoPickle:
    """Refuses to be pickled at all."""

    def __reduce__(self) -> Any:
        raise TypeError("NoPickle refuses pickling")


def make_result(x: int, kind: str) -> Any:
    if x == 1 and kind == "unpicklable-result":
        return NoPickle()
    if x == 1 and kind == "unloadable-result":
        return Unpicklable(x)
    return x


def identity(x: Any) -> Any:
    return x


@parallel_for
def decorated_square(x: int) -> int:
    """Square a number."""
    return x * x


@parallel_for
def nested_outer(x: int) -> tuple[int, list[int], str | None]:
    inner = decorated_square(range(x + 2))
    plan = decorated_square.last_plan
    return x, inner, plan.backend if plan else None


class Scaler:
    def __init__(self, factor: int) -> None:
        self.factor = factor

    @parallel_for
    def scale(self, x: int) -> int:
        return x * self.factor

    @parallel_for
    @staticmethod
    def double(x: int) -> int:
        return 2 * x

    @parallel_for
    @classmethod
    def named(cls, x: int) -> str:
        return f"{cls.__name__}:{x}"

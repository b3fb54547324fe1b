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


# -- for test_faults.py ------------------------------------------------------------


def pid_after(delay: float) -> int:
    """Sleep, then say which worker ran the item."""
    time.sleep(delay)
    return os.getpid()


def parent_pid(_: object) -> int:
    return os.getppid()


def mark_then_sleep(x: int, directory: str, delay: float, bad: int = -1) -> int:
    """Leave a file named after the item as it starts, then sleep (item
    ``bad`` raises ValueError instead)."""
    with open(os.path.join(directory, str(x)), "w"):
        pass
    if x == bad:
        raise ValueError(f"item {x} is bad")
    time.sleep(delay)
    return x


def fail_once(x: int, directory: str) -> int:
    """Raise ValueError the first time each item runs (a file remembers)."""
    marker = os.path.join(directory, f"tried-{x}")
    if not os.path.exists(marker):
        with open(marker, "w"):
            pass
        raise ValueError(f"item {x} fails on its first try")
    return x


def die_once(x: int, directory: str, bad: int = 2) -> int:
    """The worker running item ``bad`` exits the first time it runs it."""
    marker = os.path.join(directory, f"died-{x}")
    if x == bad and not os.path.exists(marker):
        with open(marker, "w"):
            pass
        os._exit(9)
    return x


def big_bytes(size: int) -> bytes:
    return b"r" * size


def length(data: bytes) -> int:
    return len(data)


def big_or_die(x: int, size: int, bad: int = -1) -> bytes:
    """A big result, except that item ``bad`` kills its worker."""
    if x == bad:
        time.sleep(0.2)  # let the other worker's big result get under way
        os.kill(os.getpid(), signal.SIGKILL)
    return bytes([x % 256]) * size


def nested_explicit(x: int) -> tuple[list[int], str | None]:
    """A worker calling a function decorated with backend='process' itself."""
    inner = parallel_for(square, backend="process", workers=2)
    result = inner(range(x + 2))
    return result, inner.last_plan.backend if inner.last_plan else None


def die_quietly_on(x: int, bad: int = 2, how: str = "exit") -> int:
    """``die_on`` without faulthandler's report of the segfault (it is expected)."""
    import faulthandler
    faulthandler.disable()
    return die_on(x, bad, how)


def mark_then_sleep_pair(pair: tuple[int, float], directory: str) -> int:
    """``(name, seconds)``: leave a file called ``name``, sleep, return ``name``."""
    name, delay = pair
    return mark_then_sleep(name, directory, delay)


class ExitOnUnpickle:
    """Pickles fine; the process that unpickles it exits on the spot."""

    def __reduce__(self) -> Any:
        return (os._exit, (3,))


def send_worker_pids(conn: Any, method: str) -> None:
    """In a child process: run a call, send back which workers ran it."""
    pids = parallel_for(pid_after, backend="process", workers=2, start_method=method,
                        chunksize=1)([0.05] * 4)
    conn.send(sorted(set(pids)))
    conn.close()


def parent_after(delay: float) -> int:
    """Sleep, then say which process started the worker that ran the item."""
    time.sleep(delay)
    return os.getppid()


def stop_on(x: int, bad: int = 3) -> int:
    """Raises StopIteration, which a loop driving it could mistake for its own end."""
    if x == bad:
        raise StopIteration(f"item {x}")
    return x


class LoadsNowhere:
    """A callable that pickles in the caller and refuses to unpickle anywhere."""

    def __call__(self, x: int) -> int:
        return x

    def __reduce__(self) -> Any:
        return (_refuse, (0,))


class FakeClock:
    """A clock the planner's tests move by hand: decisions on synthetic costs."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# -- setup= ---------------------------------------------------------------------------------


def note_setup(log: str) -> dict[str, Any]:
    """A setup that writes one line per run to ``log`` (from any process)
    and returns where it ran: the state the items get."""
    import threading

    from parloop import worker_id

    try:
        index = worker_id()
    except RuntimeError:  # Ray gives its workers no index
        index = -1
    here = {"pid": os.getpid(), "thread": threading.get_ident(), "id": index}
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, f"{here['pid']} {here['thread']} {here['id']}\n".encode())
    finally:
        os.close(fd)
    return here


def failing_setup(log: str) -> Any:
    note_setup(log)
    raise ValueError("the model file is missing")


def with_state(state: dict[str, Any], x: int, pause: float = 0.0) -> tuple[Any, ...]:
    """Which state this item got, the worker_id() it saw, and the item."""
    import threading

    from parloop import worker_id

    time.sleep(pause)
    return state["pid"], state["thread"], state["id"], os.getpid(), threading.get_ident(), \
        worker_id(), x


def state_pid(state: dict[str, Any], x: int) -> tuple[int, int, int, int]:
    """(the pid the state was made in, this item's pid, the state's worker id, x)."""
    return state["pid"], os.getpid(), state["id"], x


def start_sleep_end(directory: str, name: str, seconds: float) -> str:
    """Leave ``name``.started, sleep, then leave ``name``.ended."""
    with open(os.path.join(directory, f"{name}.started"), "w"):
        pass
    time.sleep(seconds)
    with open(os.path.join(directory, f"{name}.ended"), "w"):
        pass
    return name


def pick(i: int, table: Any) -> Any:
    """Item ``i`` of ``table`` (an extra argument), or the type of ``table``."""
    return table[i] if hasattr(table, "__getitem__") else type(table).__name__


def counted(state: dict[str, Any], x: int, pause: float = 0.0) -> int:
    """Counts the items its state has served, then returns the item."""
    state["n"] = state.get("n", 0) + 1
    time.sleep(pause)
    return x


def close_noted(state: dict[str, Any]) -> dict[str, Any]:
    """A teardown: where its state was made, where it ends, and how many
    items the state served."""
    import threading

    from parloop import worker_id

    return {"made": (state["pid"], state["thread"], state["id"]),
            "ended": (os.getpid(), threading.get_ident(), worker_id()), "n": state.get("n", 0)}


def close_failing(state: dict[str, Any]) -> dict[str, Any]:
    """A teardown that raises in worker 1 (and returns elsewhere)."""
    if state["id"] == 1:
        raise OSError("the disk is full")
    return close_noted(state)


def whose_id(pause: float) -> int:
    """The worker_id() of the worker running this item."""
    from parloop import worker_id

    time.sleep(pause)
    return worker_id()


def spin_for(seconds: float, x: int) -> int:
    """Keeps one CPU busy (holding the GIL) for ``seconds`` of its own CPU time."""
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass
    return x


def run_script(path: Any, text: str, *args: str, timeout: float = 100) -> str:
    """Write ``text`` to ``path``, run it as a script with ``args`` (its
    functions are then of ``__main__``); its output, once it succeeded."""
    import subprocess
    import sys

    path.write_text(text)
    done = subprocess.run([sys.executable, str(path), *args], capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, done.stderr
    return done.stdout

"""What travels between the caller and a worker, named once.

The process backend sends these over a worker's pipe; the cluster backends
send a job's spec once and each chunk as a remote task, whose reply is a
list of ``Done``; the thread backend passes ``Done`` in memory. Every side
runs items with the one loop in ``_runner``.

The process backend's own pipe messages (``RunChunk``, ``Cancel`` and the
rest) are in ``process/messages.py``; what every backend shares is here::

    JobSpec(fn, args, kwargs, star, ...) what every item of a job shares
    Done(job_id, start, values, errors,  results of consecutive items (a chunk
         busy, final, slowest, wrapped,  reports in parts every 50 ms), with the
         cpu)                            seconds they took and the CPU time spent
    Ended(job_id, worker, made, value,   what teardown(state) returned (value,
          error)                         pickled) or raised (error, Captured)

An exception crosses as a ``Captured``: its pickle (when it has one), type,
message and formatted traceback; ``rebuild`` turns it back into the
exception with the worker's traceback as its ``__cause__``.
"""



import pickle
from collections.abc import Callable
from typing import Any, NamedTuple

from .. import _pickling
from ..errors import ParloopError, RemoteTraceback, RemoteUnpicklingError
from .base import Chunk, Ended, Job, Outcome

__all__ = [
    "Captured",
    "Done",
    "JobSpec",
    "Pickled",
    "SpecCache",
    "capture",
    "decode",
    "dump_value",
    "end_state",
    "failed_outcome",
    "pack_items",
    "rebuilt",
    "unpickle_error",
]

PROTOCOL = 5


class JobSpec(NamedTuple):
    """What every item of a job shares; a worker loads it once per job."""

    fn: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    star: bool
    stop_on_error: bool
    flush_every: float  # seconds between partial reports of a chunk
    timed: bool  # the job has a timeout: each item's start is written down
    setup: Any = None  # a _state.Setup: each worker's state goes before the item

    @classmethod
    def of(cls, job: Job, flush_every: float, timed: bool) -> "JobSpec":
        return cls(job.fn, job.args, job.kwargs, job.star, job.stop_on_error, flush_every, timed,
                   job.setup)


class Captured(NamedTuple):
    """An exception that crossed a process boundary."""

    blob: bytes | None  # its pickle, when it has one that loads again
    type_name: str
    message: str
    traceback: str

    def rebuild(self) -> BaseException:
        """The exception with its own type, the worker's traceback as its cause."""
        exc: BaseException | None = None
        if self.blob is not None:
            try:
                exc = pickle.loads(self.blob)
            except Exception:
                exc = None
        if not isinstance(exc, BaseException):
            exc = ParloopError(f"{self.type_name}: {self.message} (raised in a worker; the "
                               "exception itself could not be sent back)")
        if self.traceback:
            exc.__cause__ = RemoteTraceback(self.traceback)
        return exc


class Done(NamedTuple):
    job_id: int
    start: int
    values: list[Any]  # a result as it is (small and plain), a Pickled one, or None
    errors: dict[int, Any]  # offset in values -> a Captured (or, in memory, the exception)
    busy: float
    final: bool  # the chunk is fully reported
    slowest: tuple[float, int]  # (seconds, index) of its slowest item timed on its own
    wrapped: bool  # some values are Pickled: the caller unwraps each
    cpu: float = 0.0  # CPU seconds the worker spent meanwhile (see _runner)


class Pickled:
    """A result pickled on its own, so that one that will not unpickle in
    the caller fails alone. Small ints, floats, strings and the like travel
    as they are, pickled with their whole batch: a pickle.dumps call per
    item costs ~0.8 µs, more than the item itself on a 1 µs function."""

    __slots__ = ("data",)

    def __init__(self, data: Any) -> None:
        self.data = data

    def __reduce__(self) -> tuple[Any, ...]:
        return Pickled, (self.data,)


def dump_value(value: Any) -> bytes:
    """Items and results: the C pickler, falling back to cloudpickle for
    values plain pickle refuses (a lambda returned as a result)."""
    try:
        return _pickling.plain_dumps(value)
    except Exception:
        return _pickling.dumps(value)


cloud_dumps = _pickling.dumps  # by value what plain pickle refuses, memmaps as their file


def capture(exc: BaseException) -> Captured:
    """``exc``, ready to cross to the caller."""
    import traceback  # only on a failure: it costs every worker ~1 ms to import

    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    exc.__traceback__ = None  # tracebacks do not pickle; the text carries them
    blob: bytes | None = None
    try:
        dumped = dump_value(exc)
        pickle.loads(dumped)  # some exceptions pickle but cannot be rebuilt
        blob = dumped
    except Exception:
        pass
    kind = type(exc)
    return Captured(blob, f"{kind.__module__}.{kind.__qualname__}", str(exc), text)


def unpickle_error(what: str, index: int | None, exc: BaseException,
                   pickling: bool = False) -> RemoteUnpicklingError:
    """``what`` of item ``index`` (None: the job's function or arguments)
    failed to load (or, ``pickling``, to be pickled) in this worker."""
    import os

    where = "pickled in the worker" if pickling else "unpickled in the worker"
    whose = f"the {what} of item #{index}" if index is not None else f"the {what}"
    error = RemoteUnpicklingError(f"{whose} could not be {where} (pid {os.getpid()}): "
                                  f"{type(exc).__name__}: {exc}", item=index)
    error.__cause__ = exc
    return error


def rebuilt(answer: Ended, load: Callable[[Any], Any]) -> Ended:
    """(In the caller.) ``answer`` as it crossed, with its value loaded by
    ``load`` and its error rebuilt."""
    value, error = answer.value, answer.error
    if isinstance(error, Captured):
        error = error.rebuild()
    elif answer.made and error is None:
        try:
            value = load(value)
        except BaseException as exc:
            error = unpickle_error("teardown's result", None, exc)
    return answer._replace(value=value, error=error)


def end_state(job_id: int, setup: Any, per_thread: bool = False,
              pack: Callable[[Any], Any] | None = None) -> Ended:
    """(In a worker.) End this worker's state of ``setup`` (a ``_state.Setup``;
    see ``_state.end_here``); ``pack``: make it ready to cross to the caller."""
    from ._state import end_here, known_id

    made, value, error = end_here(setup, per_thread)
    if pack is None or not made:
        return Ended(job_id, known_id(), made, value, error)
    if error is None:
        try:
            value = pack(value)
        except BaseException as exc:
            value, error = None, unpickle_error("teardown's result", None, exc, pickling=True)
    return Ended(job_id, known_id(), made, value, None if error is None else capture(error))


class SpecCache:
    """A worker's loaded job specs: each loaded once, on first use, or the
    error that loading it raised (raised again for each of its chunks).
    ``limit``: how many to keep (a cluster worker serves many callers)."""

    def __init__(self, load: Callable[[Any], Any], limit: int | None = None) -> None:
        self._load = load
        self._limit = limit
        self._raw: dict[Any, Any] = {}
        self._loaded: dict[Any, JobSpec | BaseException] = {}

    def add(self, key: Any, payload: Any) -> None:
        self._raw[key] = payload

    def get(self, key: Any, payload: Any = None) -> JobSpec:
        spec = self._loaded.pop(key, None)
        if spec is None:
            raw = self._raw.pop(key, payload)
            try:
                spec = JobSpec(*self._load(raw))
            except BaseException as exc:
                spec = exc
        self._loaded[key] = spec  # the most recently used last
        if self._limit is not None and len(self._loaded) > self._limit:
            del self._loaded[next(iter(self._loaded))]
        if isinstance(spec, BaseException):
            raise spec
        return spec

    def forget(self, key: Any) -> JobSpec | None:
        """Drop ``key``'s spec; the spec, if it was loaded (its items ran here)."""
        self._raw.pop(key, None)
        spec = self._loaded.pop(key, None)
        return spec if isinstance(spec, JobSpec) else None


# -- the caller's side -------------------------------------------------------------------------


def pack_items(items: Any, by_value: bool, pack: Callable[..., Any] | None = None) -> Any:
    """``items`` ready to send, by ``pack(value, dump, fallback=)`` (default:
    ``dump_value``). By value (cloudpickle) when ``by_value`` and their pickle
    names something of ``__main__``, which the worker may lack (a class of
    the script); a class made inside a function always goes by value."""
    if pack is None:
        blob: Any = dump_value(items)
        if by_value and _pickling.mentions_main(blob):
            blob = _pickling.dumps(items)
        return blob
    packed = pack(items, fallback=_pickling.dumps)
    if by_value and _pickling.mentions_main(getattr(packed, "blob", packed)):
        packed = pack(items, _pickling.dumps)
    return packed


def pack_item(index: int, item: Any, by_value: bool,
              pack: Callable[..., Any] | None = None) -> tuple[str, Any]:
    """One item on its own: ``("item", packed)``, or ``("failed", the
    pickled explanation)`` when it cannot be pickled here."""
    try:
        return ("item", pack_items(item, by_value, pack))
    except Exception as exc:
        return ("failed", capture(_pickling.explain_item(index, item) or exc))


def decode(chunk: Chunk, done: Done, worker: str, load: Callable[[Any], Any] = pickle.loads
           ) -> Outcome:
    """The Outcome a ``Done`` of ``chunk`` stands for. Each Pickled result is
    loaded on its own (``load``), so one that fails fails alone."""
    start = done.start
    failed: dict[int, BaseException] = {
        start + offset: info.rebuild() if isinstance(info, Captured) else info
        for offset, info in done.errors.items()}
    if not done.wrapped:  # all small plain results: the list as it came
        outcome = Outcome(chunk.job.id, start, done.values, failed, done.busy, worker)
        outcome.slowest, outcome.cpu = done.slowest, done.cpu
        return outcome
    values: list[Any] = []
    for offset, blob in enumerate(done.values):
        if type(blob) is not Pickled:  # None (failed) or a small plain result as it is
            values.append(blob)
            continue
        try:
            values.append(load(blob.data))
        except Exception as exc:
            values.append(None)
            error = RemoteUnpicklingError(
                f"the result of item #{start + offset} could not be unpickled in the caller: "
                f"{type(exc).__name__}: {exc}", item=start + offset)
            error.__cause__ = exc
            failed[start + offset] = error
    outcome = Outcome(chunk.job.id, start, values, failed, done.busy, worker)
    outcome.slowest, outcome.cpu = done.slowest, done.cpu
    return outcome


def failed_outcome(chunk: Chunk, start: int, error: BaseException,
                   end: int | None = None) -> Outcome:
    """Items ``start .. end - 1`` of ``chunk`` (to its end) all failed with ``error``."""
    import copy

    stop = chunk.start + len(chunk.items) if end is None else end
    errors = {index: error if index == stop - 1 else copy.copy(error)
              for index in range(start, stop)}
    return Outcome(chunk.job.id, start, [None] * (stop - start), errors)

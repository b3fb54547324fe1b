"""Sending functions to workers, and saying exactly what cannot be sent.

Functions travel by reference when a worker is sure to find the very same
object under the same name, and by value (cloudpickle) otherwise:

* importable functions go by reference;
* lambdas, closures and every function of ``__main__`` (a script, ``python
  -c``, stdin, the REPL, a notebook cell) go by value. A worker may have no
  such name (the function was defined after the worker started, inside the
  ``if __name__ == "__main__":`` block, or in a REPL), or an old one (a
  notebook cell run again), and by value it also sees the globals the
  function uses as they are *now*, as a plain loop would. Its ``__module__``
  and ``__qualname__`` stay as they are, so caches keyed by them still hit.

A function decorated with ``@parallel_for`` is a special case: its module
attribute is the wrapper, so plain pickle refuses it ("not the same object").
We send the *undecorated* function (by reference when importable, else by
value), so a worker never calls the wrapper and never dispatches again.
"""

from __future__ import annotations

import copyreg
import importlib
import io
import mmap
import pickle
import sys
import types
from collections.abc import Callable, Iterable
from typing import Any

from .errors import UnpicklableError, short_repr

__all__ = ["dumps", "explain_unpicklable", "is_wrapper", "loads", "mentions_main", "open_memmap",
           "plain_dumps"]

PROTOCOL = 5
loads = pickle.loads


def is_wrapper(obj: object) -> bool:
    """True for the object that ``@parallel_for`` returns (checked on the type:
    a wrapt proxy answers attribute questions on behalf of what it wraps)."""
    return getattr(type(obj), "_parloop_wrapper", False) is True


def _unwrap(obj: Any) -> Any:
    while True:
        if is_wrapper(obj):
            obj = obj.__wrapped__
        elif isinstance(obj, (staticmethod, classmethod)):
            obj = obj.__func__
        else:
            return obj


def _lookup(module_name: str, qualname: str) -> Any:
    # vars(), not getattr(): getattr on a class would bind the wrapper.
    owner: Any = importlib.import_module(module_name) if module_name not in sys.modules \
        else sys.modules[module_name]
    for part in qualname.split("."):
        owner = vars(owner)[part] if hasattr(owner, "__dict__") and part in vars(owner) \
            else getattr(owner, part)
    return owner


def load_unwrapped(module_name: str, qualname: str) -> Any:
    """Worker side: the undecorated function behind ``module.qualname``."""
    return _unwrap(_lookup(module_name, qualname))


def load_wrapper(module_name: str, qualname: str) -> Any:
    """Worker side: the decorated function itself (passed around as data)."""
    return _lookup(module_name, qualname)


def _reference(fn: Any) -> tuple[str, str] | None:
    """``(module, qualname)`` if that name resolves, through wrappers, to
    ``fn`` in a module a worker imports as it is here (not ``__main__``)."""
    module_name = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", None)
    if not module_name or not qualname or "<locals>" in qualname or "<lambda>" in qualname:
        return None
    if module_name in _MAIN_NAMES:
        return None
    module = sys.modules.get(module_name)
    if module is None:
        return None
    try:
        found = _lookup(module_name, qualname)
    except (AttributeError, KeyError, ImportError):
        return None
    if found is fn or not (is_wrapper(found) or isinstance(found, (staticmethod, classmethod))):
        return None
    return (module_name, qualname) if _unwrap(found) is fn else None


_MAIN_NAMES = frozenset({"__main__", "__mp_main__"})


def portable_options(options: dict[str, Any]) -> dict[str, Any]:
    """The options a decorated function keeps when it travels as data: a
    call made inside a worker runs serially there, so only those that
    change what the results are matter."""
    return {k: v for k, v in options.items() if k in ("errors", "star", "retries", "retry_on")}


def mentions_main(blob: Any) -> bool:
    """Whether a pickle names something in ``__main__`` (a class of the
    script, say), which a worker without the caller's ``__main__`` cannot
    load by reference. A byte search: false positives only cost speed."""
    if isinstance(blob, pickle.PickleBuffer):
        blob = blob.raw().obj
    return isinstance(blob, (bytes, bytearray)) and b"__main__" in blob


# -- NumPy memmaps travel as their file ---------------------------------------------------
#
# A memmap pickled as numpy pickles it becomes a private copy in the worker,
# and whatever the worker writes into it is lost without a word. parloop
# sends one (or a view of one) as its file, offset, dtype, shape and
# strides instead, and the worker maps the same file: its writes land in the
# file, and so in the caller's memmap, as joblib's memmapping does. A
# writable memmap that has no file name cannot be shared, and says so.


def _mapped_owner(array: Any, numpy: Any) -> Any:
    """The np.memmap whose mapping ``array`` is, or a view of; None if none."""
    while array is not None:
        if isinstance(array, numpy.memmap) and getattr(array, "_mmap", None) is not None:
            return array
        array = getattr(array, "base", None)
    return None


def _reduce_mapped(array: Any) -> Any:
    numpy = sys.modules["numpy"]
    owner = _mapped_owner(array, numpy)
    if owner is None:
        return array.__reduce_ex__(PROTOCOL)  # numpy's own: the data, out of band
    if owner.filename is None:
        if owner.mode in ("r+", "w+"):
            raise UnpicklableError(
                "a writable np.memmap without a file name cannot be shared with a worker, "
                "and a copy would lose its writes: map a named file, or use backend='thread'")
        return numpy.asarray(array).copy().__reduce_ex__(PROTOCOL)  # read-only: a copy is the same
    start = numpy.frombuffer(owner._mmap, dtype=numpy.uint8).__array_interface__["data"][0]
    offset = owner.offset - owner.offset % mmap.ALLOCATIONGRANULARITY \
        + array.__array_interface__["data"][0] - start
    mode = "r+" if owner.mode == "w+" else owner.mode  # never truncate the caller's file
    return open_memmap, (owner.filename, array.dtype, mode, offset, array.shape, array.strides)


def open_memmap(path: str, dtype: Any, mode: str, offset: int, shape: tuple[int, ...],
                strides: tuple[int, ...]) -> Any:
    """Worker side: the array an ``_reduce_mapped`` stands for, mapped from its file."""
    numpy: Any = importlib.import_module("numpy")

    if 0 in shape:
        return numpy.empty(shape, dtype)
    for order in ("C", "F"):
        probe = numpy.empty((1,) * len(shape), dtype)
        natural = numpy.lib.stride_tricks.as_strided(probe, shape, strides).flags
        if (order == "C" and natural.c_contiguous) or (order == "F" and natural.f_contiguous):
            return numpy.memmap(path, dtype=dtype, mode=mode, offset=offset, shape=shape,
                                order=order)
    itemsize = numpy.dtype(dtype).itemsize
    low = sum(min(0, (n - 1) * s) for n, s in zip(shape, strides, strict=True))
    high = sum(max(0, (n - 1) * s) for n, s in zip(shape, strides, strict=True)) + itemsize
    span = numpy.memmap(path, dtype=numpy.uint8, mode=mode, offset=offset + low,
                        shape=(high - low,))
    return numpy.ndarray(shape, dtype, buffer=span, offset=-low, strides=strides)


_memmap_tables: dict[int, dict[Any, Any]] = {}


def plain_dumps(value: Any, buffer_callback: Callable[[pickle.PickleBuffer], Any] | None = None
                ) -> bytes:
    """``pickle.dumps`` at protocol 5 (the C pickler), except that NumPy
    memmaps, once NumPy is imported, travel as their file (see above)."""
    numpy = sys.modules.get("numpy")
    memmap = getattr(numpy, "memmap", None)
    if memmap is None:
        return pickle.dumps(value, PROTOCOL, buffer_callback=buffer_callback)
    table = _memmap_tables.get(id(memmap))
    if table is None:
        table = _memmap_tables[id(memmap)] = {**copyreg.dispatch_table,
                                               memmap: _reduce_mapped,
                                               numpy.ndarray: _reduce_mapped}  # type: ignore[union-attr]
    buffer = io.BytesIO()
    pickler = pickle.Pickler(buffer, PROTOCOL, buffer_callback=buffer_callback)
    pickler.dispatch_table = table
    pickler.dump(value)
    return buffer.getvalue()


_pickler: Any = None  # made on first use (see _cloud_pickler)


def _cloud_pickler() -> Any:
    """cloudpickle's Pickler with parloop's overrides, made on first use:
    cloudpickle's import (with dataclasses, inspect, platform) is ~17 ms of a
    fork server's or a spawned worker's start, and a worker whose results
    all pickle plainly never needs it (a by-value payload it loads imports
    cloudpickle by itself)."""
    global _pickler
    if _pickler is None:
        import cloudpickle

        class _Pickler(cloudpickle.Pickler):  # type: ignore[misc]
            def reducer_override(self, obj: Any) -> Any:
                numpy = sys.modules.get("numpy")
                if numpy is not None and isinstance(obj, getattr(numpy, "ndarray", ())) \
                        and _mapped_owner(obj, numpy) is not None:
                    return _reduce_mapped(obj)
                if is_wrapper(obj):
                    ref = _reference(obj.__wrapped__)
                    if ref is not None:
                        return load_wrapper, ref
                elif isinstance(obj, types.FunctionType):
                    ref = _reference(obj)
                    if ref is not None:
                        return load_unwrapped, ref
                elif type(obj) is types.CodeType:
                    return self._code(obj)
                return super().reducer_override(obj)

            def _code(self, code: types.CodeType) -> Any:
                """cloudpickle's reduction of a code object, with its file name kept.
                cloudpickle writes "<dynamic-code>" instead (for payloads that do
                not depend on where a function was defined); a worker's traceback
                then shows no source lines, and ``inspect.getsourcefile`` (which
                joblib.Memory keys a ``__main__`` function's cache by) no file."""
                reduce = self.dispatch_table.get(types.CodeType)
                if reduce is None:
                    return NotImplemented
                rebuild, args = reduce(code)
                return rebuild, tuple(code.co_filename if arg == "<dynamic-code>" else arg
                                      for arg in args)

        _pickler = _Pickler
    return _pickler


def dumps(obj: Any, buffer_callback: Callable[[pickle.PickleBuffer], Any] | None = None) -> bytes:
    """Pickle functions and their arguments: by reference where possible,
    by value otherwise, unwrapping parloop wrappers. ``buffer_callback`` as
    for ``pickle.dumps`` (protocol 5 buffers kept out of band)."""
    buffer = io.BytesIO()
    _cloud_pickler()(buffer, protocol=PROTOCOL, buffer_callback=buffer_callback).dump(obj)
    return buffer.getvalue()


def _fails(obj: Any) -> BaseException | None:
    try:
        dumps(obj)
    except Exception as exc:
        return exc
    return None


def _type_name(obj: Any) -> str:
    cls = type(obj)
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


def _deepest(obj: Any, path: str, depth: int = 0) -> tuple[str, Any]:
    """Follow containers and attributes down to the innermost unpicklable part."""
    if depth < 4:
        children: Iterable[tuple[str, Any]] = ()
        if isinstance(obj, (list, tuple, set, frozenset)):
            children = ((f"{path}[{i}]", x) for i, x in enumerate(list(obj)[:100]))
        elif isinstance(obj, dict):
            children = ((f"{path}[{k!r}]", v) for k, v in list(obj.items())[:100])
        elif isinstance(obj, types.FunctionType):
            children = _captured(obj)
        elif hasattr(obj, "__dict__") and not isinstance(obj, (type, types.ModuleType)):
            children = ((f"{path}.{k}", v) for k, v in list(vars(obj).items())[:100])
        for child_path, child in children:
            if _fails(child) is not None:
                return _deepest(child, child_path, depth + 1)
    return path, obj


def _global_names(code: types.CodeType) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _global_names(const)
    return names


def _captured(fn: types.FunctionType) -> list[tuple[str, Any]]:
    """What a function would carry with it: closure cells, then used globals."""
    out: list[tuple[str, Any]] = []
    for name, cell in zip(fn.__code__.co_freevars, fn.__closure__ or (), strict=False):
        try:
            out.append((f"function {fn.__name__!r} captures {name!r}", cell.cell_contents))
        except ValueError:  # an empty cell
            continue
    for name in sorted(_global_names(fn.__code__)):
        if name in fn.__globals__:
            out.append((f"function {fn.__name__!r} uses global {name!r}", fn.__globals__[name]))
    return out


def _describe_function(fn: Any) -> str:
    if isinstance(fn, types.MethodType):
        if _fails(fn.__self__) is not None:
            path, part = _deepest(fn.__self__, f"the instance of method {fn.__name__!r}")
            return f"{path}: {short_repr(part)} ({_type_name(part)}) cannot be pickled"
        fn = fn.__func__
    if hasattr(fn, "func") and hasattr(fn, "keywords"):  # functools.partial
        for label, value in [("its function", fn.func), *[(f"its argument #{i}", a) for i, a in
                             enumerate(fn.args)], *[(f"its argument {k!r}", v) for k, v in
                             fn.keywords.items()]]:
            if _fails(value) is not None:
                what = _describe_function(value) if callable(value) else short_repr(value)
                return f"partial {label}: {what}"
    if isinstance(fn, types.FunctionType):
        for label, value in _captured(fn):
            if _fails(value) is not None:
                path, part = _deepest(value, label)
                return f"{path} ({_type_name(part)}), which cannot be pickled"
    return f"function {getattr(fn, '__qualname__', short_repr(fn))!r} cannot be pickled"


def _argument_names(fn: Callable[..., Any], args: tuple[Any, ...], star: bool) -> list[str]:
    if not star:
        import inspect  # here: only an error message needs it

        try:
            params = list(inspect.signature(fn).parameters.values())[1:]
            names = [p.name for p in params
                     if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
            if len(names) >= len(args):
                return names[:len(args)]
        except (TypeError, ValueError):
            pass
    return [f"#{i + 1}" for i in range(len(args))]


def explain_unpicklable(fn: Callable[..., Any], args: tuple[Any, ...],
                        kwargs: dict[str, Any], star: bool = False) -> UnpicklableError | None:
    """An UnpicklableError naming the first part of a call that cannot be
    pickled, or None when the whole call pickles."""
    error = _fails(fn)
    if error is not None:
        return _error(_describe_function(fn), error)
    named = list(zip(_argument_names(fn, args, star), args, strict=True)) + list(kwargs.items())
    for name, value in named:
        error = _fails(value)
        if error is not None:
            path, part = _deepest(value, f"argument {name!r}")
            return _error(f"{path}: {short_repr(part)} ({_type_name(part)}) cannot be pickled", error)
    return None


def explain_item(index: int, item: Any) -> UnpicklableError | None:
    """An UnpicklableError naming what in item ``index`` cannot be pickled."""
    if type(item) in _ALWAYS_PICKLABLE:
        return None
    try:
        # The C pickler, with large buffers (arrays, bytes) passed by reference
        # rather than copied: checking a 100 MB item must not cost a full copy.
        pickle.dumps(item, PROTOCOL, buffer_callback=_keep_out_of_band)
        return None
    except Exception:
        pass  # cloudpickle may still manage (a lambda inside an item)
    error = _fails(item)
    if error is None:
        return None
    path, part = _deepest(item, f"item #{index}")
    return _error(f"{path}: {short_repr(part)} ({_type_name(part)}) cannot be pickled", error)


_ALWAYS_PICKLABLE = frozenset({bytes, bytearray, str, int, float, complex, bool, type(None)})


def _keep_out_of_band(buffer: pickle.PickleBuffer) -> bool:
    return False  # False: leave the buffer out of the pickle


def _error(message: str, cause: BaseException) -> UnpicklableError:
    error = UnpicklableError(
        f"{message} [{type(cause).__name__}: {cause}]. To fix: pass something picklable "
        "(create the resource inside the function), or use backend='thread', which "
        "pickles nothing.")
    error.__cause__ = cause
    return error

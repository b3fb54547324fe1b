"""Who a function is, across runs: its module, its qualified name and what
its code does. A checkpoint keys its stored results by it (``_checkpoint``,
with a strong hash) and the planner's memory its measured costs
(``_memory``). Imports nothing costly: a first call may read it."""

from __future__ import annotations

import functools
import types
from collections.abc import Callable
from typing import Any

__all__ = ["code_parts", "constant", "module", "qualname", "target"]


def target(fn: Callable[..., Any]) -> Any:
    """The user's function under parloop's decorator, if it is one."""
    return getattr(fn, "__wrapped__", fn) if hasattr(fn, "_self_state") else fn


def module(fn: Any) -> str:
    inner = fn.func if isinstance(fn, functools.partial) else getattr(fn, "__func__", fn)
    return str(getattr(inner, "__module__", None) or type(inner).__module__)


def qualname(fn: Any) -> str:
    inner = fn.func if isinstance(fn, functools.partial) else getattr(fn, "__func__", fn)
    return str(getattr(inner, "__qualname__", None) or type(inner).__qualname__)


def constant(value: Any) -> str:
    """A constant of a code object, spelled the same in every run (a
    frozenset's repr follows string hashing, which changes per process)."""
    if isinstance(value, frozenset):
        return "frozenset(" + ",".join(sorted(map(constant, value))) + ")"
    if isinstance(value, tuple):
        return "(" + ",".join(map(constant, value)) + ")"
    return repr(value)


def _fingerprint(code: types.CodeType, out: list[bytes]) -> None:
    """What ``code`` does: its bytecode, names and constants, nested code
    included; not its line numbers nor its file."""
    out += [code.co_code, repr((code.co_names, code.co_varnames, code.co_freevars,
                                code.co_cellvars, code.co_argcount, code.co_kwonlyargcount,
                                code.co_flags)).encode()]
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            _fingerprint(const, out)
        else:
            out.append(constant(const).encode())


def code_parts(fn: Any) -> list[bytes]:
    """What ``fn``'s code does, as bytes to hash: its bytecode, names,
    constants and defaults (not its line numbers nor its file); a partial's
    function's, a method's function's, a callable object's ``__call__``'s."""
    if isinstance(fn, functools.partial):
        return code_parts(fn.func)
    func = getattr(fn, "__func__", fn)  # a bound method: its function
    code = getattr(func, "__code__", None)
    if code is None:  # a callable object: its class's __call__
        call = getattr(type(func), "__call__", None)  # noqa: B004 (its code, not a test)
        func = getattr(call, "__func__", call)
        code = getattr(func, "__code__", None)
    parts: list[bytes] = []
    if code is not None:
        _fingerprint(code, parts)
        defaults = (getattr(func, "__defaults__", None), getattr(func, "__kwdefaults__", None))
        parts.append(constant(defaults).encode())
    else:  # a builtin: its name is all there is
        parts.append(f"{module(fn)}.{qualname(fn)}".encode())
    return parts

"""The five forms of parallel_for, seen from the user's side."""

from __future__ import annotations

import functools
import inspect
import math
import operator

import pytest
from helpers import Scaler, add, decorated_square, identity, square

import parloop
from parloop import Plan, parallel_for


def test_bare_decorator_returns_results_in_input_order() -> None:
    @parallel_for
    def cube(x: int) -> int:
        return x ** 3

    assert cube(range(6)) == [0, 1, 8, 27, 64, 125]


def test_decorator_with_options_passes_extra_args_to_every_item(backend: dict) -> None:
    adder = parallel_for(add, **backend)
    assert adder(range(5), 10, z=100) == [110, 111, 112, 113, 114]


def test_wrapping_builtins_partials_and_methods(backend: dict) -> None:
    assert parallel_for(math.sqrt, **backend)([1, 4, 9]) == [1.0, 2.0, 3.0]
    assert parallel_for(functools.partial(add, y=1), **backend)([1, 2]) == [2, 3]
    assert parallel_for("{}!".format, **backend)(["a", "b"]) == ["a!", "b!"]
    assert parallel_for(operator.neg, **backend)(range(3)) == [0, -1, -2]


def test_loop_form_binds_the_name_to_the_results() -> None:
    @parallel_for(range(10), workers=2)
    def squares(i: int) -> int:
        return i * i

    assert squares == [i * i for i in range(10)]


def test_loop_form_with_a_backend(backend: dict) -> None:
    @parallel_for([1, 2, 3], **backend)
    def doubled(i: int) -> int:
        return 2 * i

    assert doubled == [2, 4, 6]


def test_block_reuses_one_pool_for_every_call(backend: dict) -> None:
    with parallel_for(**backend) as pool:
        a = decorated_square(range(20))
        b = pool.map(len, ["a", "bb", "ccc"])
        c = list(pool.iter(square, range(4)))
        first = decorated_square.last_plan
        decorated_square(range(20))
    assert a == [x * x for x in range(20)]
    assert b == [1, 2, 3]
    assert c == [0, 1, 4, 9]
    assert first is not None and first.backend == backend["backend"]


def test_block_pool_is_started_once() -> None:
    pids = parallel_for(_pid, chunksize=1)
    with parallel_for(workers=2, backend="process") as pool:
        first = set(pool.map(pids, range(40)))
        second = set(pids(range(40)))
    assert first and first == second


def _pid(_: object) -> int:
    import os
    return os.getpid()


def test_decorator_options_win_over_the_blocks() -> None:
    explicit = parallel_for(square, backend="serial")
    with parallel_for(backend="thread", workers=2):
        explicit(range(3))
        decorated_square(range(3))
    assert explicit.last_plan is not None and explicit.last_plan.backend == "serial"
    assert decorated_square.last_plan is not None and decorated_square.last_plan.backend == "thread"


def test_nested_blocks_inherit_and_override() -> None:
    with parallel_for(backend="thread", workers=2), parallel_for(ordered=False):
        decorated_square(range(3))
    plan = decorated_square.last_plan
    assert plan is not None and plan.backend == "thread"


def test_wrapper_keeps_name_doc_signature_and_wrapped() -> None:
    assert decorated_square.__name__ == "decorated_square"
    assert decorated_square.__doc__ == "Square a number."
    assert str(inspect.signature(decorated_square)) == "(x: 'int') -> 'int'"
    assert decorated_square.__wrapped__(7) == 49


def test_methods_staticmethods_and_classmethods(backend: dict) -> None:
    obj = Scaler(3)
    with parallel_for(**backend):
        assert obj.scale([1, 2, 3]) == [3, 6, 9]
        assert Scaler.double([1, 2]) == [2, 4]
        assert obj.double([5]) == [10]
        assert Scaler.named([1, 2]) == ["Scaler:1", "Scaler:2"]


def test_star_unpacks_each_item(backend: dict) -> None:
    power = parallel_for(pow, star=True, **backend)
    assert power([(2, 3), (3, 2), (10, 0)]) == [8, 9, 1]


def test_unordered_returns_every_result(backend: dict) -> None:
    got = parallel_for(square, ordered=False, **backend)(range(50))
    assert sorted(got) == [x * x for x in range(50)]


def test_last_plan_is_none_before_the_first_call() -> None:
    fresh = parallel_for(square)
    assert fresh.last_plan is None
    fresh([1, 2])
    plan = fresh.last_plan
    assert isinstance(plan, Plan)
    assert str(plan).startswith(f"{plan.backend}: ")
    assert plan.reason


def test_decorating_twice_keeps_one_layer() -> None:
    twice = parallel_for(parallel_for(square, workers=2), backend="serial")
    assert twice(range(3)) == [0, 1, 4]


def test_public_names() -> None:
    for name in ("parallel_for", "cpu_count", "ParloopError", "UnpicklableError",
                 "WorkerCrashedError", "TaskTimeoutError", "BackendUnavailableError",
                 "ParloopWarning", "Plan"):
        assert hasattr(parloop, name), name
    assert parloop.cpu_count() >= 1


def test_empty_input_and_single_item(backend: dict) -> None:
    fn = parallel_for(square, **backend)
    assert fn([]) == []
    assert fn([3]) == [9]
    assert list(fn.iter([])) == []


def test_help_shows_complete_docs() -> None:
    doc = parallel_for.__doc__ or ""
    for word in ("workers", "backend", "ordered", "chunksize", "timeout", "errors",
                 "star", "progress", "start_method", "Raises"):
        assert word in doc
    with pytest.raises(TypeError):
        parallel_for(square)()  # type: ignore[call-arg]


def test_results_of_every_kind_come_back_equal(backend: dict) -> None:
    # Small plain results travel as they are with their batch, others pickled one by one.
    items = [0, -1, 2**80, 1.5, float("inf"), 2j, True, None, "", "s", "x" * 10_000, b"b",
             b"y" * 10_000, (1, "a"), [1, 2], {"k": 1}, frozenset({3})]
    assert parallel_for(identity, **backend)(items) == items

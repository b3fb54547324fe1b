"""Extra arguments reach workers forked during the call by inheritance, with
no pickling; other workers get them pickled, and the plan says which."""

from __future__ import annotations

import pytest
from helpers import NoPickle, pick, square

from parloop import UnpicklableError, parallel_for


def test_workers_forked_during_the_call_inherit_the_arguments() -> None:
    table = list(range(200_000))
    with parallel_for(backend="process", workers=2, start_method="fork") as pool:
        assert pool.map(pick, [0, 5, 199_999], table) == [0, 5, 199_999]
        assert pool.last_plan is not None
        assert "extra arguments inherited by fork (not pickled)" in pool.last_plan.reason
    with parallel_for(backend="process", workers=2, start_method="fork") as pool:
        # It is never pickled at all: an argument that refuses pickling works.
        assert pool.map(pick, range(4), NoPickle()) == ["NoPickle"] * 4


def test_a_warm_pool_gets_them_pickled_and_the_plan_says_so() -> None:
    with parallel_for(backend="process", workers=2, start_method="fork") as pool:
        assert pool.map(square, range(4)) == [0, 1, 4, 9]  # the pool is forked now
        assert pool.map(pick, [1, 2], list(range(10))) == [1, 2]
        assert pool.last_plan is not None
        assert "extra arguments pickled once, sent to each worker" in pool.last_plan.reason
        with pytest.raises(UnpicklableError, match="NoPickle"):
            pool.map(pick, range(4), NoPickle())


@pytest.mark.parametrize("method", ["forkserver", "spawn"])
def test_workers_not_forked_from_the_caller_get_them_pickled(method: str) -> None:
    with parallel_for(backend="process", workers=2, start_method=method) as pool:
        assert pool.map(pick, [3], list(range(10))) == [3]
        assert pool.last_plan is not None and "pickled once" in pool.last_plan.reason
        with pytest.raises(UnpicklableError, match="NoPickle"):
            pool.map(pick, range(4), NoPickle())

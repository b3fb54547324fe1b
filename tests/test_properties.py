"""Property: whatever the input, chunking, worker count and order, a parallel
run returns what a plain loop returns."""

from __future__ import annotations

from typing import Any

import pytest
from helpers import fail_on, identity, square
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from parloop import parallel_for

values = st.one_of(st.integers(), st.text(max_size=5), st.floats(allow_nan=False),
                   st.tuples(st.integers(), st.booleans()), st.none())
settings_for_pools = settings(max_examples=20, deadline=None,
                              suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.mark.timeout(240)
@pytest.mark.parametrize("backend", ["serial", "thread", "process"])
@settings_for_pools
@given(items=st.lists(values, max_size=60), chunksize=st.one_of(st.none(), st.integers(1, 17)),
       workers=st.integers(1, 3), ordered=st.booleans())
def test_parallel_equals_serial(backend: str, items: list[Any], chunksize: int | None,
                                workers: int, ordered: bool) -> None:
    fn = parallel_for(identity, backend=backend, chunksize=chunksize, workers=workers,
                      ordered=ordered)
    got = fn(items)
    if ordered:
        assert got == items
    else:
        assert sorted(map(repr, got)) == sorted(map(repr, items))
    assert list(fn.iter(iter(items))) == items if ordered else len(got) == len(items)


@pytest.mark.timeout(240)
@pytest.mark.parametrize("backend", ["serial", "process"])
@settings_for_pools
@given(items=st.lists(st.integers(0, 6), max_size=40), chunksize=st.one_of(st.none(), st.integers(1, 9)))
def test_errors_return_keeps_every_other_result(backend: str, items: list[int],
                                                chunksize: int | None) -> None:
    fn = parallel_for(fail_on, backend=backend, chunksize=chunksize, workers=2, errors="return")
    got = fn(items)
    assert len(got) == len(items)
    for item, result in zip(items, got, strict=True):
        if item == 3:
            assert isinstance(result, ValueError)
        else:
            assert result == item


@pytest.mark.timeout(120)
@settings(max_examples=30, deadline=None)
@given(items=st.lists(st.integers(-1000, 1000), max_size=200))
def test_auto_equals_serial(items: list[int]) -> None:
    assert parallel_for(square)(items) == [x * x for x in items]

"""How a task's error reaches the caller, on every backend."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import fail_on, square

from parloop import parallel_for
from parloop.errors import RemoteTraceback


def test_task_error_keeps_its_type_and_names_the_item(backend: dict) -> None:
    fn = parallel_for(fail_on, **backend)
    with pytest.raises(ValueError, match="item 3 is bad") as info:
        fn(range(10))
    assert "parloop: raised by item #3: 3" in info.value.__notes__
    if backend["backend"] == "process":
        assert isinstance(info.value.__cause__, RemoteTraceback)
        assert "fail_on" in str(info.value.__cause__)


def test_errors_return_keeps_every_other_result(backend: dict) -> None:
    got = parallel_for(fail_on, errors="return", **backend)(range(6))
    assert got[:3] == [0, 1, 2] and got[4:] == [4, 5]
    assert isinstance(got[3], ValueError)
    assert got[3].__notes__ == ["parloop: raised by item #3: 3"]


def test_ordered_iter_yields_the_results_before_the_failure(backend: dict) -> None:
    fn = parallel_for(fail_on, chunksize=1, **backend)
    seen = []
    with pytest.raises(ValueError):
        for value in fn.iter(range(10), 5):
            seen.append(value)
    assert seen == [0, 1, 2, 3, 4]


def test_a_block_pool_survives_a_task_error(backend: dict) -> None:
    with parallel_for(**backend) as pool:
        with pytest.raises(ValueError):
            pool.map(fail_on, range(8))
        assert pool.map(square, range(8)) == [x * x for x in range(8)]


def _fail_once(arg: tuple[str, int]) -> int:
    folder, x = arg
    marker = Path(folder) / str(x)
    if x % 3 == 0 and not marker.exists():
        marker.touch()
        raise ConnectionError(f"flaky {x}")
    return x


@pytest.mark.parametrize("ordered", [True, False])
def test_retries_rerun_items_that_raised_a_listed_exception(backend: dict, tmp_path: Path,
                                                            ordered: bool) -> None:
    items = [(str(tmp_path), x) for x in range(12)]
    fn = parallel_for(_fail_once, retries=1, retry_on=ConnectionError, ordered=ordered,
                      chunksize=2, **backend)
    got = fn(items)
    assert (got if ordered else sorted(got)) == list(range(12))
    for marker in os.listdir(tmp_path):
        os.unlink(tmp_path / marker)
    with pytest.raises(ConnectionError):
        parallel_for(_fail_once, **backend)(items)


def _notes(exc: BaseException) -> list[str]:
    notes: list[str] = []
    while exc is not None:
        notes += getattr(exc, "__notes__", [])
        exc = exc.__cause__  # type: ignore[assignment]
    return notes


@pytest.mark.parametrize("form", ["list", "iter"])
def test_stop_iteration_from_the_function_is_an_error_not_the_end_of_the_input(
        backend: dict, form: str) -> None:
    from helpers import stop_on
    fn = parallel_for(stop_on, **backend)
    with pytest.raises(RuntimeError, match="StopIteration") as info:
        list(fn.iter(range(10))) if form == "iter" else fn(range(10))
    assert any("item #3" in note for note in _notes(info.value))
    got = parallel_for(stop_on, errors="return", **backend)(list(range(10)))
    assert got[:3] == [0, 1, 2] and got[4:] == list(range(4, 10))
    assert isinstance(got[3], RuntimeError) and "StopIteration" in str(got[3])


def test_stop_iteration_in_the_serial_loop_of_backend_auto() -> None:
    from helpers import stop_on
    with pytest.raises(RuntimeError, match="stop_on raised StopIteration") as info:
        parallel_for(stop_on)([*range(10, 20), 3])
    assert any("item #10" in note for note in _notes(info.value))
    assert parallel_for(stop_on, errors="return")(list(range(4, 40)))[-1] == 39


def test_stop_iteration_names_the_function_when_extra_arguments_are_passed(backend: dict) -> None:
    from helpers import stop_on
    with pytest.raises(RuntimeError, match=r"^stop_on raised StopIteration"):
        parallel_for(stop_on, **backend)(list(range(10)), 5)

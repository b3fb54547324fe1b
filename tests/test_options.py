"""Bad options, bad targets and bad input get errors that name the culprit."""

from __future__ import annotations

import pytest
from helpers import square

from parloop import BackendUnavailableError, ParloopError, parallel_for
from parloop._options import resolve_workers


@pytest.mark.parametrize(("options", "kind", "words"), [
    ({"workers": "4"}, TypeError, "'workers'"),
    ({"workers": 0}, ValueError, "'workers' cannot be 0"),
    ({"workers": True}, TypeError, "'workers'"),
    ({"backend": "gpu"}, ValueError, "'backend'"),
    ({"backend": 3}, TypeError, "'backend'"),
    ({"ordered": "yes"}, TypeError, "'ordered'"),
    ({"chunksize": 0}, ValueError, "'chunksize'"),
    ({"chunksize": 1.5}, TypeError, "'chunksize'"),
    ({"timeout": -1}, ValueError, "'timeout'"),
    ({"timeout": "1"}, TypeError, "'timeout'"),
    ({"errors": "ignore"}, ValueError, "'errors'"),
    ({"star": 1}, TypeError, "'star'"),
    ({"progress": "yes"}, TypeError, "'progress'"),
    ({"start_method": "vfork"}, ValueError, "'start_method'"),
    ({"retries": -1}, ValueError, "'retries'"),
    ({"retry_on": "ValueError"}, TypeError, "'retry_on'"),
    ({"worker": 2}, TypeError, "did you mean 'workers'"),
])
def test_bad_options_name_the_option(options: dict, kind: type, words: str) -> None:
    with pytest.raises(kind, match=words):
        parallel_for(**options)
    with pytest.raises(kind, match=words):
        parallel_for(square, **options)


@pytest.mark.parametrize("target", [42, None, 3.5])
def test_a_target_that_is_neither_function_nor_iterable(target: object) -> None:
    with pytest.raises(TypeError, match=r"function to decorate.*iterable"):
        parallel_for(target)  # type: ignore[call-overload]


def test_calling_with_a_non_iterable_names_the_function_and_the_fix() -> None:
    fn = parallel_for(square)
    with pytest.raises(TypeError, match=r"square\(\) takes an iterable.*int 5.*\[item\]"):
        fn(5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="takes an iterable"):
        fn.iter(5)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["dask", "ray"])
def test_missing_cluster_backend_says_what_to_install(name: str) -> None:
    pytest.importorskip("sys")
    try:
        __import__({"dask": "distributed", "ray": "ray"}[name])
        pytest.skip(f"{name} is installed here")
    except ImportError:
        pass
    with pytest.raises(BackendUnavailableError, match=rf"pip install 'parloop\[{name}\]'") as info:
        parallel_for(square, backend=name)([1, 2])
    assert isinstance(info.value, ImportError) and isinstance(info.value, ParloopError)


def test_workers_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    from parloop import cpu_count
    monkeypatch.delenv("PARLOOP_WORKERS", raising=False)
    assert resolve_workers(None) == cpu_count()
    assert resolve_workers(-1) == cpu_count()
    assert resolve_workers(-2) == max(1, cpu_count() - 1)
    assert resolve_workers(3) == 3
    monkeypatch.setenv("PARLOOP_WORKERS", "5")
    assert resolve_workers(None) == 5
    monkeypatch.setenv("PARLOOP_WORKERS", "many")
    with pytest.raises(ValueError, match="PARLOOP_WORKERS"):
        resolve_workers(None)

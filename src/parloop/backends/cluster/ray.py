"""The Ray backend: each chunk is one Ray task; see ``_cluster.py`` for the whole
picture, which the two backends share.

It runs on the Ray this process already initialised, else connects to
``address=``, else starts a local Ray with ``workers`` CPUs. Ray is shut down
only when parloop started it, and only once no Ray backend still uses it.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from ..._options import Options
from ...errors import ParloopWarning, warn
from ..base import Chunk
from .shared import ClusterBackend, _ShippedJob
from .task import Reply, run_chunk_remote

__all__ = ["RayBackend"]

_users_lock = threading.Lock()
_users = 0  # Ray backends alive on a Ray that parloop started
_started = False  # whether parloop called ray.init in this process


class RayBackend(ClusterBackend):
    name = "ray"

    def __init__(self, workers: int, address: str | None = None) -> None:
        super().__init__(workers)
        import ray as engine

        global _started, _users
        ray: Any = engine  # untyped; Any keeps mypy --strict quiet
        self._ray = ray
        with _users_lock:
            if not ray.is_initialized():
                if address is not None:
                    ray.init(address=address, logging_level=logging.ERROR)
                else:
                    ray.init(num_cpus=workers, include_dashboard=False,
                             logging_level=logging.ERROR)
                _started = True
            else:
                _warn_if_elsewhere(ray, address)
            self._counted = _started
            _users += self._counted
        # max_retries=0: a task whose worker dies comes back at once as
        # WorkerCrashedError instead of killing three more workers first.
        self._remote = ray.remote(num_cpus=1, max_retries=0)(run_chunk_remote)
        self._closed = False

    def _ship(self, blob: bytes) -> Any:
        return self._ray.put(blob)

    def _launch(self, state: _ShippedJob, chunk: Chunk, packed: Any) -> Any:
        return self._remote.remote(state.key, state.spec, chunk.start, len(chunk.items), packed)

    def _finished(self, timeout: float | None) -> list[Any]:
        pending = list(self._tasks)
        ready, _ = self._ray.wait(pending, num_returns=1, timeout=timeout, fetch_local=True)
        if ready and len(pending) > 1:  # take every task that is done, not just one
            ready, _ = self._ray.wait(pending, num_returns=len(pending), timeout=0)
        return list(ready)

    def _results(self, handles: list[Any]) -> list[tuple[Reply, BaseException | None]]:
        try:
            return [(reply, None) for reply in self._ray.get(handles)]
        except Exception:  # at least one failed: fetch them one by one
            pass
        replies: list[tuple[Reply, BaseException | None]] = []
        for ref in handles:
            try:
                replies.append((self._ray.get(ref), None))
            except Exception as exc:
                replies.append((None, exc))
        return replies

    def _stop(self, handles: list[Any], hard: bool = False) -> None:
        # A plain cancel interrupts a running task with KeyboardInterrupt, which
        # the task takes as its signal to stop; ``hard`` kills its worker.
        for ref in handles:
            self._ray.cancel(ref, force=hard)

    def _is_crash(self, error: BaseException) -> bool:
        lost = self._ray.exceptions
        return isinstance(error, (lost.WorkerCrashedError, lost.RayActorError, lost.NodeDiedError,
                                  lost.LocalRayletDiedError, lost.ObjectLostError))

    def _slots(self) -> int:
        return int(self._ray.cluster_resources().get("CPU", self.workers))

    def close(self, *, kill: bool = False) -> None:
        global _started, _users
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._drop_all()
        with _users_lock:
            _users -= self._counted
            if self._counted and _users == 0 and _started:
                self._ray.shutdown()
                _started = False


def _warn_if_elsewhere(ray: Any, address: str | None) -> None:
    """``address=`` names another cluster than the Ray this process already
    joined, which is the one parloop uses: say so rather than ignore it."""
    if address is None or address == "auto":
        return
    try:
        current = ray.get_runtime_context().gcs_address
    except Exception:
        current = None
    wanted = address.removeprefix("ray://")
    host, _, port = wanted.rpartition(":")
    local = host in ("127.0.0.1", "localhost") and str(current).endswith(f":{port}")
    if current and (wanted == current or local):
        return
    warn(
        f"parloop: Ray is already initialised in this process (at {current or 'an unknown address'}), "
        f"so address={address!r} is not used. Call ray.shutdown() first to connect elsewhere.",
        ParloopWarning)


def create(workers: int, options: Options) -> RayBackend:
    return RayBackend(workers, options.address)

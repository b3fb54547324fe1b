"""The Dask backend: each chunk is one Dask task; see ``_cluster.py`` for the
whole picture, which it shares with the Ray backend.
"""

from __future__ import annotations

import logging
import os
import queue
import time
from typing import Any

from ..._options import Options
from ..base import Chunk, Ended, Job, drain
from .shared import ClusterBackend, _Lost, _ShippedJob
from .task import Reply, end_state_remote, run_chunk_remote, take_worker_id

__all__ = ["DaskBackend"]

WORKER_PATIENCE = 60.0  # seconds to wait for a live Dask worker to hold a job's data
SCATTER_ABOVE = 1 << 20  # bytes: larger job specs are scattered, smaller ones are a task


# -- Dask -------------------------------------------------------------------------------


def _exit_worker() -> None:
    os._exit(1)


def _job_spec(blob: bytes) -> bytes:
    """A task that holds a job's pickled spec on the cluster."""
    return blob


class DaskBackend(ClusterBackend):
    """Runs chunks on a Dask cluster: ``client=``, else ``address=``, else the
    active client, else a LocalCluster of ``workers`` processes started here
    (and closed by ``close``)."""

    name = "dask"
    strikes_allowed = 1

    def __init__(self, workers: int, client: Any = None, address: str | None = None) -> None:
        super().__init__(workers)
        import distributed as engine

        distributed: Any = engine  # untyped; Any keeps mypy --strict quiet
        self._distributed = distributed
        self._cluster: Any = None
        self._own_client = client is None
        if client is None and address is not None:
            client = distributed.Client(address, set_as_default=False)
        elif client is None:
            try:
                client = distributed.get_client()
                self._own_client = False
            except ValueError:  # no client anywhere: start a cluster of our own
                # allowed_failures=0: a lost worker fails its tasks at once and
                # parloop finds the culprit itself, instead of the culprit
                # killing three more workers first.
                self._cluster = distributed.LocalCluster(
                    n_workers=workers, threads_per_worker=1, processes=True,
                    dashboard_address=":0", silence_logs=logging.ERROR,
                    scheduler_kwargs={"allowed_failures": 0})
                client = distributed.Client(self._cluster, set_as_default=False)
        self._client = client
        self._ids: dict[str, int] = {}  # worker address -> its worker_id()
        self._done: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._closed = False

    def _ship(self, blob: bytes) -> Any:
        if len(blob) <= SCATTER_ABOVE:
            # As a task, the scheduler keeps the bytes and recomputes them if
            # every worker holding them dies; scattered data would be lost.
            return self._client.submit(_job_spec, blob, pure=False)
        # Too big to pass through the scheduler. broadcast: a copy on every worker
        # survives the loss of some. The scheduler gives up after 2 s without a
        # live worker; a nanny takes longer than that to replace a dead one.
        deadline = time.monotonic() + WORKER_PATIENCE
        while True:
            try:
                return self._client.scatter(blob, broadcast=True, hash=False)
            except (TimeoutError, self._distributed.TimeoutError):
                if time.monotonic() > deadline:
                    raise

    def _launch(self, state: _ShippedJob, chunk: Chunk, packed: Any) -> Any:
        future = self._client.submit(run_chunk_remote, state.key, state.spec, chunk.start,
                                     len(chunk.items), packed, pure=False)
        future.add_done_callback(self._done.put)  # runs in Dask's callback thread
        return future

    def _finished(self, timeout: float | None) -> list[Any]:
        return [future for future in drain(self._done, timeout) if future in self._tasks]

    def _results(self, handles: list[Any]) -> list[tuple[Reply, BaseException | None]]:
        finished = [f for f in handles if f.status == "finished"]
        replies: dict[Any, tuple[Reply, BaseException | None]] = {}
        try:  # one round trip for all of them
            values = self._client.gather(finished) if finished else []
            replies.update((f, (value, None)) for f, value in zip(finished, values, strict=True))
        except Exception as exc:  # a result was lost with its worker meanwhile: one by one
            exc.__traceback__ = None  # Dask keeps it; our frames in it would pin the futures
        for future in handles:
            if future not in replies:
                replies[future] = self._result(future)
        return [replies[future] for future in handles]

    def _result(self, future: Any) -> tuple[Reply, BaseException | None]:
        # A future the scheduler cancelled lost data it needed (scattered
        # data dies with its last worker).
        lost = _Lost(f"the cluster dropped task {future.key}")
        try:
            if future.status == "finished":
                return self._client.gather(future), None
            if future.status == "error":
                error = future.exception()
                if getattr(error, "task", future.key) != future.key:
                    return None, lost  # the job's data died with a worker, not this task
                return None, error
            return None, lost
        except self._distributed.CancelledError as exc:
            exc.__traceback__ = None
            return None, lost
        except Exception as exc:
            exc.__traceback__ = None
            return None, exc

    def _stop(self, handles: list[Any], hard: bool = False) -> None:
        holders: list[str] = []
        if hard:
            keys = {future.key for future in handles}
            holders = [worker for worker, running in self._client.processing().items()
                       if keys & set(running)]
        self._client.cancel(handles, force=True)
        if holders:
            # A running Dask task cannot be interrupted, and a graceful restart
            # waits for it: end its worker at once, and its nanny starts another.
            self._client.run(_exit_worker, workers=holders, on_error="ignore")

    def _is_crash(self, error: BaseException) -> bool:
        from distributed.comm.core import CommClosedError
        return isinstance(error, (self._distributed.KilledWorker, CommClosedError))

    def _slots(self) -> int:
        return sum(self._client.nthreads().values()) or self.workers

    def start_job(self, job: Job) -> None:
        super().start_job(job)
        self._number_workers()

    def _number_workers(self) -> None:
        """Each worker's worker_id(): its name when that is a number
        (LocalCluster's are), else the lowest index no other worker holds,
        kept for the worker's life (a worker that replaces a lost one takes
        the free index). Asked of the scheduler at each call (~1 ms); told to
        the workers only when they changed."""
        workers = self._client.scheduler_info()["workers"]
        if set(workers) == set(self._ids):
            return
        names = {address: info.get("name") for address, info in workers.items()}
        ids = {address: name for address, name in names.items()
               if isinstance(name, int) and not isinstance(name, bool)}
        unnamed = sorted(set(names) - set(ids), key=lambda a: (a not in self._ids, a))
        for address in unnamed:
            kept = self._ids.get(address)
            ids[address] = kept if kept is not None and kept not in ids.values() \
                else min(set(range(len(names) + 1)) - set(ids.values()))
        self._ids = ids
        if unnamed:  # the numbered ones know their index already
            self._client.run(take_worker_id, ids, on_error="ignore")

    def _run_everywhere(self, job: Job) -> list[Ended]:
        # Not a task: client.run reaches each worker process once, busy or not.
        return list(self._client.run(end_state_remote, job.setup).values())

    def close(self, *, kill: bool = False) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._drop_all()
            while not self._done.empty():  # futures cancelled meanwhile: let them go
                self._done.get_nowait()
            if self._own_client:
                self._client.close()
            if self._cluster is not None:
                self._cluster.close()


def create(workers: int, options: Options) -> DaskBackend:
    return DaskBackend(workers, options.client, options.address)

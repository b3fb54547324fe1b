"""The Ray backend: each chunk is one Ray task; see ``shared.py`` for the whole
picture, which the two backends share.

A job with ``setup=`` runs on Ray actors instead: Ray never sends code to a
given task's worker process again, but it does to an actor's, so its states
can be reached (``teardown=``) and its workers numbered (``worker_id()`` is
the actor's index). The job gets a crew: an actor per task it runs at once
(made as needed, at most one per CPU, each taking one task at a time). At
the job's end the crew stays for the next job with a setup, holding its
CPUs, unless a job without one needs them: then it is killed. A cancelled
actor task stops before its next item (Ray does not interrupt a running
actor task); one past its timeout has its actor killed and replaced.

It runs on the Ray this process already initialised, else connects to
``address=``, else starts a local Ray with ``workers`` CPUs. Ray is shut down
only when parloop started it, and only once no Ray backend still uses it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import Any

from ..._options import Options
from ...errors import ParloopWarning, warn
from ..base import Chunk, Ended, Job
from .shared import ClusterBackend, _ShippedJob
from .task import Reply, end_state_remote, run_chunk_remote

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
        self._holder = ray.remote(num_cpus=1, max_restarts=0, max_task_retries=0)(Holder)
        self._crews: dict[int, _Crew] = {}  # job id -> its actors (setup=)
        self._idle: _Crew | None = None  # the last job's crew, kept for the next
        self._closed = False

    def _ship(self, blob: bytes) -> Any:
        return self._ray.put(blob)

    def _launch(self, state: _ShippedJob, chunk: Chunk, packed: Any) -> Any:
        args = (state.key, state.spec, chunk.start, len(chunk.items), packed)
        if chunk.job.setup is None:
            return self._remote.remote(*args)
        crew = self._crews.get(chunk.job.id)
        if crew is None:
            crew = self._crews[chunk.job.id] = self._idle or _Crew()
            self._idle = None
        taken = set(crew.busy.values())
        index = next((i for i in range(len(crew.actors)) if i not in taken), len(crew.actors))
        if index == len(crew.actors):
            crew.actors.append(self._holder.remote(index))
        ref = crew.actors[index].run.remote(*args)
        crew.busy[ref] = index
        return ref

    def _crew_of(self, ref: Any) -> tuple[_Crew | None, int]:
        for crew in self._crews.values():
            index = crew.busy.pop(ref, None)
            if index is not None:
                return crew, index
        return None, -1

    def _replace(self, crew: _Crew, index: int) -> None:
        """A new actor in the place of one that died or was killed."""
        crew.actors[index] = self._holder.remote(index)

    def _run_everywhere(self, job: Job) -> list[Ended]:
        crew = self._crews.get(job.id)
        if crew is None:
            return []
        answers = []
        for ref in [actor.end.remote(job.setup) for actor in crew.actors]:
            with contextlib.suppress(self._ray.exceptions.RayActorError):  # died, and its state
                answers.append(self._ray.get(ref))
        return answers

    def _held_back(self, job: Job) -> bool:
        return job.setup is not None or super()._held_back(job)  # an actor runs one at a time

    def start_job(self, job: Job) -> None:
        super().start_job(job)
        with self._lock:
            idle, self._idle = (self._idle, None) if job.setup is None else (None, self._idle)
        self._kill(idle)  # its CPUs go to this job's tasks

    def end_job(self, job: Job) -> None:
        super().end_job(job)
        with self._lock:
            crew = self._crews.pop(job.id, None)
            if crew is not None and self._idle is None and not crew.busy \
                    and not self._closed:
                crew, self._idle = None, crew
        self._kill(crew)

    def _kill(self, crew: _Crew | None) -> None:
        if crew is None or not self._ray.is_initialized():  # (Ray shut down first at exit)
            return
        for actor in crew.actors:
            with contextlib.suppress(Exception):  # dead already
                self._ray.kill(actor)  # gives its CPU back

    def _finished(self, timeout: float | None) -> list[Any]:
        pending = list(self._tasks)
        ready, _ = self._ray.wait(pending, num_returns=1, timeout=timeout, fetch_local=True)
        if ready and len(pending) > 1:  # take every task that is done, not just one
            ready, _ = self._ray.wait(pending, num_returns=len(pending), timeout=0)
        return list(ready)

    def _results(self, handles: list[Any]) -> list[tuple[Reply, BaseException | None]]:
        replies: list[tuple[Reply, BaseException | None]] = []
        try:
            replies = [(reply, None) for reply in self._ray.get(handles)]
        except Exception:  # at least one failed: fetch them one by one
            for ref in handles:
                try:
                    replies.append((self._ray.get(ref), None))
                except Exception as exc:
                    replies.append((None, exc))
        for ref, (_, error) in zip(handles, replies, strict=True):
            crew, index = self._crew_of(ref)  # the actor is free again
            if crew is not None and error is not None and self._is_crash(error):
                self._replace(crew, index)
        return replies

    def _stop(self, handles: list[Any], hard: bool = False) -> None:
        # A plain cancel interrupts a running task with KeyboardInterrupt, which
        # the task takes as its signal to stop; ``hard`` kills its worker.
        # Tasks already done are left alone: a cancel that races a task's
        # completion can abort the whole driver process in Ray (a failed
        # RAY_CHECK, "Tried to complete task that was not pending", seen
        # once under Ray 2.60 in this suite; ray-project/ray#54846 is its kin).
        if handles:
            done, _ = self._ray.wait(handles, num_returns=len(handles), timeout=0,
                                     fetch_local=False)
            finished = set(done)
            handles = [ref for ref in handles if ref not in finished]
        for ref in handles:
            crew, index = self._crew_of(ref)
            if crew is None:
                self._ray.cancel(ref, force=hard)
            elif hard:  # an actor task is never force-cancelled: its actor is killed
                self._ray.kill(crew.actors[index])
                self._replace(crew, index)
            else:
                self._ray.cancel(ref)

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
            crews, self._crews = [*self._crews.values(), self._idle], {}
            self._idle = None
        for crew in crews:
            self._kill(crew)
        with _users_lock:
            _users -= self._counted
            if self._counted and _users == 0 and _started:
                self._ray.shutdown()
                _started = False


class _Crew:
    """A job's actors, and which task each runs now."""

    def __init__(self) -> None:
        self.actors: list[Any] = []
        self.busy: dict[Any, int] = {}  # task -> the index of the actor running it


class _Cancelled:
    """``cancelled`` for an actor's task: ray.cancel sets a flag, read
    between items (an actor task is not interrupted)."""

    def __contains__(self, job_id: object) -> bool:
        import ray

        return bool(ray.get_runtime_context().is_canceled())


class Holder:
    """(A Ray actor, see above.) Runs the chunks of jobs with ``setup=`` and
    keeps their states; ``index`` is its worker_id()."""

    def __init__(self, index: int) -> None:
        from .._state import set_worker_id

        set_worker_id(index)

    def run(self, key: str, spec: Any, start: int, count: int, packed: Any) -> Reply:
        return run_chunk_remote(key, spec, start, count, packed, cancelled=_Cancelled())

    def end(self, setup: Any) -> Ended:
        return end_state_remote(setup)


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

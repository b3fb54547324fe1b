"""Starting a pool in a thread while the caller goes on running items, so
that the start-up (a fork server and fresh workers: ~0.2-0.5 s) costs no
time. Only for pools that do not fork the caller: forking from a thread
while this one runs user code could copy a lock it holds into the workers.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Generator
from typing import Any

from ._headstart import switch_often
from ._scope import Lease
from ._serial import RESPONSIVE_SECONDS, SerialLoop

__all__ = ["start_while_working"]


class _Box:
    """What the starter thread hands back: the lease, or why there is none."""

    lease: Lease | None = None
    error: BaseException | None = None


def start_while_working(start: Callable[[], Lease], loop: SerialLoop, per_item: float,
                        expected: float) -> Generator[list[Any], None, Lease | None]:
    """Run ``start`` in a thread and items in ``loop`` until the pool is up
    (``expected``: its estimated start-up, seconds). An item expected to
    outlast the rest of the start is not begun: the caller waits instead,
    and the pool would otherwise idle. Returns the lease, or None when the
    input ran out first (the pool then stays warm for the next call)."""
    box = _Box()

    def starter_main() -> None:
        try:
            box.lease = start()
        except BaseException as exc:  # handed to the caller below
            box.error = exc

    starter = threading.Thread(target=starter_main, name="parloop-pool-start", daemon=True)
    loop.source.put_back()
    batch = max(1, int(RESPONSIVE_SECONDS / 4 / max(per_item, 1e-7)))  # check every ~5 ms
    more = True
    switch_often(True)
    try:
        began = time.perf_counter()
        starter.start()
        while more:
            if not starter.is_alive() and box.lease is not None and box.lease.backend.started():
                break  # up: a worker has said it is ready (a forkserver or spawn
                # worker still loads the job after it has a pid)
            if box.error is not None:
                break
            elapsed = time.perf_counter() - began
            # Left of the start: the estimate, or (past it) half again what it took so far.
            if per_item > max(expected - elapsed, elapsed / 2):
                time.sleep(0.002)
                continue
            before = loop.source.index
            yield from loop.run(batch)
            more = loop.source.index - before == batch
        starter.join()
        if box.error is not None:
            raise box.error
        lease = box.lease
        assert lease is not None
        if not more and not loop.source.peek():
            lease.release()
            return None
        return lease
    except BaseException as exc:
        if starter.is_alive() or starter.ident is not None:
            starter.join()
        if box.lease is not None:  # killed (Ctrl-C) or merely unused (an item raised)
            box.lease.release(not isinstance(exc, (Exception, GeneratorExit)))
        raise
    finally:
        switch_often(False)

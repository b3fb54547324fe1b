"""Messages over a worker's pipe (a Unix socket): one pickle per message,
with the big buffers it holds (``shm.pack``) after it, through the pipe or,
when big, through shared memory."""

from __future__ import annotations

import os
import pickle
from typing import Any

from . import shm

__all__ = ["receive", "send"]

PROTOCOL = 5


def send(conn: Any, message: Any) -> None:
    """Send ``message``; the values it holds made by ``shm.pack`` follow it
    raw, through the pipe or, when big, through shared memory."""
    frames: list[pickle.PickleBuffer] = []
    body = pickle.dumps(message, PROTOCOL, buffer_callback=frames.append)
    kinds, fds = shm.export(conn, frames) if frames else (b"", [])
    try:
        conn.send_bytes(len(frames).to_bytes(4, "little") + kinds + body)
        for kind, buffer in zip(kinds, frames, strict=True):
            if kind != shm.MEMFD:
                conn.send_bytes(buffer.raw())
        if fds:
            shm.send_fds(conn, fds)
    finally:
        for fd in fds:
            os.close(fd)


def receive(conn: Any) -> Any:
    """One message sent by ``send``, its frames back in place: bytes from
    the pipe, writable views of shared memory (or bytearrays) for buffers."""
    data = conn.recv_bytes()
    count = int.from_bytes(data[:4], "little")
    kinds = data[4:4 + count]
    frames: list[Any] = [None if kind == shm.MEMFD else conn.recv_bytes() for kind in kinds]
    if shm.MEMFD in kinds:
        shared = iter(shm.receive_fds(conn, kinds.count(shm.MEMFD)))
        frames = [next(shared) if frame is None else frame for frame in frames]
    for index, kind in enumerate(kinds):
        if kind == shm.WRITABLE:
            frames[index] = bytearray(frames[index])  # an array from it must stay writable
    return pickle.loads(memoryview(data)[4 + count:], buffers=frames)

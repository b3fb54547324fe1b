"""Big buffers travel through anonymous shared memory, not through the pipe.

A NumPy array (any pickle-protocol-5 out-of-band buffer) of ``THRESHOLD``
bytes or more, and any pickled frame that big, is written once into a memfd
whose fd crosses the worker's Unix socket (SCM_RIGHTS) right after its
message. The receiver maps it, closes the fd and unpickles the array as a
view of the mapping: one copy in all, where the pipe makes four.

Why not ``multiprocessing.shared_memory``: a memfd has no name. The kernel
frees it with its last fd or mapping, so nothing is left in /dev/shm when
the caller or a worker is SIGKILLed, even with fds in flight. Named segments
leak then, and lean on the resource tracker, which has known bugs (CPython
gh-82300, bpo-38119). Without memfd or fd passing (not Linux, a Connection
that is no socket, memfd_create failing) the bytes go through the pipe.
"""

from __future__ import annotations

import array
import mmap
import os
import pickle
import resource
import socket
import stat
import sys
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from ... import _costs, _pickling

__all__ = ["ENABLED", "THRESHOLD", "Packed", "export", "loads", "pack", "receive_fds", "send_fds"]

# The pipe is faster than a memfd below THRESHOLD; see parloop._costs.
THRESHOLD = _costs.SHARED_THRESHOLD
ENABLED = _costs.SHARED_MEMORY
PROTOCOL = 5
FRAME = 1 << 20  # bytes
PIPE, WRITABLE, MEMFD = 0, 1, 2  # how each frame of a message travels
BATCH = 64  # fds per sendmsg; the kernel takes at most 253
# Before 3.13 an mmap holds a dup of its fd as long as it lives: mappings
# may take a quarter of the fd limit; past that the receiver copies.
_MMAP_KEEPS_FD = sys.version_info < (3, 13)
_mapped: weakref.WeakSet[mmap.mmap] = weakref.WeakSet()
_FD_BUDGET = resource.getrlimit(resource.RLIMIT_NOFILE)[0] // 4


class Packed:
    """A pickled value whose big buffers travel beside it, out of band."""

    __slots__ = ("blob", "buffers")

    def __init__(self, blob: Any, *buffers: Any) -> None:
        self.blob = blob
        self.buffers = buffers

    def __reduce__(self) -> tuple[Any, ...]:
        # Every part a frame of its own, so the buffers reach the transport.
        return Packed, tuple(pickle.PickleBuffer(part) for part in (self.blob, *self.buffers))

    def snapshot(self) -> Packed:
        """A copy that later changes to the pickled arrays do not reach."""
        return Packed(self.blob, *(bytes(buffer.raw()) for buffer in self.buffers))


def pack(value: Any, dump: Callable[..., bytes] | None = None,
         fallback: Callable[..., bytes] | None = None) -> bytes | pickle.PickleBuffer | Packed:
    """``value`` ready to send: pickled by ``dump(value, buffer_callback=...)``
    (default: the C pickler), or by ``fallback`` if that fails, its buffers
    of ``THRESHOLD`` bytes or more kept out of band. A pickle over ``FRAME``
    bytes travels as a frame of its own beside its message, not copied into
    it. ``loads`` turns any of them back into the value."""
    if type(value) in _PLAIN or not ENABLED:  # the fast path: no buffers to find
        kept, callback = None, None
    else:
        kept = _Kept()
        callback = kept.keep
    try:
        blob = _pickling.plain_dumps(value, buffer_callback=callback) if dump is None \
            else dump(value, buffer_callback=callback)
    except Exception:
        if fallback is None:
            raise
        if kept:
            kept.clear()
        blob = fallback(value, buffer_callback=callback)
    if kept:
        return Packed(blob, *kept)
    return pickle.PickleBuffer(blob) if len(blob) > FRAME else blob


_PLAIN = frozenset({int, float, str, bytes, bool, type(None)})


class _Kept(list[pickle.PickleBuffer]):
    def keep(self, buffer: pickle.PickleBuffer) -> bool:
        """buffer_callback: False (out of band, kept here) for a big buffer."""
        try:
            if buffer.raw().nbytes < THRESHOLD:
                return True
        except BufferError:  # not contiguous: pickle copies it in band
            return True
        self.append(buffer)
        return False


def loads(data: Any) -> Any:
    """The value ``pack`` made, its big buffers views of shared memory."""
    if isinstance(data, Packed):
        return pickle.loads(data.blob, buffers=data.buffers)
    return pickle.loads(data)


@contextmanager
def _socket(conn: Any) -> Iterator[socket.socket]:
    # A socket object on the Connection's own fd, detached, never closed.
    # SOCK_NONBLOCK in the type keeps the constructor from applying the
    # default timeout, which would set O_NONBLOCK on the fd the Connection
    # (and the worker's other thread) share; the fd itself stays blocking.
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK, 0, conn.fileno())
    try:
        yield sock
    finally:
        sock.detach()


def export(conn: Any, frames: list[pickle.PickleBuffer]) -> tuple[bytes, list[int]]:
    """How each frame travels (PIPE, WRITABLE or MEMFD), and a new memfd
    holding each MEMFD frame; the caller closes those fds."""
    big = [frame.raw().nbytes >= THRESHOLD for frame in frames]
    if not ENABLED or not any(big):
        return bytes(len(frames)), []  # all PIPE
    fds: list[int] = []
    if stat.S_ISSOCK(os.fstat(conn.fileno()).st_mode):
        try:
            for frame in (frame for frame, is_big in zip(frames, big, strict=True) if is_big):
                fds.append(os.memfd_create("parloop", os.MFD_CLOEXEC))
                data, written = frame.raw(), 0
                while written < data.nbytes:
                    written += os.write(fds[-1], data[written:])
            return bytes(MEMFD if is_big else PIPE for is_big in big), fds
        except BaseException as exc:
            for fd in fds:
                os.close(fd)
            if not isinstance(exc, OSError):
                raise
            # out of fds or memory: the pipe then
    return bytes(WRITABLE if is_big else PIPE for is_big in big), []


def send_fds(conn: Any, fds: list[int]) -> None:
    """Send ``fds`` over ``conn``'s socket, each batch on a byte of its own."""
    with _socket(conn) as sock:
        for first in range(0, len(fds), BATCH):
            batch = fds[first:first + BATCH]
            socket.send_fds(sock, [bytes([len(batch)])], batch)


def receive_fds(conn: Any, count: int) -> list[Any]:
    """The ``count`` memfds ``send_fds`` sent, each as a writable memoryview
    of its own mapping, which lives exactly as long as views of it do."""
    views: list[Any] = []
    with _socket(conn) as sock:
        while len(views) < count:
            want = min(BATCH, count - len(views))
            fds = array.array("i")
            # (socket.recv_fds drops its flags: no MSG_CMSG_CLOEXEC through it)
            data, ancillary, flags, _ = sock.recvmsg(1, socket.CMSG_SPACE(want * fds.itemsize),
                                                     socket.MSG_CMSG_CLOEXEC)
            for level, kind, cdata in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds.frombytes(cdata[:len(cdata) - len(cdata) % fds.itemsize])
            try:
                if not data:
                    raise EOFError
                if len(fds) != want or data[0] != want or flags & socket.MSG_CTRUNC:
                    raise OSError(f"expected {want} fds on this byte, got {len(fds)}")
                views += [_map(fd) for fd in fds]
            finally:
                for fd in fds:
                    os.close(fd)
    return views


def _map(fd: int) -> Any:
    size = os.fstat(fd).st_size
    if not _MMAP_KEEPS_FD:
        return memoryview(mmap.mmap(fd, size, trackfd=False))  # type: ignore[call-arg,unused-ignore]
    if len(_mapped) < _FD_BUDGET:
        mapping = mmap.mmap(fd, size)
        _mapped.add(mapping)
        return memoryview(mapping)
    with mmap.mmap(fd, size) as mapping:  # past the budget: a copy, no fd kept
        return bytearray(mapping)

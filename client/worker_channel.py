"""The local channel between a ClientApp and its site's warm worker (client/site_worker.py):
a Unix socket for a small JSON header, shared memory for the message itself.

One frame is an 8-byte length, a JSON header, and the header's `parts` (byte strings: a
serialized Flower Message and Context). The parts go through one file in the worker's
private folder, in /dev/shm (shared memory) where it has room: the reader maps it and the
file is removed at once; a 133 MB model is neither pickled nor pushed through the socket.
Where shared memory is missing or full (a container's 64 MB /dev/shm), they follow the
header on the socket instead. Nothing here imports torch: a ClientApp that hands its
message over stays light.
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os
import socket
import struct
import tempfile
import uuid
from pathlib import Path

#: Where the worker's folder (socket and message files) goes: shared memory if there is.
SHM_ROOT = Path("/dev/shm")
_LENGTH = struct.Struct("!Q")


class ChannelClosed(ConnectionError):
    """The other end went away before a whole frame passed."""


def worker_folder() -> Path:
    """A new private folder (mode 0700) for one worker's socket and message files."""
    root = SHM_ROOT if SHM_ROOT.is_dir() and os.access(SHM_ROOT, os.W_OK) else None
    return Path(tempfile.mkdtemp(prefix="fedcmr-worker-", dir=root))


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    buffer = bytearray(size)
    view, got = memoryview(buffer), 0
    while got < size:
        n = sock.recv_into(view[got:], size - got)
        if n == 0:
            raise ChannelClosed(f"the channel closed after {got} of {size} bytes")
        got += n
    return bytes(buffer)


def _to_shared_memory(folder: Path, parts: list[bytes]) -> str | None:
    """The parts in one new file of `folder`, or None where there is no room."""
    path = folder / f"{uuid.uuid4().hex}.msg"
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        with os.fdopen(fd, "wb") as handle:
            for part in parts:
                handle.write(part)
    except OSError:  # ENOSPC: a small /dev/shm
        path.unlink(missing_ok=True)
        return None
    return str(path)


def send(sock: socket.socket, header: dict, parts: list[bytes],
         folder: Path | None = None) -> None:
    """One frame: the header, the parts through shared memory in `folder` (else inline)."""
    sizes = [len(p) for p in parts]
    shared = _to_shared_memory(folder, parts) if folder is not None and parts else None
    head = json.dumps({**header, "sizes": sizes, "shared": shared}).encode()
    try:
        sock.sendall(_LENGTH.pack(len(head)) + head)
        if shared is None:
            for part in parts:
                sock.sendall(part)
    except OSError:
        if shared is not None:
            Path(shared).unlink(missing_ok=True)
        raise


def receive(sock: socket.socket) -> tuple[dict, list[bytes]]:
    """One frame: its header and its parts (a shared-memory file is read and removed)."""
    try:
        (length,) = _LENGTH.unpack(_read_exactly(sock, _LENGTH.size))
    except ChannelClosed as closed:
        raise ChannelClosed("the channel closed before a frame") from closed
    header = json.loads(_read_exactly(sock, length))
    sizes, shared = header.pop("sizes"), header.pop("shared")
    if shared is None:
        return header, [_read_exactly(sock, n) for n in sizes]
    path = Path(shared)
    try:
        with path.open("rb") as handle:
            if not sum(sizes):
                return header, [b"" for _ in sizes]
            with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                parts, start = [], 0
                for n in sizes:
                    parts.append(mapped[start:start + n])
                    start += n
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
    return header, parts

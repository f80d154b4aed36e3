"""The local channel between a ClientApp and its site's warm worker (client/runtime/site_worker.py):
a Unix socket for a small JSON header, shared memory for the message itself.

One frame is an 8-byte length, a JSON header, and the header's `parts` (byte strings). A
Flower Message travels as its protobuf without the arrays, and each array's own bytes as a
part (`pack`/`unpack`): Flower's protobuf would copy a 133 MB model three times more. The
parts go through one file in the worker's private folder, in /dev/shm (shared memory) where
it has room: the reader maps it and the file is removed at once; a model is neither
pickled nor pushed through the socket.
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

from flwr.app import Array, ArrayRecord, Context, Message, RecordDict

#: Set for the SuperNode's children: the site worker's socket and its pid.
SOCKET_ENV = "FEDCMR_WORKER_SOCKET"
PID_ENV = "FEDCMR_WORKER_PID"

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


def pack(message: Message, context: Context | None = None) -> tuple[dict, list[bytes]]:
    """A message (and a context) as a header entry and parts: the protobuf of the message
    without its arrays, the context's, then every array's bytes."""
    from flwr.app.message.message import make_message
    from flwr.common.serde import context_to_proto, message_to_proto

    arrays, parts, rest = [], [], None
    if message.has_content():
        rest = RecordDict()
        for name, record in message.content.items():
            if isinstance(record, ArrayRecord):
                rest[name] = ArrayRecord()
                for key, array in record.items():
                    arrays.append([name, key, array.dtype, list(array.shape), array.stype])
                    parts.append(array.data)
            else:
                rest[name] = record
    bare = message if rest is None else make_message(metadata=message.metadata, content=rest)
    head = [message_to_proto(bare).SerializeToString(),
            b"" if context is None else context_to_proto(context).SerializeToString()]
    return {"arrays": arrays}, head + parts


def unpack(header: dict, parts: list[bytes]) -> tuple[Message, Context | None]:
    """What `pack` packed."""
    from flwr.common.serde import context_from_proto, message_from_proto
    from flwr.proto.message_pb2 import Context as ProtoContext
    from flwr.proto.message_pb2 import Message as ProtoMessage

    message = message_from_proto(ProtoMessage.FromString(parts[0]))
    context = (context_from_proto(ProtoContext.FromString(parts[1])) if parts[1] else None)
    records: dict[str, dict[str, Array]] = {}
    for (name, key, dtype, shape, stype), data in zip(header["arrays"], parts[2:],
                                                      strict=True):
        records.setdefault(name, {})[key] = Array(dtype=dtype, shape=tuple(shape),
                                                  stype=stype, data=data)
    for name, arrays in records.items():
        message.content[name] = ArrayRecord(array_dict=arrays, keep_input=False)
    return message, context

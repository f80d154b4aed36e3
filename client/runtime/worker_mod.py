"""The ClientApp's side of the warm site worker (client/runtime/site_worker.py): a Flower mod that
hands the message to the worker and returns the worker's reply, so that this per-message
process does no work of its own. It runs inside the audit gate (client/site/audit.py), which
checks the reply before it leaves, as without the worker.

Without a worker (none was started, $FEDCMR_WORKER=off, the simulation runtime) the mod
passes the message on to the handler in this process. A worker that is not reachable, or
goes away before it replies, is logged and the ClientApp does the work itself: the message
is answered either way. Nothing here imports torch.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from pathlib import Path

from flwr.app import Context, Message

from fedcmr.client.runtime import worker_channel
from fedcmr.support.exchange_timing import record_exchange

#: Seconds a ClientApp waits for a worker that is alive but not yet serving (it imports
#: torch first: seconds, or a minute on a busy machine).
WORKER_START_S = 300.0

log = logging.getLogger("fedcmr.client")


class WorkerUnavailable(ConnectionError):
    pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def connect(path: Path, pid: int | None, wait: float = WORKER_START_S) -> socket.socket:
    """A connection to the worker at `path`, waiting while it starts; WorkerUnavailable
    when it is not running or does not start serving within `wait` s."""
    deadline = time.monotonic() + wait
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(str(path))
            return sock
        except (FileNotFoundError, ConnectionRefusedError) as err:
            sock.close()
            if pid is not None and not _alive(pid):
                raise WorkerUnavailable(f"the site worker (pid {pid}) is not running") from err
            if time.monotonic() > deadline:
                raise WorkerUnavailable(f"the site worker did not serve on {path} within "
                                        f"{wait:.0f} s") from err
            time.sleep(0.05)


def relay(path: Path, pid: int | None, message: Message, context: Context
          ) -> tuple[Message, float]:
    """The worker's reply to `message`, and the seconds its handler took."""
    header, parts = worker_channel.pack(message, context)
    with connect(path, pid) as sock:
        try:
            worker_channel.send(sock, {**header, "type": message.metadata.message_type},
                                parts, path.parent)
            del parts
            header, parts = worker_channel.receive(sock)
        except OSError as err:
            raise WorkerUnavailable(f"the site worker went away during the message ({err})"
                                    ) from err
    reply, _ = worker_channel.unpack(header, parts)
    return reply, float(header["handler_s"])


def worker_mod(message: Message, context: Context, call_next) -> Message:
    entered = time.time()
    socket_path = os.environ.get(worker_channel.SOCKET_ENV)
    reply, handler_s, where = None, None, "clientapp"
    if socket_path:
        pid_text = os.environ.get(worker_channel.PID_ENV)
        pid = int(pid_text) if pid_text else None
        try:
            reply, handler_s = relay(Path(socket_path), pid, message, context)
            where = "worker"
        except WorkerUnavailable as err:
            log.warning("fedcmr: %s; this ClientApp does the work of %s itself", err,
                        message.metadata.message_type)
    if reply is None:
        started = time.perf_counter()
        reply = call_next(message, context)
        handler_s = time.perf_counter() - started
    record_exchange(message, entered, time.time(), handler_s, where)
    return reply

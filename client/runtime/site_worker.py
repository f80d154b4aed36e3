"""The warm site worker: one long-lived process beside a site's SuperNode that does the work
of every message (client/site/client_app.py's handlers, unchanged) for the whole run.

Flower starts a ClientApp process per message, and each would import torch, read the
site's cache, build the model and, on a GPU, start CUDA and autotune cuDNN again. The
worker does that once: it keeps the site's frames in memory (client_app.open_site), torch
and its threads, and a GPU's context and tuned kernels. The per-message ClientApp stays
light: its `worker_mod` (client/runtime/worker_mod.py) hands the message to the worker over a
Unix socket (client/runtime/worker_channel.py; the message through shared memory) and returns the
worker's reply. The ClientApp keeps the audit gate (client/site/audit.py runs around that mod,
in the process that sends the reply), and the site policy is applied by the same handlers
as without the worker.

The SuperNode starts the worker (client/runtime/supernode_main.py; `FEDCMR_WORKER=off` turns it
off) and the worker ends with it: the kernel signals it when its parent dies, and it checks
its parent between messages. A ClientApp that crashes or is killed while the worker works
for it loses only its reply: the worker logs it and serves the next message. The
simulation runtime keeps its own path (its actors are long-lived already).
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from fedcmr.client.runtime import worker_channel
from fedcmr.client.runtime.worker_channel import PID_ENV, SOCKET_ENV

__all__ = ["PID_ENV", "SOCKET_ENV", "SOCKET_NAME", "WORKER_ENV", "main"]
#: "on" (the default): the SuperNode starts a warm worker; "off": each ClientApp does the
#: work itself, as Flower runs it.
WORKER_ENV = "FEDCMR_WORKER"
SOCKET_NAME = "worker.sock"
#: The command line: `python -c WORKER_MAIN WORKER_NAME FOLDER PARENT_PID` (argv[1] names
#: the process in `ps`).
WORKER_MAIN = "from fedcmr.client.runtime.site_worker import main; main()"
WORKER_NAME = "fedcmr-site-worker"
#: Imported before the worker says it is ready (what every message's work needs: the
#: handlers, the dispatcher and the built-in models; a plug-in is imported on first use).
PRELOAD = ("torch", "torchvision", "fedcmr.client.site.client_app", "fedcmr.client.site.work",
           "fedcmr.common.models.cnn", "fedcmr.common.models.measures")
#: Seconds between checks that the parent (the SuperNode) still lives, while idle.
PARENT_CHECK_S = 1.0

log = logging.getLogger("fedcmr.worker")


def enabled() -> bool:
    """Whether a SuperNode starts a worker ($FEDCMR_WORKER, default on)."""
    mode = os.environ.get(WORKER_ENV, "on").strip().lower() or "on"
    if mode not in ("on", "off"):
        raise SystemExit(f"{WORKER_ENV}={mode!r}: use 'on' (the default) or 'off'")
    return mode == "on"


def start(folder: Path) -> subprocess.Popen:
    """Start the worker for this process (the SuperNode) in `folder`; it serves on
    folder/SOCKET_NAME once it has imported what the work needs."""
    return subprocess.Popen([sys.executable, "-c", WORKER_MAIN, WORKER_NAME, str(folder),
                             str(os.getpid())], stdin=subprocess.DEVNULL)


def _die_with_parent(parent: int) -> None:
    """Linux: SIGTERM this process when its parent dies (prctl PR_SET_PDEATHSIG)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)
    if os.getppid() != parent:  # it died before the line above
        sys.exit(0)


def handle(conn: socket.socket, folder: Path) -> str:
    """One message: receive it, run its handler, send the reply; what happened, in words."""
    from fedcmr.client.site.client_app import handler_for

    message, context = worker_channel.unpack(*worker_channel.receive(conn))
    kind = message.metadata.message_type
    started = time.perf_counter()
    reply = handler_for(kind)(message, context)
    seconds = time.perf_counter() - started
    del message
    header, parts = worker_channel.pack(reply)
    try:
        worker_channel.send(conn, {**header, "handler_s": seconds}, parts, folder)
    except OSError as err:
        return (f"{kind}: done in {seconds:.2f} s, but its ClientApp went away ({err}); the "
                "reply is dropped")
    return f"{kind}: done in {seconds:.2f} s"


def serve(folder: Path, parent: int) -> None:
    path = folder / SOCKET_NAME
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    path.unlink(missing_ok=True)
    server.bind(str(path))
    os.chmod(path, 0o600)
    server.listen(8)
    server.settimeout(PARENT_CHECK_S)
    log.info("fedcmr site worker (pid %d) ready on %s", os.getpid(), path)
    try:
        while os.getppid() == parent:
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(None)
                try:
                    log.info("fedcmr site worker: %s", handle(conn, folder))
                except worker_channel.ChannelClosed as closed:
                    log.warning("fedcmr site worker: a ClientApp went away before its "
                                "message arrived (%s)", closed)
                except Exception:  # noqa: BLE001 - the worker serves on; the ClientApp falls back
                    log.exception("fedcmr site worker: a message failed outside its handler")
    finally:
        server.close()
        path.unlink(missing_ok=True)


def main() -> None:
    folder, parent = Path(sys.argv[2]), int(sys.argv[3])
    _die_with_parent(parent)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(levelname)s %(asctime)s %(message)s")
    for name in PRELOAD:
        importlib.import_module(name)
    serve(folder, parent)

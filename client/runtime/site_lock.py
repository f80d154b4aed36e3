"""One `fedcmr client` per site at a time, and nothing left of an earlier one.

The client holds an exclusive lock on a file in the site's state folder (the kernel lets it
go however the client ends, SIGKILL included) and writes in it its own pid and, once
started, its SuperNode's. A second client for the same site finds the lock held and
refuses, naming the running one's pid and the fix. A client that finds the lock free but a
SuperNode still recorded and alive (one an earlier client left, should it have outlived it)
stops that SuperNode with its descendants and says so. The SuperNode normally dies with its
client (support/proc_tree.py `die_with_parent`); this is the second line.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import socket
from pathlib import Path

from fedcmr.support.proc_tree import alive, start_time, terminate

#: The lock file, in the site's state folder.
LOCK_NAME = "client.lock"
#: What a recorded SuperNode's command line holds (never some other process that got its pid).
SUPERNODE_MARK = "flower-supernode"
#: Seconds a stale SuperNode gets to end on SIGTERM before SIGKILL.
STALE_GRACE_S = 10.0

log = logging.getLogger("fedcmr.client")


#: Where earlier fedcmr versions' site workers kept their channel (one folder per worker).
SHM_ROOT = Path("/dev/shm")
SHM_PATTERN = "fedcmr-worker-*"


def remove_stale_shared_memory(root: Path = SHM_ROOT) -> list[Path]:
    """Remove this user's shared-memory folders that earlier fedcmr versions' site workers
    left behind (nothing listens on their socket any more); returns those removed."""
    removed = []
    for folder in sorted(root.glob(SHM_PATTERN)):
        with contextlib.suppress(OSError):
            if not folder.is_dir() or folder.stat().st_uid != os.getuid():
                continue
            sock = folder / "worker.sock"
            if sock.exists():
                probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    probe.connect(str(sock))
                    continue  # a live worker of an older version: not ours to remove
                except OSError:
                    pass
                finally:
                    probe.close()
            shutil.rmtree(folder)
            removed.append(folder)
    return removed


class SiteBusy(RuntimeError):
    """Another `fedcmr client` serves this site now."""


def _entry(pid: int) -> dict:
    return {"pid": pid, "start": start_time(pid)}


def _running(entry: dict | None) -> bool:
    """The recorded process is the one still running (not a later one with its pid)."""
    if not entry or not isinstance(entry.get("pid"), int):
        return False
    return alive(entry["pid"]) and start_time(entry["pid"]) == entry.get("start")


def _command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
            errors="replace")
    except OSError:
        return ""


class SiteLock:
    """The site's lock in `state` (its state folder) for the life of this process."""

    def __init__(self, state: Path, site: str):
        self.path, self.site = Path(state) / LOCK_NAME, site
        self._fd: int | None = None

    def _read(self) -> dict:
        with contextlib.suppress(OSError, ValueError):
            data = json.loads(self.path.read_text() or "{}")
            return data if isinstance(data, dict) else {}
        return {}

    def _write(self, data: dict) -> None:
        assert self._fd is not None
        body = json.dumps(data).encode()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, body, 0)

    def acquire(self) -> None:
        """Hold the lock; SiteBusy when another live client holds it. A SuperNode an
        earlier client left running is stopped first (and named)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            other = self._read().get("client", {}).get("pid", "unknown")
            raise SiteBusy(
                f"site {self.site}: another `fedcmr client` serves this site now (pid "
                f"{other}; lock {self.path}). Fix: stop it first (kill {other}) or let its "
                "run end; two clients of one site would answer the coordinator twice") from None
        self._fd = fd
        stale = self._read().get("supernode")
        if _running(stale) and SUPERNODE_MARK in _command(stale["pid"]):
            log.warning("site %s: stopping the SuperNode (pid %d) an earlier `fedcmr client` "
                        "of this site left running", self.site, stale["pid"])
            terminate({stale["pid"]}, STALE_GRACE_S)
        self._write({"client": _entry(os.getpid())})
        if stale_folders := remove_stale_shared_memory():
            log.info("removed %d shared-memory folder(s) earlier fedcmr versions left in %s",
                     len(stale_folders), SHM_ROOT)

    def note_supernode(self, pid: int) -> None:
        """Record the SuperNode this client started (so that a later client finds it)."""
        self._write({"client": _entry(os.getpid()), "supernode": _entry(pid)})

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            self._write({})
            os.close(self._fd)
        self._fd = None

"""Claiming a cell, so that several `fedcmr study` processes (or machines sharing DIR) never
run the same cell at once.

A claim is an exclusive `flock` on the cell's lock file, held while the cell runs. The
kernel releases it when its process ends however it ends (SIGKILL included), so a dead
claimant's cell is free again at once, with no heartbeat to tune and no stale claim to
break. `claim.json` beside it says who holds it (for progress and for people); it is never
trusted for exclusion. Machines sharing DIR need a file system whose locks span them (local
disks; NFSv4, CephFS and Lustre with flock enabled document it; untested here).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from pathlib import Path

from fedcmr.common.atomic import write_json
from fedcmr.lab.study.layout import CLAIM_JSON

LOCK = "lock"


class Claim:
    """The held claim of one cell; `release()` (or leaving the `with` block) frees it."""

    def __init__(self, cell: Path, fd: int):
        self.cell, self._fd = cell, fd

    def release(self) -> None:
        if self._fd < 0:
            return
        with contextlib.suppress(FileNotFoundError):
            (self.cell / CLAIM_JSON).unlink()
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = -1

    def __enter__(self) -> Claim:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def try_claim(cell: Path) -> Claim | None:
    """The cell's claim, or None while another process holds it."""
    cell.mkdir(parents=True, exist_ok=True)
    fd = os.open(cell / LOCK, os.O_RDWR | os.O_CREAT, 0o644)  # close-on-exec by default
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    write_json(cell / CLAIM_JSON, {"pid": os.getpid(), "host": socket.gethostname(),
                                   "since": time.time()})
    return Claim(cell, fd)


def is_claimed(cell: Path) -> bool:
    """Whether a live process holds the cell now (a shared probe, released at once)."""
    if not (cell / LOCK).exists():
        return False
    fd = os.open(cell / LOCK, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops our shared lock
    return False


def holder(cell: Path) -> dict | None:
    """Who says they hold the cell (claim.json), if anyone."""
    try:
        return json.loads((cell / CLAIM_JSON).read_text())
    except (OSError, ValueError):
        return None

"""Child processes of a launcher: started in sessions of their own, logged to files, and
all stopped again (with every descendant) however the launcher ends."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import threading
import time
from contextlib import suppress
from pathlib import Path

log = logging.getLogger("fedcmr.processes")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_is_free(port: int) -> bool:
    """No server listens on the port (connections in TIME_WAIT do not count: a server
    restarted with SO_REUSEADDR, as uvicorn does, binds over them)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


class ProcessGroup:
    """The processes one launcher started; `logs/NAME.log` holds each one's output."""

    def __init__(self, cwd: Path, env: dict[str, str]):
        self.cwd = cwd
        self.env = env
        self.processes: list[tuple[str, subprocess.Popen]] = []

    @property
    def logs(self) -> Path:
        return self.cwd / "logs"

    def spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        self.logs.mkdir(parents=True, exist_ok=True)
        with (self.logs / f"{name}.log").open("ab") as handle:
            proc = subprocess.Popen(args, stdout=handle, stderr=subprocess.STDOUT,
                                    env=self.env, start_new_session=True, cwd=self.cwd)
        self.processes.append((name, proc))
        return proc

    def adopt(self, name: str, proc: subprocess.Popen) -> None:
        """Track a process started elsewhere, so that stop() ends it too."""
        self.processes.append((name, proc))

    def dead(self) -> list[str]:
        return [name for name, proc in self.processes if proc.poll() is not None]

    def stop(self) -> None:
        """SIGTERM everything we started and every descendant (Flower's superexec starts a
        session of its own, so process groups alone miss it), then SIGKILL what is left."""
        pids = {proc.pid for _, proc in self.processes}
        pids |= _descendants(pids)
        for _, proc in reversed(self.processes):
            _signal_group(proc, signal.SIGTERM)
        for pid in pids:
            _signal_pid(pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for name, proc in reversed(self.processes):
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop on SIGTERM; killing it", name)
            _signal_group(proc, signal.SIGKILL)
        for pid in pids | _descendants(pids):
            _signal_pid(pid, signal.SIGKILL)
        for _, proc in self.processes:
            proc.wait()
        self.processes.clear()


def exit_on_termination() -> None:
    """SIGTERM/SIGHUP (`timeout`, `kill`, a closed terminal) end Python without running any
    cleanup: turn them into SystemExit so that context managers stop what they started."""
    if threading.current_thread() is not threading.main_thread():
        return

    def leave(signum: int, _frame) -> None:
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, leave)


def _descendants(roots: set[int]) -> set[int]:
    """Every live descendant of `roots`, from /proc (Linux)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found: set[int] = set()
    todo = list(roots)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _signal_pid(pid: int, sig: int) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)

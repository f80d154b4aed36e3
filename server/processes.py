"""Child processes of a launcher: started in sessions of their own, logged to files, and
all stopped again (with every descendant) however the launcher ends."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import threading
import time
from pathlib import Path

from fedcmr.support.proc_tree import (
    descendants,
    signal_group,
    signal_pid,
    start_time,
    working_in,
)

log = logging.getLogger("fedcmr.processes")


class ProcessGroup:
    """The processes one launcher started; `logs/NAME.log` holds each one's output.

    Their descendants (Flower's superexec, flwr-serverapp, flwr-clientapp) are looked up
    while they run (`remember()`), not only at stop: a SuperLink killed with SIGKILL leaves
    its children re-parented to init, where no tree walk finds them. Every process known is
    listed in logs/pids.json (pid and start time), so that a launcher started again in the
    same folder (`--resume` after the launcher itself was killed) stops what the killed one
    left running before it starts anything.
    """

    def __init__(self, cwd: Path, env: dict[str, str]):
        self.cwd = cwd
        self.env = env
        self.processes: list[tuple[str, subprocess.Popen]] = []
        self.known: set[tuple[int, int]] = set()  # (pid, start time)

    @property
    def logs(self) -> Path:
        return self.cwd / "logs"

    @property
    def pid_file(self) -> Path:
        return self.logs / "pids.json"

    def spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        self.logs.mkdir(parents=True, exist_ok=True)
        with (self.logs / f"{name}.log").open("ab") as handle:
            proc = subprocess.Popen(args, stdout=handle, stderr=subprocess.STDOUT,
                                    env=self.env, start_new_session=True, cwd=self.cwd)
        self.processes.append((name, proc))
        self.remember()
        return proc

    def adopt(self, name: str, proc: subprocess.Popen) -> None:
        """Track a process started elsewhere, so that stop() ends it too."""
        self.processes.append((name, proc))

    def dead(self) -> list[str]:
        return [name for name, proc in self.processes if proc.poll() is not None]

    def remember(self) -> None:
        """Note every live descendant now (and list them in logs/pids.json)."""
        pids = {proc.pid for _, proc in self.processes if proc.poll() is None}
        found = {(pid, start) for pid in pids | descendants(pids)
                 if (start := start_time(pid)) is not None}
        if found - self.known:
            self.known |= found
            self._write_pid_file()

    def _write_pid_file(self) -> None:
        from fedcmr.common.atomic import write_json

        write_json(self.pid_file, sorted(self.known))

    def stop_leftovers(self) -> list[int]:
        """Stop the processes an earlier launcher of this folder left running: those it
        listed, and any still working in the folder (one started in the last second before
        the launcher died is not listed yet, and would go on writing there)."""
        entries: list[tuple[int, int]] = []
        if self.pid_file.exists():
            try:
                entries = [tuple(e) for e in json.loads(self.pid_file.read_text())]
            except (OSError, ValueError):
                entries = []
        alive = [pid for pid, start in entries if start_time(pid) == start]
        alive += sorted(working_in(self.cwd) - set(alive))
        if not alive:
            self.pid_file.unlink(missing_ok=True)
            return []
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in alive:
                signal_pid(pid, sig)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and any(start_time(p) for p in alive):
                time.sleep(0.1)
        self.pid_file.unlink(missing_ok=True)
        return alive

    def stop(self) -> None:
        """SIGTERM everything we started and every descendant (Flower's superexec starts a
        session of its own, so process groups alone miss it), then SIGKILL what is left."""
        self.remember()
        pids = {proc.pid for _, proc in self.processes}
        pids |= descendants(pids) | self._known_alive()
        for _, proc in reversed(self.processes):
            signal_group(proc, signal.SIGTERM)
        for pid in pids:
            signal_pid(pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for name, proc in reversed(self.processes):
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop on SIGTERM; killing it", name)
            signal_group(proc, signal.SIGKILL)
        for pid in pids | descendants(pids) | self._known_alive():
            signal_pid(pid, signal.SIGKILL)
        for _, proc in self.processes:
            proc.wait()
        self.processes.clear()
        self.known.clear()
        self.pid_file.unlink(missing_ok=True)

    def _known_alive(self) -> set[int]:
        return {pid for pid, start in self.known if start_time(pid) == start}


def exit_on_termination() -> None:
    """SIGTERM/SIGHUP (`timeout`, `kill`, a closed terminal) end Python without running any
    cleanup: turn them into SystemExit so that context managers stop what they started."""
    if threading.current_thread() is not threading.main_thread():
        return

    def leave(signum: int, _frame) -> None:
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, leave)

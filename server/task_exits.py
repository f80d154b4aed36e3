"""How the processes the coordinator's SuperExec started ended (the ServerApp's above all),
and what the kernel says about memory: the words for a run that failed without a reason.

The SuperExec (server/superexec_main.py) appends one JSON line per ended process to the file
named by $FEDCMR_TASK_EXITS (the launcher sets it to logs/task_exits.jsonl): its command,
pid and return code (-N: ended by signal N). `oom_kills()` reads the kernel's count of
out-of-memory kills in this machine's (or container's) memory cgroup, where it can be read.
"""

from __future__ import annotations

import contextlib
import json
import signal
import time
from pathlib import Path

ENV = "FEDCMR_TASK_EXITS"
FILE = "task_exits.jsonl"
SERVERAPP = "flwr-serverapp"


def note(path: Path, command: list[str], pid: int, code: int) -> None:
    line = json.dumps({"time": time.time(), "command": command[0] if command else "",
                       "pid": pid, "returncode": code})
    with path.open("a", encoding="utf-8") as handle:  # one short line: one write
        handle.write(line + "\n")


def serverapp_signal(path: Path, since: float = 0.0) -> tuple[int, str] | None:
    """(pid, signal name) of the last ServerApp ended by a signal at `since` (time.time())
    or later, if any."""
    if not path.exists():
        return None
    ended = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    killed = [e for e in ended if SERVERAPP in e["command"] and e["returncode"] < 0
              and e["time"] >= since]
    if not killed:
        return None
    last = killed[-1]
    number = -int(last["returncode"])
    try:
        name = signal.Signals(number).name
    except ValueError:
        name = f"signal {number}"
    return int(last["pid"]), name


def oom_kills() -> int | None:
    """The kernel's count of out-of-memory kills in this process's memory cgroup (v1:
    memory.oom_control; v2: memory.events), None where it cannot be read."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, group = line.split(":", 2)
            if controllers == "memory":
                found = _count(Path("/sys/fs/cgroup/memory") / group.lstrip("/")
                               / "memory.oom_control")
            elif controllers == "":
                found = _count(Path("/sys/fs/cgroup") / group.lstrip("/") / "memory.events")
            else:
                continue
            if found is not None:
                return found
    return None


def _count(path: Path) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        for row in path.read_text().splitlines():
            key, _, value = row.partition(" ")
            if key == "oom_kill":
                return int(value)
    return None


def explain(path: Path, oom_before: int | None, since: float = 0.0) -> str | None:
    """Why the ServerApp ended, in words, when a signal ended it at `since` or later (None
    otherwise); `oom_before`: oom_kills() when the run started."""
    found = serverapp_signal(path, since)
    if found is None:
        return None
    pid, name = found
    after = oom_kills()
    if name == "SIGKILL" and oom_before is not None and after is not None \
            and after > oom_before:
        cause = (f" by the kernel's out-of-memory killer ({after - oom_before} kill(s) in "
                 "this machine's memory cgroup during the run). Fix: free memory (no other "
                 "federation or benchmark beside it; docs/performance.md), then")
    else:
        cause = ". Fix: find what sent it (another process, the machine's shutdown, the "\
                "kernel's out-of-memory killer: dmesg), then"
    return (f"the ServerApp (pid {pid}) was ended by {name}{cause} rerun the same command "
            "with --resume: it continues after the last completed round")

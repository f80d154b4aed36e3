"""The process tree, read from /proc (Linux): what both the coordinator's launchers and a
hospital's `fedcmr client` need to stop a Flower process with every descendant (Flower's
superexec and clientapps start sessions of their own, so process groups alone miss them)."""

from __future__ import annotations

import os
import signal
import subprocess
from contextlib import suppress
from pathlib import Path

#: Set by a fedcmr process for the one it starts: its own pid, so that the child dies with it
#: (`die_with_parent`).
PARENT_ENV = "FEDCMR_PARENT_PID"


def descendants(roots: set[int]) -> set[int]:
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


def terminate(pids: set[int], grace: float, group: int | None = None) -> None:
    """SIGTERM the processes, every descendant of theirs (and the process group `group`),
    then SIGKILL what is left of them after `grace` seconds; descendants are looked up again
    while waiting (a child re-parented to init once its parent ended stays on the list)."""
    import time

    pids = set(pids) | descendants(set(pids))
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if group is not None:
            with suppress(ProcessLookupError, PermissionError):
                os.killpg(group, sig)
        for pid in pids:
            signal_pid(pid, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            pids = {p for p in pids | descendants(pids) if alive(p)}
            if not pids:
                return
            time.sleep(0.1)


def signal_pid(pid: int, sig: int) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def signal_group(proc: subprocess.Popen, sig: int) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def start_time(pid: int) -> int | None:
    """The process's start time (clock ticks after boot), None when it is gone: with the pid
    it names one process, never a later one that reuses the pid."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] == "Z" else int(fields[19])


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    return start_time(pid) is not None


def ancestors(pid: int) -> set[int]:
    """`pid` and every process above it."""
    found = set()
    while pid > 1 and pid not in found:
        found.add(pid)
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return found


#: What the command line of a process fedcmr or Flower started holds (never a user's shell
#: or editor that happens to work in a run's folder).
OURS = ("fedcmr", "flwr", "flower")


def working_in(folder: Path) -> set[int]:
    """Live fedcmr and Flower processes (OURS in their command line) whose working directory
    is `folder` or inside it (every process a launcher starts there inherits it), except
    this process and those above it."""
    root = str(Path(folder).resolve())
    mine = ancestors(os.getpid())
    found = set()
    for entry in Path("/proc").glob("[0-9]*"):
        pid = int(entry.name)
        if pid in mine:
            continue
        with suppress(OSError):
            cwd = os.readlink(entry / "cwd")
            if not (cwd == root or cwd.startswith(root + os.sep)) or not alive(pid):
                continue
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(
                errors="replace")
            if any(word in command for word in OURS):
                found.add(pid)
    return found


def die_with_parent(parent: int | None) -> None:
    """This process is killed (SIGKILL) as soon as `parent`, the process that started it,
    ends, however it ends: a SIGKILLed parent leaves no orphan serving on. (Linux
    PR_SET_PDEATHSIG; the parent must have started this process from a thread that lives as
    long as it does.) A parent already gone ends this process now; None: nothing to do."""
    if parent is None:
        return
    import ctypes

    pr_set_pdeathsig = 1
    with suppress(OSError, AttributeError):
        if ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL,
                                                   0, 0, 0) != 0:
            return
    if os.getppid() != parent:  # it ended before the request took effect
        os.kill(os.getpid(), signal.SIGKILL)


def parent_from_env() -> int | None:
    """The pid a fedcmr parent left in PARENT_ENV (removed, so that it is not inherited)."""
    value = os.environ.pop(PARENT_ENV, "")
    return int(value) if value.isdigit() else None

"""The coordinator's SuperExec: Flower's `flower-superexec`, which the SuperLink starts to
run the ServerApp, with one change: it waits for every process it starts and notes how each
ended (server/task_exits.py), so that a ServerApp ended by a signal (the kernel's
out-of-memory killer, say) is named as such instead of Flower's bare "finished:failed".
The SuperLink starts it through `superexec_command` (server/superlink_main.py)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

#: The command line: `python -c SUPEREXEC_MAIN flower-superexec ARGS...`.
SUPEREXEC_MAIN = "from fedcmr.server.superexec_main import main; main()"


def superexec_command(command: list[str]) -> list[str]:
    """The SuperLink's `flower-superexec ...` command, run through this module."""
    if not command or command[0] != "flower-superexec":
        return command
    return [sys.executable, "-c", SUPEREXEC_MAIN, *command]


def main() -> None:
    sys.argv = sys.argv[1:]
    from flwr.supercore.cli import flower_superexec
    from flwr.supercore.superexec.executor import subprocess_executor

    from fedcmr.server import task_exits
    from fedcmr.support import flower_patches

    flower_patches.check_version()
    if record := os.environ.get(task_exits.ENV):
        flower_patches.record_task_exits(
            subprocess_executor,
            lambda command, pid, code: task_exits.note(Path(record), command, pid, code))
    flower_superexec()

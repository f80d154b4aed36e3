"""`flower-superexec` as fedcmr's SuperNode starts it (client/runtime/supernode_main.py):
Flower's own entry point, except that each ClientApp process is forked from this one instead
of started afresh. This process imports torch, torchvision and Flower's ClientApp runtime
once, when the site starts; a fresh `flwr-clientapp` process paid that again for every
message (6.5 s against 0.11 s per start on these 2-core machines;
benchmarks/clientapp_start.py measures it).

The forked ClientApp is the process Flower would have started: the same arguments, run by
Flower's own `flwr-clientapp` code, so the audit gate, the site policy and the app approval
apply unchanged, and a crash ends only that process. Nothing runs in this process before a
fork but imports, so no thread pool or CUDA context is inherited (CUDA starts in the
child). `FEDCMR_CLIENTAPP_START=exec` turns it off: Flower starts each ClientApp itself."""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import types

#: The environment variable that picks how a ClientApp starts: "fork" (the default) or
#: "exec" (Flower's own fresh process per message).
START_ENV = "FEDCMR_CLIENTAPP_START"
#: What this process imports before it serves (what every ClientApp needs).
PRELOAD = ("torch", "torchvision", "flwr.supernode.cli", "flwr.clientapp")
#: The command line: `python -c SUPEREXEC_MAIN flower-superexec ARGS...`.
SUPEREXEC_MAIN = "from fedcmr.client.runtime.superexec_main import main; main()"
#: Flower's name for the per-message process that this one forks instead of executing.
CLIENTAPP = "flwr-clientapp"


def start_mode() -> str:
    """How this site starts a ClientApp ($FEDCMR_CLIENTAPP_START, default "fork")."""
    mode = os.environ.get(START_ENV, "fork").strip().lower() or "fork"
    if mode not in ("fork", "exec"):
        raise SystemExit(f"{START_ENV}={mode!r}: use 'fork' (the default) or 'exec'")
    return mode


def superexec_command(command: list[str]) -> list[str]:
    """The SuperNode's `flower-superexec ...` command, run through this module (unchanged
    where the ClientApp is to be started by Flower itself)."""
    if start_mode() == "exec" or not command or command[0] != "flower-superexec":
        return command
    return [sys.executable, "-c", SUPEREXEC_MAIN, *command]


def _exit_code(code: object) -> int:
    if code is None:
        return 0
    return code if isinstance(code, int) else 1


def _run_clientapp(args: list[str], quiet: bool, parent: int) -> None:
    """In the forked child: Flower's `flwr-clientapp` with `args`; never returns. It dies
    with `parent`, the SuperExec."""
    code = 1
    try:
        from fedcmr.support.proc_tree import die_with_parent

        die_with_parent(parent)
        if quiet:
            devnull = os.open(os.devnull, os.O_RDWR)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            sys.stdout = sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - until exit
        from flwr.supernode.cli import flwr_clientapp

        from fedcmr.support import flower_patches

        flower_patches.reset_after_fork()  # not the SuperExec's exit handlers, nor its locks
        sys.argv = list(args)
        flwr_clientapp()
        code = 0
    except SystemExit as done:
        code = _exit_code(done.code)
    except BaseException:  # noqa: BLE001 - reported, then the child ends
        import traceback

        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


class ForkingSubprocess:
    """`subprocess` for Flower's SubprocessExecutor: `Popen(["flwr-clientapp", ...])` forks
    this process and runs the ClientApp in the child; any other command is started as
    usual, and every other name is subprocess's. Finished children are reaped at the next
    start."""

    def __init__(self) -> None:
        self.children: set[int] = set()
        #: Exit codes of the reaped children, by pid.
        self.exits: dict[int, int] = {}

    def __getattr__(self, name: str):
        return getattr(subprocess, name)

    def reap(self) -> None:
        for pid in list(self.children):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done, status = pid, 0
            if done:
                self.children.discard(pid)
                self.exits[pid] = os.waitstatus_to_exitcode(status)

    def Popen(self, args, *rest, **options):  # noqa: N802 - subprocess's own name
        if rest or not args or os.path.basename(str(args[0])) != CLIENTAPP:
            return subprocess.Popen(args, *rest, **options)
        self.reap()
        quiet = options.get("stdout") is subprocess.DEVNULL
        sys.stdout.flush()
        sys.stderr.flush()
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:
            _run_clientapp([CLIENTAPP, *map(str, args[1:])], quiet, parent)
        self.children.add(pid)
        logging.getLogger("flwr").info("fedcmr: ClientApp forked (pid %d)", pid)
        return types.SimpleNamespace(pid=pid, args=args)


def main() -> None:
    sys.argv = sys.argv[1:]
    import importlib

    from fedcmr.support.proc_tree import die_with_parent, parent_from_env

    die_with_parent(parent_from_env())  # its SuperNode's pid, before any slow import
    from fedcmr.support import flower_patches

    # first, before any thread starts: the SuperNode's signal ends the wait for work
    flower_patches.superexec_wakes_on_signal()
    for name in PRELOAD:
        importlib.import_module(name)
    flower_patches.apply()  # before any fork: every ClientApp pulls its message with them
    from flwr.supercore.cli import flower_superexec
    from flwr.supercore.superexec.executor import subprocess_executor

    flower_patches.fork_clientapps(subprocess_executor, ForkingSubprocess())
    flower_superexec()

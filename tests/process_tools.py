"""Finding, watching and killing a federation's real processes from a test, through /proc."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

ENV = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}
TESTS = Path(__file__).resolve().parent
#: The model of the fault tests, where what is tested is the federation, not the model: the
#: tests' toy model (tests/toy_model.py, a plug-in fedcmr never names), known to every
#: process started with TOY_ENV (as "toy", and as "toy-nyul", begun by the histogram
#: round). Pass `--model toy` (TOY) to the command.
TOY = ("--model", "toy")
TOY_MODELS = "toy=toy_model:Toy,toy-nyul=toy_model:HarmonisedToy"


def toy_env(*paths: Path, env: dict[str, str] | None = None) -> dict[str, str]:
    """`env` (default ENV) with the toy model registered and `paths` then tests/ first on
    PYTHONPATH, for every process of a federation (SuperExec, ClientApps)."""
    env = dict(ENV if env is None else env)
    path = [*map(str, paths), str(TESTS), env.get("PYTHONPATH", "")]
    return {**env, "FEDCMR_MODELS": TOY_MODELS,
            "PYTHONPATH": os.pathsep.join(filter(None, path))}


TOY_ENV = toy_env()
POISON = TESTS / "poison"


def poisoned(plan: str, stall_s: float | None = None) -> dict[str, str]:
    """TOY_ENV with tests/poison/ loaded in every ClientApp: `plan` as its docstring says
    ("Charlie=none,stall"), a "stall" holding back its honest reply `stall_s` seconds."""
    env = {**toy_env(POISON), "FEDCMR_TEST_POISON": plan}
    if stall_s is not None:
        env["FEDCMR_TEST_STALL_S"] = str(stall_s)
    return env


def processes() -> dict[int, tuple[int, str, str]]:
    """pid -> (parent pid, state, command line) of every process."""
    found = {}
    for proc in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError, IndexError):
            stat = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            found[int(proc.name)] = (int(stat[1]), stat[0], cmdline)
    return found


def descendants(pid: int, table: dict | None = None) -> list[int]:
    table = processes() if table is None else table
    out, todo = [], [pid]
    while todo:
        parent = todo.pop()
        for child, (ppid, _, _) in table.items():
            if ppid == parent and child not in out:
                out.append(child)
                todo.append(child)
    return out


def site_node(site: str) -> int | None:
    """The pid of the SuperNode serving `site` (its node config names the site)."""
    for pid, (_, state, cmdline) in processes().items():
        if state != "Z" and "flower-supernode" in cmdline and f'site="{site}"' in cmdline:
            return pid
    return None


def kill_tree(pid: int, sig: int = signal.SIGKILL) -> list[int]:
    tree = [pid, *descendants(pid)]
    for p in tree:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, sig)
    return tree


def wait_for(condition: Callable[[], object], timeout: float, what: str,
             proc: subprocess.Popen | None = None) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            raise AssertionError(f"the run ended ({proc.returncode}) before {what}: "
                                 f"{out[-3000:]}")
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def checkpoint_round(run_dir: Path, fold: int = 0) -> int:
    """The last completed round in the run's checkpoint (0: none yet)."""
    import torch

    path = run_dir / "checkpoint" / f"fold_{fold}.pt"
    if not path.exists():
        return 0
    with contextlib.suppress(Exception):  # being replaced this instant
        return int(torch.load(path, weights_only=False)["round"])
    return 0


def audit_kinds(site_out: Path) -> list[str]:
    path = site_out / "audit.jsonl"
    if not path.exists():
        return []
    return [json.loads(line)["type"] for line in path.read_text().splitlines() if line]


def our_processes(marker: Path) -> list[str]:
    """Live processes of a run: its folder in their command line or working directory.

    A process that has released its memory on the way out (an empty command line, seen for
    an instant after SIGKILL before it turns zombie) is not live; a leaked one never has
    an empty command line."""
    found = []
    for pid, (_, state, cmdline) in processes().items():
        with contextlib.suppress(OSError):
            cwd = os.readlink(f"/proc/{pid}/cwd")
            exiting = state in ("Z", "X") or not cmdline.strip()
            if not exiting and (str(marker) in cmdline or cwd.startswith(str(marker))):
                found.append(cmdline)
    return found


def hospital(site: str, cache: Path, superlink: str, out: Path, *extra: str,
             log: Path | None = None, env: dict[str, str] | None = None) -> subprocess.Popen:
    """`fedcmr client` as a hospital starts it, in its own folder (every process it starts,
    flower-superexec included, has its working directory under `out`); its output to a
    pipe (text), or appended to `log`."""
    from fedcmr.support.flower_env import tool
    from fedcmr.support.ports import free_port

    out.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        stdout = stack.enter_context(log.open("a")) if log else subprocess.PIPE
        return subprocess.Popen(
            [tool("fedcmr"), "client", "--site", site, "--data", str(cache), "--superlink",
             superlink, "--port", str(free_port()), "--threads", "1", "--out", str(out),
             *extra], stdout=stdout, stderr=subprocess.STDOUT, text=True, env=env or ENV, cwd=out,
            start_new_session=True)


def server_command(run_dir: Path, port: int, sites: int, *extra: str) -> list[str]:
    """`fedcmr server` on loopback for `sites` hospitals, smoke-sized, fold 0."""
    from fedcmr.support.flower_env import tool

    plain = [] if "--secure" in extra else ["--insecure"]
    return [tool("fedcmr"), "-q", "server", "--sites", str(sites), "--host", "127.0.0.1",
            "--port", str(port), "--profile", "smoke", "--fold", "0", "--min-subjects", "3",
            "--out", str(run_dir), *plain, *extra]


def start(command: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
    """A command in a session of its own, its output (text) to a pipe."""
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env or ENV, start_new_session=True)


def finish(proc: subprocess.Popen, timeout: float = 900) -> str:
    """Its output once it exited; killed with every descendant after `timeout` s."""
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            kill_tree(proc.pid)
            proc.wait()
    return out


def stop_all(*procs: subprocess.Popen | None) -> None:
    """Kill what is still running (and its descendants) and reap it."""
    for proc in procs:
        if proc is not None and proc.poll() is None:
            kill_tree(proc.pid)
            proc.wait()

"""The coordinator's SuperLink as a managed process: started (with TLS and node
authentication when asked), checked healthy, the fedcmr run submitted to it and followed to
its end, and everything stopped again, also on Ctrl-C, SIGTERM or failure.

`fedcmr server` uses it as it is; the local launcher (lab/local_federation.py) adds the
hospitals' SuperNodes on the same machine.
"""

from __future__ import annotations

import contextlib
import json
import logging
import ssl
import sys
import time
import urllib.request
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from fedcmr.server import task_exits
from fedcmr.server.flwr_cli import CONNECTION, FlwrCli
from fedcmr.server.processes import ProcessGroup, exit_on_termination
from fedcmr.server.security import Security
from fedcmr.server.settings import FederationSettings
from fedcmr.server.superlink_main import SUPERLINK_MAIN
from fedcmr.support.flower_env import flower_env, tool
from fedcmr.support.ports import free_port

log = logging.getLogger("fedcmr.federate")
Runtime = Literal["deployment", "simulation"]
RUNTIMES: tuple[Runtime, ...] = ("deployment", "simulation")
#: Seconds between `flwr ls` checks of a run should its log stream end early.
STATUS_EVERY = 30.0


def require_ray() -> None:
    try:
        import ray  # noqa: F401
    except ImportError as err:
        raise RuntimeError("the simulation runtime needs Ray, which is not installed. Fix: "
                           "pip install 'fedcmr[simulation]' (or 'flwr[simulation]==1.42.0'), "
                           "or use --runtime deployment") from err


@dataclass
class Coordinator(AbstractContextManager):
    run_dir: Path
    security: Security | None = None
    port: int = 0
    #: Address the SuperLink binds to (0.0.0.0 to serve other machines); local tools
    #: always reach it on 127.0.0.1.
    host: str = "127.0.0.1"
    #: "deployment": SuperNodes connect over gRPC; "simulation": Ray actors stand in.
    runtime: Runtime = "deployment"
    processes: ProcessGroup = field(init=False)

    def __post_init__(self) -> None:
        self.processes = ProcessGroup(self.run_dir, flower_env(
            FLWR_HOME=str(self.flwr_home), PYTHONUNBUFFERED="1"))
        # how each ServerApp ended, noted by the SuperLink's SuperExec (server/task_exits.py)
        self.task_exits = self.processes.logs / task_exits.FILE
        self.processes.env[task_exits.ENV] = str(self.task_exits)
        self.oom_before, self.started = task_exits.oom_kills(), time.time()
        self.cli = FlwrCli(self.flwr_home, self.run_dir, self.processes.env)

    @property
    def flwr_home(self) -> Path:
        return self.run_dir / ".flwr"

    # -- lifecycle -------------------------------------------------------------------
    def __enter__(self) -> Coordinator:
        exit_on_termination()
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        if self.runtime not in RUNTIMES:
            raise ValueError(f"runtime {self.runtime!r}: use one of {RUNTIMES}")
        if self.runtime == "simulation":
            require_ray()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        left = self.processes.stop_leftovers()
        if left:
            log.warning("stopped %d process(es) an earlier launcher left running in %s",
                        len(left), self.run_dir)
        self.port = self.port or free_port()
        self.cli.write_connection(self.port, self.security.ca if self.security else None)
        # Flower's SuperLink with its Control and Runtime APIs kept to this machine
        # (server/superlink_main.py): a hospital, or anyone, reaches the Fleet API only
        link = [sys.executable, "-c", SUPERLINK_MAIN, tool("flower-superlink"), "--host",
                self.host, "--port", str(self.port),
                "--disable-runtime-dependency-installation", *self._link_security()]
        if self.runtime == "simulation":
            link.append("--simulation")
        self.processes.spawn("superlink", link)
        self._wait_healthy()
        self._register_sites()

    def stop(self) -> None:
        self.processes.stop()

    # -- pieces ----------------------------------------------------------------------
    def _link_security(self) -> list[str]:
        if not self.security:
            return ["--insecure"]
        s = self.security
        return ["--ssl-ca-certfile", str(s.ca), "--ssl-certfile", str(s.server_cert),
                "--ssl-keyfile", str(s.server_key), "--enable-supernode-auth"]

    def _register_sites(self) -> None:
        """Every site key of the certificate folder may join (and no other)."""
        if not self.security:
            return
        for name, key in self.security.site_keys.items():
            result = self.cli("supernode", "register", str(key.with_suffix(".pub")),
                              CONNECTION, "--name", self.security.node_name(name))
            text = result.stdout + result.stderr
            # a SuperLink whose state outlived it has them registered already
            if result.returncode != 0 and "already in use" not in text:
                raise RuntimeError(f"flwr supernode register {name} failed: "
                                   f"{text.strip()[-500:]}")

    def _wait_healthy(self, timeout: float = 60) -> None:
        scheme = "https" if self.security else "http"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            proc = self.processes.processes[0][1]
            if proc.poll() is not None:
                raise RuntimeError(f"SuperLink exited with {proc.returncode}; see "
                                   f"{self.processes.logs / 'superlink.log'}")
            context = (ssl.create_default_context(cafile=str(self.security.ca))
                       if self.security else None)
            try:
                urllib.request.urlopen(f"{scheme}://127.0.0.1:{self.port}/health", timeout=2,
                                       context=context)
                return
            except OSError:
                time.sleep(0.5)
        raise TimeoutError(f"SuperLink not healthy on port {self.port} after {timeout:.0f} s")

    def submit(self, settings: FederationSettings) -> str:
        return self.cli.submit(settings)

    def run_to_completion(self, settings: FederationSettings, echo,
                          timeout: float | None = None) -> str:
        """Submit the run, relay its progress, wait for its end; returns the run id."""
        started = time.monotonic()
        run_id = self.submit(settings)
        echo(f"run {run_id} submitted; logs in {self.processes.logs}")
        stream = self.cli.stream_logs(run_id, echo)
        self.processes.adopt("log-stream", stream)
        # The log stream ends with the run; `flwr ls` (a whole CLI process) is asked only
        # then, or every STATUS_EVERY seconds should the stream have died early.
        status, last_check, reported = "unknown", time.monotonic(), set()
        killed = None  # how the ServerApp ended, once a signal ended it
        while not status.startswith("finished"):
            time.sleep(1)
            self.processes.remember()
            dead = set(self.processes.dead()) - {"log-stream"} - reported
            if "superlink" in dead:
                raise RuntimeError(f"the SuperLink stopped during the run; see "
                                   f"{self.processes.logs / 'superlink.log'}. Fix: rerun the "
                                   "same command with --resume")
            for name in sorted(dead):  # a hospital lost: the run goes on without it
                echo(f"{name} exited; the run goes on without it (see "
                     f"{self.processes.logs / (name + '.log')})")
            reported |= dead
            if killed := self._serverapp_killed():  # Flower would say so a minute later
                with contextlib.suppress(Exception):
                    self.cli.stop(run_id)
                status = self.cli.status(run_id)
                break
            if stream.poll() is not None or time.monotonic() - last_check > STATUS_EVERY:
                status, last_check = self.cli.status(run_id), time.monotonic()
            if timeout is not None and time.monotonic() - started > timeout:
                self.cli.stop(run_id)
                raise TimeoutError(f"run {run_id} still {status} after {timeout:.0f} s")
        # appended: an earlier attempt's log (before a --resume) is kept
        with (self.processes.logs / "run.log").open("a", encoding="utf-8") as handle:
            handle.write(f"===== run {run_id} =====\n{self.cli.logs(run_id)}")
        if status != "finished:completed":
            raise RuntimeError(run_failure(settings.out_dir, run_id, status,
                                           self.processes.logs / "run.log",
                                           killed or self._serverapp_killed()))
        return run_id

    def _serverapp_killed(self) -> str | None:
        """How the ServerApp ended, when a signal ended it since this coordinator started."""
        return task_exits.explain(self.task_exits, self.oom_before, self.started)


def run_failure(out_dir: Path, run_id: str, status: str, log_file: Path,
                ended: str | None = None) -> str:
    """Why the run failed: the ServerApp's own reason (status.json) when it left one, else
    how its process ended (`ended`: server/task_exits.py) when a signal ended it."""
    status_file = Path(out_dir) / "status.json"
    if status_file.exists():
        saved = json.loads(status_file.read_text())
        if saved.get("status") == "stopped":
            return f"run {run_id} stopped: {saved['reason']}"
    if ended:
        return f"run {run_id} ended {status}: {ended}; see {log_file}"
    return f"run {run_id} ended {status}; see {log_file}"

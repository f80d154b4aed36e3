"""`fedcmr federate`: a whole federation on one machine, as separate OS processes talking
over loopback exactly like the containers do (SuperLink, one SuperNode per hospital, the run
submitted with `flwr run`). Everything started is stopped again, also on Ctrl-C or failure.

`runtime="simulation"` runs the same app on Flower's simulation runtime instead: a SuperLink
in simulation mode whose Ray actors stand in for the hospitals (no SuperNodes, no per-message
process start), for large studies and sweeps on one machine or a Ray cluster.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from contextlib import AbstractContextManager, suppress
from dataclasses import dataclass, field
from pathlib import Path

from fedcmr.common.cache_format import read_manifest
from fedcmr.common.simulated_nodes import write_simulated_nodes
from fedcmr.server.settings import FederationSettings, to_run_config_text

log = logging.getLogger("fedcmr.federate")
CONNECTION = "fedcmr-local"
RUNTIMES = ("deployment", "simulation")
STATUS_EVERY = 30.0


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


def app_dir() -> Path:
    """The project folder holding pyproject.toml's [tool.flwr.app] (the installed source)."""
    import fedcmr.common

    root = Path(fedcmr.common.__file__).resolve().parent.parent
    if not (root / "pyproject.toml").exists():
        raise FileNotFoundError(f"{root}: no pyproject.toml beside the installed code. Fix: "
                                "install fedcmr from its source folder (pip install -e .)")
    return root


def tool(name: str) -> str:
    """A console script of this environment (flower-superlink, flwr, ...)."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else (shutil.which(name) or name)


@dataclass
class SiteSpec:
    name: str
    caches: list[Path]


def sites_from_caches(caches: list[Path]) -> list[SiteSpec]:
    """One hospital per cache folder, named by the centre its manifest holds."""
    sites = []
    for cache in caches:
        centres = sorted({e.centre for e in read_manifest(cache)})
        sites.append(SiteSpec(name=" + ".join(centres) or cache.name, caches=[cache.resolve()]))
    return sites


@dataclass
class Security:
    """Files made by deploy/make_certificates.sh (see docs/deployment.md)."""

    ca: Path
    server_cert: Path
    server_key: Path
    site_keys: dict[str, Path] = field(default_factory=dict)  # site -> private key


@dataclass
class LocalFederation(AbstractContextManager):
    run_dir: Path
    sites: list[SiteSpec]
    threads_per_site: int = 1
    security: Security | None = None
    port: int = 0
    #: Address the SuperLink binds to (0.0.0.0 to serve other machines); local tools
    #: always reach it on 127.0.0.1.
    host: str = "127.0.0.1"
    #: "deployment": one SuperNode process per hospital; "simulation": Ray actors.
    runtime: str = "deployment"
    processes: list[tuple[str, subprocess.Popen]] = field(default_factory=list)

    @property
    def flwr_home(self) -> Path:
        return self.run_dir / ".flwr"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(FLWR_HOME=str(self.flwr_home), FLWR_TELEMETRY_ENABLED="0",
                   FLWR_DISABLE_UPDATE_CHECK="1", PYTHONUNBUFFERED="1",
                   PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}")
        return env

    # -- lifecycle -------------------------------------------------------------------
    def __enter__(self) -> LocalFederation:
        _exit_on_termination()
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        logs = self.run_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        handle = (logs / f"{name}.log").open("ab")
        proc = subprocess.Popen(args, stdout=handle, stderr=subprocess.STDOUT, env=self.env(),
                                start_new_session=True, cwd=self.run_dir)
        handle.close()
        self.processes.append((name, proc))
        return proc

    def start(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        if self.runtime not in RUNTIMES:
            raise ValueError(f"runtime {self.runtime!r}: use one of {RUNTIMES}")
        if self.runtime == "simulation":
            require_ray()
        self.port = self.port or free_port()
        self._write_connection()
        link = [tool("flower-superlink"), "--host", self.host, "--port", str(self.port),
                "--disable-runtime-dependency-installation", *self._link_security()]
        if self.runtime == "simulation":
            link.append("--simulation")
        self._spawn("superlink", link)
        self._wait_healthy()
        if self.runtime == "simulation":
            write_simulated_nodes(self.node_table, [self.node_config(s) for s in self.sites])
            return
        self._register_sites()
        for site in self.sites:
            node_config = " ".join(f"{k}={json.dumps(v)}"
                                   for k, v in self.node_config(site).items())
            self._spawn(f"supernode-{_slug(site.name)}", [
                tool("flower-supernode"), "--superlink", f"127.0.0.1:{self.port}",
                "--port", str(free_port()), "--node-config", node_config,
                *self._node_security(site)])

    def site_dir(self, site: SiteSpec) -> Path:
        return self.run_dir / "sites" / _slug(site.name)

    def node_config(self, site: SiteSpec) -> dict[str, object]:
        return {"site": site.name, "data-path": ",".join(map(str, site.caches)),
                "out-dir": str(self.site_dir(site)), "threads": self.threads_per_site}

    @property
    def node_table(self) -> Path:
        """Simulation runtime: the node configs simulated nodes read (by partition id)."""
        return self.run_dir / "simulated_nodes.json"

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

    # -- pieces ----------------------------------------------------------------------
    def _write_connection(self) -> None:
        lines = ["[superlink]", f'default = "{CONNECTION}"', "", f"[superlink.{CONNECTION}]",
                 f'address = "127.0.0.1:{self.port}"']
        if self.security:
            lines.append(f'root-certificates = "{self.security.ca}"')
        else:
            lines.append("insecure = true")
        (self.flwr_home / "config.toml").write_text("\n".join(lines) + "\n")

    def _link_security(self) -> list[str]:
        if not self.security:
            return ["--insecure"]
        s = self.security
        return ["--ssl-ca-certfile", str(s.ca), "--ssl-certfile", str(s.server_cert),
                "--ssl-keyfile", str(s.server_key), "--enable-supernode-auth"]

    def _node_security(self, site: SiteSpec) -> list[str]:
        if not self.security:
            return ["--insecure"]
        args = ["--root-certificates", str(self.security.ca)]
        key = self.security.site_keys.get(site.name)
        if key is not None:
            args += ["--auth-supernode-private-key", str(key)]
        return args

    def _register_sites(self) -> None:
        """Every site key of the certificate folder may join (and no other)."""
        if not self.security:
            return
        for name, key in self.security.site_keys.items():
            self.flwr("supernode", "register", str(key.with_suffix(".pub")), CONNECTION,
                      "--name", _slug(name), check=True)

    def _wait_healthy(self, timeout: float = 60) -> None:
        scheme = "https" if self.security else "http"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            proc = self.processes[0][1]
            if proc.poll() is not None:
                raise RuntimeError(f"SuperLink exited with {proc.returncode}; see "
                                   f"{self.run_dir / 'logs' / 'superlink.log'}")
            context = (ssl.create_default_context(cafile=str(self.security.ca))
                       if self.security else None)
            try:
                urllib.request.urlopen(f"{scheme}://127.0.0.1:{self.port}/health", timeout=2,
                                       context=context)
                return
            except OSError:
                time.sleep(0.5)
        raise TimeoutError(f"SuperLink not healthy on port {self.port} after {timeout:.0f} s")

    def flwr(self, *args: str, check: bool = False) -> subprocess.CompletedProcess:
        result = subprocess.run([tool("flwr"), *args], env=self.env(), capture_output=True,
                                text=True, cwd=self.run_dir, timeout=300)
        if check and result.returncode != 0:
            raise RuntimeError(f"flwr {' '.join(args[:2])} failed: "
                               f"{(result.stdout + result.stderr).strip()[-500:]}")
        return result

    def submit(self, settings: FederationSettings) -> str:
        extra: list[str] = []
        if self.runtime == "simulation":
            settings = settings.model_copy(update={"sim_sites": str(self.node_table)})
            # One Ray actor per hospital, each with the CPU threads a SuperNode would get.
            extra = ["--federation-config",
                     f"num-supernodes={len(self.sites)} "
                     f"client-resources-num-cpus={self.threads_per_site}"]
        result = self.flwr("run", str(app_dir()), CONNECTION, "--run-config",
                           to_run_config_text(settings), *extra, "--format", "json",
                           check=True)
        data = json.loads(result.stdout[result.stdout.index("{"):])
        if not data.get("success"):
            raise RuntimeError(f"flwr run refused the run: {data}")
        return str(data["run-id"])

    def status(self, run_id: str) -> str:
        result = self.flwr("ls", "--run-id", run_id, CONNECTION, "--format", "json")
        try:
            data = json.loads(result.stdout[result.stdout.index("{"):])
            return str(data["runs"][0]["status"])
        except (ValueError, KeyError, IndexError):
            return "unknown"

    def run_logs(self, run_id: str) -> str:
        return self.flwr("log", run_id, CONNECTION, "--show").stdout

    def dead_processes(self) -> list[str]:
        return [name for name, proc in self.processes if proc.poll() is not None]


def require_ray() -> None:
    try:
        import ray  # noqa: F401
    except ImportError as err:
        raise RuntimeError("the simulation runtime needs Ray, which is not installed. Fix: "
                           "pip install 'fedcmr[simulation]' (or 'flwr[simulation]==1.42.0'), "
                           "or use --runtime deployment") from err


def _exit_on_termination() -> None:
    """SIGTERM/SIGHUP (`timeout`, `kill`, a closed terminal) end Python without running any
    cleanup: turn them into SystemExit so the context manager stops what it started."""
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


def _slug(name: str) -> str:
    from fedcmr.common.centres import slug

    return slug(name) or "site"


def _follow_logs(fed: LocalFederation, run_id: str, echo) -> subprocess.Popen:
    """Stream the run's log and pass fedcmr's own lines (progress per round) to `echo`."""
    proc = subprocess.Popen([tool("flwr"), "log", run_id, CONNECTION, "--stream"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=fed.env(), cwd=fed.run_dir, start_new_session=True)
    fed.processes.append(("log-stream", proc))

    def pump() -> None:
        for line in proc.stdout:
            if "fedcmr." in line:
                echo(line.rstrip())

    threading.Thread(target=pump, daemon=True).start()
    return proc


def run_to_completion(fed: LocalFederation, settings: FederationSettings, echo,
                      timeout: float | None = None) -> str:
    """Submit the run, relay its progress, wait for its end; returns the run id."""
    started = time.monotonic()
    run_id = fed.submit(settings)
    echo(f"run {run_id} submitted; logs in {fed.run_dir / 'logs'}")
    stream = _follow_logs(fed, run_id, echo)
    # The log stream ends with the run; `flwr ls` (a whole CLI process) is asked only then,
    # or every STATUS_EVERY seconds should the stream have died early.
    status, last_check = "unknown", time.monotonic()
    while not status.startswith("finished"):
        time.sleep(1)
        dead = [n for n in fed.dead_processes() if n != "log-stream"]
        if dead:
            raise RuntimeError(f"{', '.join(dead)} stopped during the run; see "
                               f"{fed.run_dir / 'logs'}")
        if stream.poll() is not None or time.monotonic() - last_check > STATUS_EVERY:
            status, last_check = fed.status(run_id), time.monotonic()
        if timeout is not None and time.monotonic() - started > timeout:
            fed.flwr("stop", run_id, CONNECTION)
            raise TimeoutError(f"run {run_id} still {status} after {timeout:.0f} s")
    (fed.run_dir / "logs" / "run.log").write_text(fed.run_logs(run_id))
    if status != "finished:completed":
        raise RuntimeError(f"run {run_id} ended {status}; see {fed.run_dir / 'logs' / 'run.log'}")
    return run_id


def run_local_federation(caches: list[Path], settings: FederationSettings, run_dir: Path,
                         security: Security | None = None, threads_per_site: int = 1,
                         echo=print, timeout: float | None = None,
                         runtime: str = "deployment") -> dict:
    """Start everything, run, gather, stop everything; returns metrics.json's content."""
    from fedcmr.client.site_work import read_site_predictions
    from fedcmr.common.results import write_json, write_predictions

    run_dir = run_dir.resolve()
    sites = sites_from_caches(caches)
    settings = settings.model_copy(update={"out_dir": run_dir, "min_sites": len(sites)})
    started = time.monotonic()
    with LocalFederation(run_dir, sites, threads_per_site, security,
                         runtime=runtime) as fed:
        echo(f"SuperLink ({runtime}) on 127.0.0.1:{fed.port}; {len(sites)} hospitals: "
             + ", ".join(s.name for s in sites))
        run_to_completion(fed, settings, echo, timeout)
    rows = [r for site in sites for r in read_site_predictions(fed.site_dir(site))]
    write_predictions(run_dir / "predictions.csv", rows)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    metrics["elapsed_s"] = round(time.monotonic() - started, 1)
    write_json(run_dir / "metrics.json", metrics)
    return metrics

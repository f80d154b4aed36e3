"""`fedcmr federate`: a whole federation on one machine, as separate OS processes talking
over loopback exactly like the containers do (the coordinator's SuperLink, one SuperNode per
hospital, the run submitted with `flwr run`). Everything started is stopped again.

`runtime="simulation"` runs the same app on Flower's simulation runtime instead: a SuperLink
in simulation mode whose Ray actors stand in for the hospitals (no SuperNodes, no per-message
process start), for large studies and sweeps on one machine or a Ray cluster.

`runtime="in-process"` runs it with nothing started at all: Flower's simulation engine in
this process, the hospitals' ClientApps in turn (support/inprocess_simulation.py): a study's
cell on the one device its Ray task or process holds.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from fedcmr.client.runtime.supernode_main import SUPERNODE_MAIN
from fedcmr.client.site.work import read_site_predictions
from fedcmr.common.atomic import write_json
from fedcmr.common.node_config import NodeConfig, write_simulated_nodes
from fedcmr.common.results import PREDICTIONS_CSV, write_predictions
from fedcmr.lab.sites import SitePer, SiteSpec, sites_from_caches
from fedcmr.server.security import Security
from fedcmr.server.settings import FederationSettings
from fedcmr.server.superlink import Coordinator
from fedcmr.support.flower_env import tool
from fedcmr.support.ports import free_port

#: How a local federation runs (module docstring).
Runtime = Literal["deployment", "simulation", "in-process"]
RUNTIMES: tuple[Runtime, ...] = ("deployment", "simulation", "in-process")


def site_dir(run_dir: Path, site: SiteSpec) -> Path:
    """Where a hospital of a local federation writes (its node config's out_dir)."""
    return run_dir / "sites" / Security.node_name(site.name)


def node_config(run_dir: Path, site: SiteSpec, threads: int,
                site_policy: Path | None) -> NodeConfig:
    return NodeConfig(site=site.name, data_path=tuple(site.caches), centres=site.centres,
                      out_dir=site_dir(run_dir, site), threads=threads,
                      policy=site_policy.resolve() if site_policy else None)


@dataclass
class LocalFederation(Coordinator):
    """The coordinator plus every hospital's SuperNode (or their simulated stand-ins)."""

    sites: list[SiteSpec] = field(default_factory=list)
    threads_per_site: int = 1
    #: Every hospital's release policy file (None: the defaults).
    site_policy: Path | None = None

    def start(self) -> None:
        super().start()
        if self.runtime == "simulation":
            write_simulated_nodes(self.node_table, [self.node_config(s) for s in self.sites])
            return
        for site in self.sites:
            self.processes.spawn(f"supernode-{Security.node_name(site.name)}", [
                sys.executable, "-c", SUPERNODE_MAIN, tool("flower-supernode"),
                "--superlink", f"127.0.0.1:{self.port}",
                "--port", str(free_port()), "--node-config", self.node_config(site).to_text(),
                *self._node_security(site)])

    def node_config(self, site: SiteSpec) -> NodeConfig:
        return node_config(self.run_dir, site, self.threads_per_site, self.site_policy)

    @property
    def node_table(self) -> Path:
        """Simulation runtime: the node configs simulated nodes read (by partition id)."""
        return self.run_dir / "simulated_nodes.json"

    def _node_security(self, site: SiteSpec) -> list[str]:
        if not self.security:
            return ["--insecure"]
        args = ["--root-certificates", str(self.security.ca)]
        key = self.security.site_keys.get(site.name)
        if key is not None:
            args += ["--auth-supernode-private-key", str(key)]
        return args

    def submit(self, settings: FederationSettings) -> str:
        if self.runtime != "simulation":
            return super().submit(settings)
        settings = settings.model_copy(update={"sim_sites": str(self.node_table)})
        # One Ray actor per hospital, each with the CPU threads a SuperNode would get.
        return self.cli.submit(settings, ["--federation-config",
                                          f"num-supernodes={len(self.sites)} "
                                          f"client-resources-num-cpus={self.threads_per_site}"])


def run_local_federation(caches: list[Path], settings: FederationSettings, run_dir: Path,
                         security: Security | None = None, threads_per_site: int = 1,
                         echo=print, timeout: float | None = None,
                         runtime: Runtime = "deployment",
                         site_policy: Path | None = None, site_per: SitePer = "centre",
                         only: Sequence[str] = ()) -> dict:
    """Start everything, run, gather, stop everything; returns metrics.json's content.
    `site_per`: one hospital per centre of the caches, or one per cache (sites_from_caches);
    `only`: the names of the hospitals that take part (empty: all)."""
    run_dir = run_dir.resolve()
    sites = sites_from_caches(caches, site_per)
    if only:
        unknown = sorted(set(only) - {s.name for s in sites})
        if unknown:
            raise ValueError(f"site(s) {unknown} are not among the caches' sites "
                             f"({', '.join(s.name for s in sites)}). Fix: name sites the "
                             "caches hold")
        sites = [s for s in sites if s.name in only]
    settings = settings.model_copy(update={"out_dir": run_dir, "sites": len(sites)})
    started = time.monotonic()
    if runtime == "in-process":
        if security is not None:
            raise ValueError("the in-process runtime has no network to secure. Fix: drop "
                             "--secure, or use --runtime deployment")
        run_in_process(sites, settings, run_dir, echo, threads_per_site, site_policy)
    else:
        with LocalFederation(run_dir, security, runtime=runtime, sites=sites,
                             threads_per_site=threads_per_site, site_policy=site_policy) as fed:
            echo(f"SuperLink ({runtime}) on 127.0.0.1:{fed.port}; {len(sites)} hospitals: "
                 + ", ".join(s.name for s in sites))
            fed.run_to_completion(settings, echo, timeout)
    rows = [r for site in sites for r in read_site_predictions(site_dir(run_dir, site))]
    write_predictions(run_dir / PREDICTIONS_CSV, rows)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    metrics["elapsed_s"] = round(time.monotonic() - started, 1)
    write_json(run_dir / "metrics.json", metrics)
    return metrics


#: The loggers whose lines go to an in-process run's log file only, not to the console.
RUN_LOGGERS = ("fedcmr.server", "fedcmr.client", "fedcmr.common", "flwr")


def run_in_process(sites: list[SiteSpec], settings: FederationSettings, run_dir: Path, echo,
                   threads: int, site_policy: Path | None) -> None:
    """The federation on Flower's simulation engine in this process; the ServerApp's and
    the sites' log lines in run_dir/logs/run.log. Raises with the reason when the run does
    not complete (status.json, as the coordinator does)."""
    import torch

    # Flower's link state imports alembic, whose plug-in lines would reach the console
    logging.getLogger("alembic").setLevel(logging.WARNING)
    from fedcmr.client.site.client_app import app as client_app
    from fedcmr.common.app_bundle import app_dir
    from fedcmr.server.server_app import app as server_app
    from fedcmr.server.superlink import run_failure
    from fedcmr.support.inprocess_simulation import run_in_process as run_engine

    table = run_dir / "simulated_nodes.json"
    run_dir.mkdir(parents=True, exist_ok=True)
    write_simulated_nodes(table, [node_config(run_dir, s, threads, site_policy) for s in sites])
    settings = settings.model_copy(update={"sim_sites": str(table)})
    log_file = run_dir / "logs" / "run.log"
    echo(f"in-process federation ({len(sites)} hospitals: "
         + ", ".join(s.name for s in sites) + f"); log: {log_file}")
    before = torch.get_num_threads()  # each site sets its node's threads in this process
    with _logs_to(log_file, echo):
        try:
            run_engine(server_app, client_app, settings.to_flat(), len(sites), app_dir())
        except Exception as err:
            raise RuntimeError(run_failure(run_dir, "in-process", f"failed ({err})",
                                           log_file)) from err
        finally:
            torch.set_num_threads(before)
    status = json.loads((run_dir / "status.json").read_text())["status"]
    if status not in ("completed", "partial"):
        raise RuntimeError(run_failure(run_dir, "in-process", status, log_file))


class _Echo(logging.Handler):
    def __init__(self, echo) -> None:
        super().__init__(logging.INFO)
        self.echo = echo

    def emit(self, record: logging.LogRecord) -> None:
        self.echo(self.format(record))


@contextlib.contextmanager
def _logs_to(path: Path, echo) -> Iterator[None]:
    """RUN_LOGGERS' lines to `path`; the coordinator's also to `echo` (its progress, as the
    other runtimes relay the ServerApp's log)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    relay = _Echo(echo)
    relay.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    loggers = [logging.getLogger(name) for name in RUN_LOGGERS]
    saved = [(lg.handlers, lg.propagate, lg.level) for lg in loggers]
    for lg in loggers:  # Flower's logger has a console handler of its own: set aside too
        lg.handlers = [handler, relay] if lg.name == "fedcmr.server" else [handler]
        lg.propagate = False
        lg.setLevel(logging.INFO)
    try:
        yield
    finally:
        for lg, (handlers, propagate, level) in zip(loggers, saved, strict=True):
            lg.handlers, lg.propagate, lg.level = handlers, propagate, level
        handler.close()

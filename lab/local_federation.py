"""`fedcmr federate`: a whole federation on one machine, as separate OS processes talking
over loopback exactly like the containers do (the coordinator's SuperLink, one SuperNode per
hospital, the run submitted with `flwr run`). Everything started is stopped again.

`runtime="simulation"` runs the same app on Flower's simulation runtime instead: a SuperLink
in simulation mode whose Ray actors stand in for the hospitals (no SuperNodes, no per-message
process start), for large studies and sweeps on one machine or a Ray cluster.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fedcmr.client.runtime.supernode_main import SUPERNODE_MAIN
from fedcmr.client.site.work import read_site_predictions
from fedcmr.common.atomic import write_json
from fedcmr.common.node_config import NodeConfig, write_simulated_nodes
from fedcmr.common.results import PREDICTIONS_CSV, write_predictions
from fedcmr.lab.sites import SitePer, SiteSpec, sites_from_caches
from fedcmr.server.security import Security
from fedcmr.server.settings import FederationSettings
from fedcmr.server.superlink import Coordinator, Runtime
from fedcmr.support.flower_env import tool
from fedcmr.support.ports import free_port


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

    def site_dir(self, site: SiteSpec) -> Path:
        return self.run_dir / "sites" / Security.node_name(site.name)

    def node_config(self, site: SiteSpec) -> NodeConfig:
        return NodeConfig(site=site.name, data_path=tuple(site.caches),
                          centres=site.centres, out_dir=self.site_dir(site),
                          threads=self.threads_per_site,
                          policy=self.site_policy.resolve() if self.site_policy else None)

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
    with LocalFederation(run_dir, security, runtime=runtime, sites=sites,
                         threads_per_site=threads_per_site, site_policy=site_policy) as fed:
        echo(f"SuperLink ({runtime}) on 127.0.0.1:{fed.port}; {len(sites)} hospitals: "
             + ", ".join(s.name for s in sites))
        fed.run_to_completion(settings, echo, timeout)
    rows = [r for site in sites for r in read_site_predictions(fed.site_dir(site))]
    write_predictions(run_dir / PREDICTIONS_CSV, rows)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    metrics["elapsed_s"] = round(time.monotonic() - started, 1)
    write_json(run_dir / "metrics.json", metrics)
    return metrics

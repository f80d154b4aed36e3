"""The federation's settings as they cross from `flwr run --run-config` into the ServerApp.
Defaults live in pyproject.toml [tool.flwr.app.config]; keys use dashes as Flower's do."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from fedcmr.common.run_config import RunConfig


class FederationSettings(BaseModel):
    model_config = ConfigDict(frozen=True)

    strategy: str = "fedavg"
    vote_alpha: float = 1.0
    out_dir: Path = Path("runs/federated")
    #: Seconds to wait for the replies of one message exchange (never None: a lost site
    #: would hang the run).
    round_timeout: float = 900.0
    #: How many sites must have connected before the run starts, and how long to wait.
    min_sites: int = 1
    wait_sites_timeout: float = 300.0
    #: Simulation runtime only: the JSON node table simulated nodes read their site from
    #: (common/simulated_nodes.py); empty for SuperNodes, which have their own node config.
    sim_sites: str = ""
    run: RunConfig = RunConfig()

    @classmethod
    def from_run_config(cls, values: Mapping[str, object]) -> FederationSettings:
        v = dict(values)
        fold = str(v.get("fold", "all"))
        run = RunConfig(
            protocol=v.get("protocol", "ccv"),
            folds=None if fold == "all" else tuple(int(f) for f in fold.split(",")),
            seed=int(v.get("seed", 0)), split_seed=int(v.get("split-seed", 0)),
            prior=v.get("prior", "structures"), augment=v.get("augment", "none"),
            phases=tuple(p.strip().upper() for p in str(v.get("phases", "ed,es")).split(",")),
            profile=v.get("profile", "quick"), epochs=int(v.get("epochs", 0)) or None,
            pretrained=str(v.get("pretrained", "auto")),
            min_subjects=int(v.get("min-subjects", 5)))
        return cls(strategy=str(v.get("strategy", "fedavg")),
                   vote_alpha=float(v.get("vote-alpha", 1.0)),
                   out_dir=Path(str(v.get("out-dir", "runs/federated"))),
                   round_timeout=float(v.get("round-timeout", 900.0)),
                   min_sites=int(v.get("min-sites", 1)),
                   wait_sites_timeout=float(v.get("wait-sites-timeout", 300.0)),
                   sim_sites=str(v.get("sim-sites", "")), run=run)


def to_run_config_text(settings: FederationSettings) -> str:
    """The `--run-config` string for `flwr run` that reproduces these settings."""
    run = settings.run
    fold = "all" if run.folds is None else ",".join(str(f) for f in run.folds)
    values = {
        "strategy": settings.strategy, "vote-alpha": settings.vote_alpha,
        "out-dir": str(settings.out_dir), "round-timeout": settings.round_timeout,
        "min-sites": settings.min_sites, "wait-sites-timeout": settings.wait_sites_timeout,
        "protocol": run.protocol, "fold": fold, "seed": run.seed, "split-seed": run.split_seed,
        "prior": run.prior, "augment": run.augment, "phases": ",".join(run.phases).lower(),
        "profile": run.profile, "epochs": run.epochs or 0, "pretrained": run.pretrained,
        "min-subjects": run.min_subjects, "sim-sites": settings.sim_sites,
    }
    return " ".join(f"{k}={json.dumps(v)}" for k, v in values.items())

"""The federation's settings as they cross from the command line or `flwr run --run-config`
into the ServerApp: a flat model whose keys are Flower's (dashes), and whose defaults are
the only ones (pyproject.toml's `[tool.flwr.app.config]` repeats them, checked by a test).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field, model_validator

from fedcmr.common.flat import FlatModel, FlatValue
from fedcmr.common.node_config import SIM_SITES
from fedcmr.common.run_config import RunConfig
from fedcmr.server.strategy_names import STRATEGY_ALPHA, STRATEGY_NAMES, Strategy

__all__ = ["STRATEGY_ALPHA", "FederationSettings", "Strategy", "strategy_alpha"]


class FederationSettings(FlatModel):
    FLAT: ClassVar[tuple[str, ...]] = (
        "strategy", "vote_alpha", "out_dir", "round_timeout", "sites", "min_sites",
        "wait_sites_timeout", "rejoin_timeout", "resume", "sim_sites")

    strategy: Strategy = Field("fedavg", description="site weights: n_k (fedavg), equal "
                                                     "(equal-vote) or n_k ** alpha (tempered); "
                                                     "or a robust rule: median, trimmed-mean, "
                                                     "krum (docs/federation.md)")
    #: Site weights are n_k ** vote_alpha: 1 for fedavg, 0 for equal-vote (set from the
    #: strategy), a value in [0, 1] for tempered.
    vote_alpha: float = Field(1.0, ge=0.0, le=1.0,
                              description="tempered: site weights proportional to "
                                          "n_k ** alpha (0..1)")
    out_dir: Path = Field(Path("runs/federated"), description="run folder")
    #: Seconds to wait for the replies of one message exchange (never None: a lost site
    #: would hang the run).
    round_timeout: float = Field(900.0, gt=0, description="seconds to wait for the sites' "
                                                          "replies to one message")
    #: How many sites must have connected before the run starts: the study's four
    #: hospitals unless the launcher or `fedcmr server --sites` says otherwise.
    sites: int = Field(4, ge=1, description="hospitals to wait for before the run starts")
    #: How long to wait for them: hospitals prepare their data before they connect.
    wait_sites_timeout: float = Field(1800.0, gt=0, description="seconds to wait for the "
                                                                "hospitals to connect")
    #: A round is aggregated from at least this many training sites. Two: one site's
    #: update alone is local training, not a federation; with four hospitals (three
    #: training sites under leave-centre-out) the study survives the loss of one.
    min_sites: int = Field(2, ge=1, description="fewest training sites a round may be "
                                                "aggregated from")
    #: With fewer, or to test at a site that is away, the run waits this long for lost
    #: sites to come back, then stops (resumable with --resume) or reports without them.
    rejoin_timeout: float = Field(600.0, ge=0, description="seconds to wait for lost sites "
                                                           "to come back")
    #: Continue the run in out_dir from its checkpoint (finished folds are kept).
    resume: bool = Field(False, description="continue the run in --out from its last "
                                            "completed round")
    #: Simulation runtime only: the JSON node table simulated nodes read their site from
    #: (common/node_config.py); empty for SuperNodes, which have their own node config.
    sim_sites: str = Field("", alias=SIM_SITES)
    run: RunConfig = RunConfig()

    @model_validator(mode="before")
    @classmethod
    def _strategy_alpha(cls, values: Any) -> Any:
        """fedavg and equal-vote fix the exponent; only tempered reads vote_alpha."""
        if isinstance(values, dict) and values.get("strategy") in STRATEGY_ALPHA:
            return {**values, "vote_alpha": STRATEGY_ALPHA[values["strategy"]]}
        return values

    def to_flat(self) -> dict[str, FlatValue]:
        return {**super().to_flat(), **self.run.to_flat()}

    @classmethod
    def from_flat(cls, values, **extra: Any) -> FederationSettings:
        run = extra.pop("run", None) or RunConfig.from_flat(values)
        return super().from_flat(values, run=run, **extra)

    @classmethod
    def build(cls, strategy: str, vote_alpha: float | None, run: RunConfig,
              flat: Mapping[str, Any] | None = None, **settings: Any) -> FederationSettings:
        """The one way fedcmr makes its federation settings (the CLI, the demo, a study's
        cells): the strategy's vote exponent (its own, or tempered's `vote_alpha`, checked),
        the run, other settings from flat keys (the command line's) and by name."""
        return cls.from_flat(flat or {}, strategy=strategy, run=run,
                             vote_alpha=strategy_alpha(strategy, vote_alpha), **settings)

    def to_run_config_text(self) -> str:
        """The `--run-config` string for `flwr run` that reproduces these settings."""
        return " ".join(f"{k}={json.dumps(v)}" for k, v in self.to_flat().items())


def strategy_alpha(name: str, vote_alpha: float | None = None) -> float:
    """The vote exponent of `fedavg` (1), `equal-vote` (0) or `tempered` (its vote_alpha)."""
    if name == "tempered":
        if vote_alpha is None or not 0.0 <= vote_alpha <= 1.0:
            raise ValueError("strategy 'tempered' needs --vote-alpha in [0, 1]")
        return vote_alpha
    if name in STRATEGY_ALPHA:
        return STRATEGY_ALPHA[name]
    raise ValueError(f"unknown strategy {name!r}: use one of {', '.join(STRATEGY_NAMES)}")

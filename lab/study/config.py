"""A study's configuration (STUDY.toml): the grid of cells to run, as blocks of axes.

Each `[[block]]` is a cartesian product of its axes; axes a block leaves out take the
`[axes]` table's values, then the defaults below. Cells that several blocks produce run once
(a cell is keyed by its settings). Example (studies/small.toml is a whole one):

    name = "small"
    profile = "smoke"
    [axes]
    seed = [0, 1]
    [[block]]
    name = "table2"
    framework = ["cds", "fedavg"]
    prior = ["baseline", "masked", "structures"]
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from fedcmr.common.models import registry
from fedcmr.common.run_config import (
    Augment,
    ModelName,
    Prior,
    ProfileName,
    Protocol,
    RunConfig,
)
from fedcmr.lab.sites import SitePer
from fedcmr.server.strategy_names import VOTE_STRATEGIES

#: A run's defaults: every axis a study leaves out takes RunConfig's value.
RUN = RunConfig()

Framework = Literal["cds", *VOTE_STRATEGIES]
#: How FL cells run (lab/local_federation.py): Flower's simulation engine in the cell's own
#: process (in-process: nothing started per cell), its simulation runtime (a SuperLink and a
#: Ray instance per cell) or one SuperNode process per site (deployment).
Runtime = Literal["in-process", "simulation", "deployment"]
#: "each": one cell per fold of the protocol; "all": one cell holding every fold.
FoldChoice = Literal["each", "all"]


class Axes(BaseModel):
    """The values a block's cells take, one axis each (every combination runs)."""

    model_config = ConfigDict(extra="forbid")

    #: Model names (common/models/): "cnn" (the images), "measures" (logistic regression
    #: on the clinical measures; it has no prior or augmentation, so its cells take one of
    #: each), or a registered plug-in.
    model: list[ModelName] = Field([RUN.model], min_length=1)
    framework: list[Framework] = Field(["cds", "fedavg"], min_length=1)
    #: tempered only: site weights n_k ** alpha, one cell per value.
    vote_alpha: list[float] = Field([0.5], min_length=1)
    prior: list[Prior] = Field([RUN.prior], min_length=1)
    augment: list[Augment] = Field([RUN.augment], min_length=1)
    protocol: list[Protocol] = Field([RUN.protocol], min_length=1)
    #: Network seeds (the paper: 5); the split seed is the study's and stays fixed.
    seed: list[int] = Field([RUN.seed], min_length=1)
    folds: FoldChoice | list[int] = "each"
    #: "ed,es" (both frames, the paper's main setting) or "ed" (its ED-only variant).
    phases: list[str] = Field([",".join(RUN.phases).lower()], min_length=1)
    #: Which hospitals take part, by name: each value a set of sites ([] or ["all"]: every
    #: site of the study's caches), e.g. [[], ["Vall d'Hebron", "Sagrada Familia", "SantPau"]].
    sites: list[list[str]] = Field([[]], min_length=1)

    @field_validator("model")
    @classmethod
    def _models(cls, value: list[str]) -> list[str]:
        return [registry.check_name(name) for name in value]

    @field_validator("vote_alpha")
    @classmethod
    def _alphas(cls, value: list[float]) -> list[float]:
        bad = [a for a in value if not 0.0 <= a <= 1.0]
        if bad:
            raise ValueError(f"vote_alpha {bad} outside [0, 1]")
        return value

    @field_validator("phases")
    @classmethod
    def _phases(cls, value: list[str]) -> list[str]:
        return [",".join(RunConfig(phases=p).phases).lower() for p in value]


class Block(Axes):
    name: str = ""


class Synthetic(BaseModel):
    """The cohort a study synthesises and prepares itself when it is given no caches."""

    model_config = ConfigDict(extra="forbid")

    scale: float = Field(0.25, gt=0, description="fraction of Table 1's counts")
    seed: int = 0


class StudyConfig(BaseModel):
    """One study: where its data is, how each cell runs, and the grid (`block`)."""

    model_config = ConfigDict(extra="forbid")

    name: str = "study"
    description: str = ""
    #: Prepared caches (relative to the config file); none: the synthetic cohort below.
    caches: list[Path] = []
    synthetic: Synthetic = Synthetic()
    #: A cache with several centres becomes one site per centre, or stays one site.
    site_per: SitePer = "centre"
    profile: ProfileName = RUN.profile
    #: At most this many epochs (federated: rounds); 0: the profile's.
    epochs: int = Field(0, ge=0)
    pretrained: str = RUN.pretrained
    split_seed: int = RUN.split_seed
    #: FL cells: see Runtime above.
    runtime: Runtime = "in-process"
    #: Run the cells as Ray tasks on this Ray cluster ("auto": the one `ray start` began on
    #: this machine; "HOST:6379"; "local": a Ray instance of this study's own); empty: in
    #: this machine's processes (`--workers`). `fedcmr study --ray` overrides it.
    ray: str = ""
    #: On Ray: the CPUs each cell holds (its torch threads); a cell also holds one GPU
    #: where the cluster has any.
    cpus_per_cell: int = Field(1, ge=1)
    #: The hospitals' release policy for FL cells (relative to the config file, or to the
    #: fedcmr source folder); empty: client/site/policy.py's defaults.
    site_policy: str = ""
    #: Bootstrap resamples of the confidence intervals.
    bootstrap: int = Field(1000, ge=100)
    axes: Axes = Axes()
    block: list[Block] = Field(default_factory=list)

    @classmethod
    def load(cls, path: Path) -> StudyConfig:
        """Read STUDY.toml; a bad file is named with what is wrong in it."""
        path = Path(path)
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: no such study config. Fix: give the path of "
                                    "a STUDY.toml (studies/small.toml, studies/paper.toml)") \
                from None
        except tomllib.TOMLDecodeError as err:
            raise ValueError(f"{path}: not valid TOML ({err}). Fix: correct the file") \
                from None
        try:
            config = cls.model_validate(merge_axes(raw))
        except ValidationError as err:
            problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                                 for e in err.errors())
            raise ValueError(f"{path}: {problems}. Fix: correct these keys (docs/study.md "
                             "lists every key)") from None
        return config.relative_to(path.parent)

    def relative_to(self, folder: Path) -> StudyConfig:
        caches = [c if c.is_absolute() else (folder / c).resolve() for c in self.caches]
        return self.model_copy(update={"caches": caches})

    def blocks(self) -> list[Block]:
        """The grid's blocks; a config without any has one block of the `[axes]` values."""
        return self.block or [Block(**self.axes.model_dump())]


def merge_axes(raw: dict[str, Any]) -> dict[str, Any]:
    """Each block's axes over the `[axes]` table's: a block names only what it varies."""
    axes = raw.get("axes", {})
    if not isinstance(axes, dict):
        return raw
    blocks = raw.get("block", [])
    if isinstance(blocks, list):
        raw = {**raw, "block": [{**axes, **b} if isinstance(b, dict) else b for b in blocks]}
    return raw

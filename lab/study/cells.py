"""The cells of a study: one run each (a framework on a set-up, some folds, one seed),
keyed by a digest of every setting that shapes its result, so that a changed setting
invalidates only the cells it touches and a finished cell is never run twice."""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from fedcmr.common.cache_format import MANIFEST, PREP_INFO
from fedcmr.common.digests import DIGEST_LENGTH, short_digest
from fedcmr.common.models.registry import DEFAULT_MODEL, reads_images
from fedcmr.common.run_config import (
    Augment,
    ModelName,
    Prior,
    ProfileName,
    Protocol,
    RunConfig,
)
from fedcmr.lab.study.config import Block, Framework, StudyConfig
from fedcmr.server.settings import STRATEGY_ALPHA

#: A run's defaults (a model without image input takes the default prior and augmentation).
RUN_DEFAULTS = RunConfig()

#: The framework's strategy in the Flower app ("" for the centralised baseline).
STRATEGY = {"cds": "", "fedavg": "fedavg", "equal-vote": "equal-vote", "tempered": "tempered"}


class CellSpec(BaseModel):
    """Everything that shapes one cell's result. `data` is the caches' digest and `sites`
    the hospitals (one per centre, or per cache) in the order they run."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: ModelName = DEFAULT_MODEL
    framework: Framework
    vote_alpha: float | None = None
    prior: Prior
    augment: Augment
    protocol: Protocol
    folds: tuple[int, ...]
    seed: int
    phases: tuple[str, ...]
    profile: ProfileName
    epochs: int = 0
    pretrained: str = "auto"
    split_seed: int = 0
    sites: tuple[str, ...]
    centres: tuple[str, ...]
    data: str

    @property
    def strategy(self) -> str:
        return STRATEGY[self.framework]

    @property
    def federated(self) -> bool:
        return self.framework != "cds"

    @property
    def key(self) -> str:
        """A readable name and the digest of every setting: the cell's folder name (a CNN
        cell's as before the model axis existed, so that finished cells stay valid)."""
        default = self.model == DEFAULT_MODEL
        digest = short_digest(self.model_dump_json(exclude={"model"} if default else None), 10)
        model = "" if default else f"{self.model}-"
        alpha = f"{self.vote_alpha:g}" if self.framework == "tempered" else ""
        folds = "-".join(str(f) for f in self.folds)
        return (f"{model}{self.framework}{alpha}_{self.prior}_{self.augment}_{self.protocol}"
                f"_f{folds}_s{self.seed}_{'-'.join(self.phases).lower()}_{digest}")

    def run_config(self) -> RunConfig:
        return RunConfig(model=self.model, protocol=self.protocol, folds=self.folds, seed=self.seed,
                         split_seed=self.split_seed, prior=self.prior, augment=self.augment,
                         phases=self.phases, profile=self.profile, epochs=self.epochs,
                         pretrained=self.pretrained, centres=self.centres)

    def settings(self) -> dict:
        """The cell as results.csv shows it (layout.RESULT_COLUMNS' setting columns)."""
        return {"key": self.key, "model": self.model, "framework": self.framework,
                "strategy": self.strategy,
                "vote_alpha": "" if self.vote_alpha is None else self.vote_alpha,
                "prior": self.prior, "augment": self.augment, "protocol": self.protocol,
                "folds": ",".join(str(f) for f in self.folds), "seed": self.seed,
                "phases": ",".join(self.phases), "profile": self.profile,
                "sites": "; ".join(self.sites)}

    def matches(self, only: dict[str, set[str]]) -> bool:
        """Whether the cell passes every `--only key=value[,value]` filter."""
        shown = self.settings()
        shown["folds"] = {str(f) for f in self.folds}
        shown["phases"] = ",".join(self.phases).lower()
        for key, values in only.items():
            value = shown[key]
            if isinstance(value, set):
                if not value & values:
                    return False
            elif str(value).lower() not in {v.lower() for v in values}:
                return False
        return True


def data_digest(caches: Sequence[Path]) -> str:
    """What the caches hold: their manifests (every frame's key names its source and
    preprocessing) and preprocessing records. Re-prepared data makes new cells."""
    h = hashlib.sha256()
    for cache in sorted(Path(c).resolve() for c in caches):
        for name in (MANIFEST, PREP_INFO):
            h.update((cache / name).read_bytes())
    return h.hexdigest()[:DIGEST_LENGTH]


def expand(config: StudyConfig, sites: Mapping[str, Sequence[str]], data: str
           ) -> list[CellSpec]:
    """Every cell of the grid, once, in the config's order. `sites`: the study's hospitals
    (name -> the centres it holds), in the order they run."""
    cells: dict[str, CellSpec] = {}
    for block in config.blocks():
        for spec in _block_cells(block, config, sites, data):
            cells.setdefault(spec.key, spec)
    return list(cells.values())


def take_part(chosen: Sequence[str], sites: Mapping[str, Sequence[str]]
              ) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The sites of one `sites` axis value (in the study's order) and their centres."""
    if not chosen or list(chosen) == ["all"]:
        names = list(sites)
    else:
        unknown = sorted(set(chosen) - set(sites))
        if unknown:
            raise ValueError(f"sites {unknown} are not the study's ({', '.join(sites)}). "
                             "Fix: correct the study config's sites axis")
        names = [n for n in sites if n in chosen]
    return tuple(names), tuple(sorted({c for n in names for c in sites[n]}))


def _block_cells(block: Block, config: StudyConfig, sites: Mapping[str, Sequence[str]],
                 data: str) -> Iterable[CellSpec]:
    for model, framework, prior, augment, protocol, phases, seed, chosen in itertools.product(
            block.model, block.framework, block.prior, block.augment, block.protocol,
            block.phases, block.seed, block.sites):
        names, centres = take_part(chosen, sites)
        if not reads_images(model):  # one cell whatever the prior and augmentation
            prior, augment = RUN_DEFAULTS.prior, RUN_DEFAULTS.augment
        alphas = block.vote_alpha if framework == "tempered" else [STRATEGY_ALPHA.get(framework)]
        n_folds = RunConfig().n_folds_ccv if protocol == "ccv" else len(centres)
        for alpha, folds in itertools.product(alphas, _fold_sets(block.folds, n_folds)):
            yield CellSpec(model=model, framework=framework, vote_alpha=alpha, prior=prior,
                           augment=augment, protocol=protocol, folds=folds, seed=seed,
                           phases=tuple(p.upper() for p in phases.split(",")),
                           profile=config.profile, epochs=config.epochs,
                           pretrained=config.pretrained, split_seed=config.split_seed,
                           sites=names, centres=centres, data=data)


def _fold_sets(choice, n_folds: int) -> list[tuple[int, ...]]:
    if choice == "all":
        return [tuple(range(n_folds))]
    folds = range(n_folds) if choice == "each" else choice
    bad = [f for f in folds if not 0 <= f < n_folds]
    if bad:
        raise ValueError(f"folds {bad} out of range 0..{n_folds - 1}. Fix: correct the "
                         "study config's folds")
    return [(f,) for f in folds]


def parse_only(items: Sequence[str]) -> dict[str, set[str]]:
    """`--only framework=cds --only seed=0,1` -> {"framework": {"cds"}, "seed": {"0", "1"}}."""
    known = set(CellSpec.model_fields) - {"epochs", "pretrained", "split_seed", "data",
                                          "centres", "sites", "vote_alpha"} | {"strategy"}
    only: dict[str, set[str]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in known:
            raise ValueError(f"--only {item!r}: expected KEY=VALUE[,VALUE] with KEY one of "
                             f"{', '.join(sorted(known))}")
        only.setdefault(key, set()).update(v.strip() for v in values.split(",") if v.strip())
    return only


def read_spec(path: Path) -> CellSpec:
    return CellSpec.model_validate(json.loads(path.read_text()))

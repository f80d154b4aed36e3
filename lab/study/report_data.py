"""A study folder read for the report: its cells, grouped into configurations (a cell's
settings minus folds and seed), and the numbers the tables, figures and findings rest on.

A configuration's AUC, as in the paper: for each seed, the AUC of the pooled test predictions
of all its fold cells; then mean +- std over seeds. One estimator for every framework
(scikit-learn's, through fedcmr.common.metrics.auc) on the per-frame predictions. Its 95% CI
is a bootstrap over SUBJECTS of the seed-mean AUC (lab/study/stats.py, on the frames every
seed scored), and two frameworks are compared on the same frames and seeds by the paired
bootstrap.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from fedcmr.common.metrics import auc
from fedcmr.common.models.registry import DEFAULT_MODEL, reads_images
from fedcmr.common.results import PREDICTIONS_CSV as PREDICTIONS
from fedcmr.common.results import read_predictions
from fedcmr.common.seeds import derive_seed
from fedcmr.lab.study import layout
from fedcmr.lab.study.stats import PairedTest, bootstrap_auc_ci, paired_auc_test

#: Files of a cell's run folder (written by common/results.py, server/fl_outputs.py and
#: lab/centralized.py; the same names for both frameworks where they share a schema).
ROUNDS = "rounds.csv"
HISTORY = "history.csv"
FL_SUMMARY = "summary.json"
CDS_HARMONISATION = "harmonisation.json"
#: The settings that make a configuration: a cell's, minus folds and seed.
CONFIG_FIELDS = ("model", "framework", "vote_alpha", "prior", "augment", "protocol", "phases",
                 "profile", "epochs", "pretrained", "split_seed", "sites", "centres", "data")
LABELS = {"cds": "CDS", "fedavg": "FL", "equal-vote": "FL-EV"}
FRAMEWORK_ORDER = ("cds", "fedavg", "equal-vote", "tempered")
TOTAL = "total"


class ReportSettings(BaseModel):
    """The report's knobs (the defaults live here only)."""

    model_config = ConfigDict(extra="forbid")

    n_boot: int = Field(1000, ge=10, description="bootstrap resamples of CIs and tests")
    level: float = Field(0.95, gt=0, lt=1, description="confidence level of the CIs")
    alpha: float = Field(0.05, gt=0, lt=1, description="significance level of the findings")
    dpi: int = Field(100, ge=50, description="resolution of the PNG figures")


@dataclass
class Cell:
    key: str
    spec: dict
    folder: Path
    result: dict | None

    @property
    def run(self) -> Path:
        return self.folder / layout.RUN_DIR

    @cached_property
    def predictions(self) -> list[dict]:
        return read_predictions(self.run / PREDICTIONS)


@dataclass(frozen=True)
class AucSummary:
    per_seed: dict[int, float | None]
    mean: float | None
    std: float | None
    ci: tuple[float, float] | None
    n_frames: int
    n_subjects: int

    @property
    def n_seeds(self) -> int:
        return sum(v is not None for v in self.per_seed.values())


def framework_label(framework: str, vote_alpha: float | None) -> str:
    if framework == "tempered":
        return f"FL-T (α={vote_alpha:g})" if vote_alpha is not None else "FL-T"
    return LABELS.get(framework, framework)


class Config:
    """One configuration: its finished cells, over seeds and folds."""

    def __init__(self, settings: dict, cells: list[Cell], report: ReportSettings):
        self.settings = settings
        self.cells = cells
        self.report = report
        self._summaries: dict[str, AucSummary] = {}

    def __getattr__(self, name: str):
        if name in CONFIG_FIELDS:
            return self.settings[name]
        raise AttributeError(name)

    @property
    def label(self) -> str:
        label = framework_label(self.framework, self.vote_alpha)
        return label if self.model == DEFAULT_MODEL else f"{label} {self.model}"

    @property
    def ident(self) -> str:
        phases = "+".join(self.phases)
        alpha = "" if self.framework != "tempered" else f" α={self.vote_alpha:g}"
        if not reads_images(self.model):  # prior and augment do not apply
            return f"{self.framework}{alpha}, {self.model}, {self.protocol}, {phases}"
        return (f"{self.framework}{alpha}, {self.prior}, {self.augment}, {self.protocol}, "
                f"{phases}")

    @property
    def seeds(self) -> list[int]:
        return sorted({c.spec["seed"] for c in self.cells})

    @property
    def folds(self) -> list[int]:
        return sorted({f for c in self.cells for f in c.spec["folds"]})

    def cells_of(self, seed: int) -> list[Cell]:
        return sorted((c for c in self.cells if c.spec["seed"] == seed),
                      key=lambda c: (c.spec["folds"][0], c.key))

    @cached_property
    def rows(self) -> dict[int, list[dict]]:
        """Each seed's pooled test predictions over its fold cells (a fold two cells hold
        counts once: the cell with more folds wins)."""
        out = {}
        for seed in self.seeds:
            taken: set[int] = set()
            rows: list[dict] = []
            for cell in sorted(self.cells_of(seed), key=lambda c: (-len(c.spec["folds"]),
                                                                   c.key)):
                new = set(cell.spec["folds"]) - taken
                rows += [r for r in cell.predictions if r["fold"] in new]
                taken |= new
            out[seed] = rows
        return out

    @cached_property
    def test_centres(self) -> list[str]:
        return sorted({r["centre"] for rows in self.rows.values() for r in rows})

    def frames(self, centre: str, seeds: list[int] | None = None
               ) -> tuple[list[tuple], np.ndarray, np.ndarray, np.ndarray]:
        """The frames every one of `seeds` scored (of `centre`, or all for "total"), in one
        order: (keys, labels, subjects, scores as seeds x frames)."""
        seeds = self.seeds if seeds is None else seeds
        by_seed = [{(r["centre"], r["subject"], r["phase"]): r for r in self.rows[s]
                    if centre in (TOTAL, r["centre"])} for s in seeds]
        keys = sorted(set.intersection(*(set(m) for m in by_seed))) if by_seed else []
        labels = np.array([by_seed[0][k]["label"] for k in keys], dtype=int)
        subjects = np.array([f"{k[0]}/{k[1]}" for k in keys])
        scores = np.array([[m[k]["score"] for k in keys] for m in by_seed], dtype=float)
        return keys, labels, subjects, scores.reshape(len(seeds), len(keys))

    def summary(self, centre: str = TOTAL) -> AucSummary:
        if centre not in self._summaries:
            self._summaries[centre] = self._summary(centre)
        return self._summaries[centre]

    def _summary(self, centre: str) -> AucSummary:
        per_seed = {}
        for seed, rows in self.rows.items():
            subset = [r for r in rows if centre in (TOTAL, r["centre"])]
            per_seed[seed] = auc(np.array([r["label"] for r in subset]),
                                 np.array([r["score"] for r in subset])) if subset else None
        values = [v for v in per_seed.values() if v is not None]
        _, labels, subjects, scores = self.frames(centre)
        ci = None
        if len(values) == len(per_seed) and len(set(labels.tolist())) == 2:
            try:
                ci = bootstrap_auc_ci(labels, scores, subjects, n_boot=self.report.n_boot,
                                      seed=derive_seed("report", self.ident, centre),
                                      level=self.report.level)
            except ValueError:  # e.g. every resample one-class: no interval
                ci = None
        return AucSummary(per_seed=per_seed,
                          mean=float(np.mean(values)) if values else None,
                          std=float(np.std(values)) if len(values) > 1 else None,
                          ci=ci, n_frames=len(labels), n_subjects=len(set(subjects.tolist())))


@dataclass
class StudyResults:
    folder: Path
    meta: dict
    cells: list[Cell]
    settings: ReportSettings
    #: The CNN's configurations: the paper's tables, findings and figures read these.
    configs: list[Config] = field(default_factory=list)
    #: Every other model's (the measures model's, a plug-in's): a table of their own.
    other_configs: list[Config] = field(default_factory=list)

    @property
    def done(self) -> list[Cell]:
        return [c for c in self.cells if c.result is not None]

    @property
    def centres(self) -> list[str]:
        listed = self.meta.get("centres") or []
        seen = {c for config in self.configs for c in config.test_centres}
        return sorted(set(listed) | seen)

    def find(self, framework: str, prior: str, augment: str, protocol: str,
             phases: tuple[str, ...] = ("ED", "ES"), vote_alpha: float | None = None,
             model: str = DEFAULT_MODEL) -> Config | None:
        for config in self.configs:
            if config.model == model and (
                    config.framework, config.prior, config.augment, config.protocol,
                    tuple(config.phases)) == (framework, prior, augment, protocol,
                                              tuple(phases)) and (
                    vote_alpha is None or config.vote_alpha == vote_alpha):
                return config
        return None

    def counterpart(self, config: Config, framework: str) -> Config | None:
        """The configuration with the same settings but `framework`."""
        want = {k: v for k, v in config.settings.items() if k not in ("framework",
                                                                      "vote_alpha")}
        for other in self.configs:
            if other.framework == framework and {
                    k: v for k, v in other.settings.items()
                    if k not in ("framework", "vote_alpha")} == want:
                return other
        return None

    def paired(self, a: Config, b: Config, centre: str = TOTAL) -> PairedTest | None:
        """A against B on the frames and seeds both scored (None: nothing in common)."""
        seeds = sorted(set(a.seeds) & set(b.seeds))
        if not seeds:
            return None
        keys_a, labels, subjects, scores_a = a.frames(centre, seeds)
        keys_b, _, _, scores_b = b.frames(centre, seeds)
        at_b = {k: i for i, k in enumerate(keys_b)}
        ia = [i for i, k in enumerate(keys_a) if k in at_b]
        ib = [at_b[keys_a[i]] for i in ia]
        if len(set(labels[ia].tolist())) < 2:
            return None
        try:
            return paired_auc_test(labels[ia], scores_a[:, ia], scores_b[:, ib],
                                   subjects[ia], n_boot=self.settings.n_boot,
                                   seed=derive_seed("paired", a.ident, b.ident, centre))
        except ValueError:
            return None

    def subject_counts(self) -> tuple[dict[str, dict[str, int]], str]:
        """NOR/HCM subjects per centre: from the study's caches where they can be read,
        else from the subjects the finished cells tested."""
        from fedcmr.common.cache_format import read_manifest

        subjects: dict[tuple[str, str], int] = {}
        source = "the study's caches"
        try:
            for cache in self.meta.get("caches") or []:
                for e in read_manifest(Path(cache)):
                    subjects[(e.centre, e.subject)] = int(e.label)
        except (OSError, ValueError):
            subjects = {}
        wanted = set(self.meta.get("centres") or [])
        if wanted:
            subjects = {k: v for k, v in subjects.items() if k[0] in wanted}
        if not subjects:
            source = "the subjects the finished cells tested"
            for cell in self.done:
                for r in cell.predictions:
                    subjects[(r["centre"], r["subject"])] = int(r["label"])
        counts: dict[str, dict[str, int]] = {}
        for (centre, _), label in sorted(subjects.items()):
            entry = counts.setdefault(centre, {"NOR": 0, "HCM": 0})
            entry["HCM" if label == 1 else "NOR"] += 1
        return counts, source


def load_study(folder: Path, settings: ReportSettings | None = None) -> StudyResults:
    """Read DIR/study.json and every cell of its grid (done or not); group the done ones."""
    folder = Path(folder)
    meta_path = folder / layout.STUDY_JSON
    if not meta_path.exists():
        raise FileNotFoundError(f"{meta_path}: not a study folder (no {layout.STUDY_JSON}). "
                                "Fix: point the report at the --out folder of `fedcmr study`")
    meta = json.loads(meta_path.read_text())
    if settings is None:
        n_boot = (meta.get("config") or {}).get("bootstrap")
        settings = ReportSettings(**({"n_boot": n_boot} if n_boot else {}))
    cells = []
    # the current grid's cells only: a folder may also hold cells of an earlier config
    # (another profile, a setting since changed), which the report must not mix in
    listed = set(meta.get("cells") or ())
    for spec_path in sorted((folder / layout.CELLS).glob(f"*/{layout.CELL_JSON}")):
        if listed and spec_path.parent.name not in listed:
            continue
        spec = json.loads(spec_path.read_text())
        spec["phases"] = [p.upper() for p in spec["phases"]]
        spec.setdefault("model", DEFAULT_MODEL)  # cells from before the model axis
        result_path = spec_path.parent / layout.RESULT_JSON
        result = json.loads(result_path.read_text()) if result_path.exists() else None
        if result is not None and result.get("key") != spec["key"]:
            result = None  # a stale result of another cell: not done
        if result is not None and not (spec_path.parent / layout.RUN_DIR / PREDICTIONS
                                       ).exists():
            result = None
        cells.append(Cell(spec["key"], spec, spec_path.parent, result))
    study = StudyResults(folder, meta, cells, settings)
    groups: dict[str, list[Cell]] = {}
    specs: dict[str, dict] = {}
    for cell in study.done:
        config = {k: _hashable(cell.spec.get(k)) for k in CONFIG_FIELDS}
        ident = json.dumps(config, sort_keys=True, default=list)
        groups.setdefault(ident, []).append(cell)
        specs[ident] = config
    every = sorted(
        (Config(specs[i], cells, settings) for i, cells in groups.items()),
        key=lambda c: (FRAMEWORK_ORDER.index(c.framework) if c.framework in FRAMEWORK_ORDER
                       else 99, c.vote_alpha or 0.0, c.ident))
    study.configs = [c for c in every if c.model == DEFAULT_MODEL]
    study.other_configs = [c for c in every if c.model != DEFAULT_MODEL]
    return study


def _hashable(value):
    return tuple(value) if isinstance(value, list) else value

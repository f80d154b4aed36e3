"""The report's figures (matplotlib's Agg canvas, PNGs in DIR/figures/): AUC per set-up and
framework with error bars over seeds (the paper's figure 7), ROC curves per centre, and each
centre's intensity histogram before and after harmonisation (the paper's figure 5) from the
sites' released aggregates only. Training curves and site weights: report_curves.py.

The 'after' histogram is computed from aggregates, never from images: a centre's mean
histogram (in the per-image p1 -> 0, p99 -> 100 scale) carried through the piecewise-linear
Nyul map from the centre's mean landmarks to the reference landmarks, the map torchio
applies to one image with that image's own landmarks. Images differ in their landmarks, so
this approximates the mean of the per-image mapped histograms; it is exact when every image
of the centre has the centre's mean landmarks.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedcmr.common.atomic import atomic_path
from fedcmr.lab.study import paper_reference
from fedcmr.lab.study.report_data import (
    CDS_HARMONISATION,
    FL_SUMMARY,
    TOTAL,
    Cell,
    Config,
    StudyResults,
)
from fedcmr.lab.study.report_tables import BOTH, TABLES

#: torchio's knots among nyul.PERCENTILES (its `range_to_use`): the quartiles 25 and 75 are
#: landmarks but not knots of the map.
KNOTS = (0, 1, 2, 4, 5, 6, 7, 8, 10, 11, 12)
#: torchio's epsilon: a segment of the source landmarks narrower than this maps flat.
FLAT = 1e-5
COLOURS = {"cds": "#4c72b0", "fedavg": "#dd8452", "equal-vote": "#55a868",
           "tempered": "#c44e52"}


@dataclass(frozen=True)
class FigureResult:
    path: Path | None  # None: not drawn, `note` says why
    title: str
    note: str


# -- the harmonisation map, on aggregates -------------------------------------------------
def nyul_map(values: np.ndarray, source: Sequence[float], reference: Sequence[float]
             ) -> np.ndarray:
    """torchio's piecewise-linear Nyul map of `values` from `source` landmarks (one image's,
    or here a centre's mean) to `reference` landmarks: linear between knots, extended past
    the end knots with the end segments' slopes; a flat source segment maps to slope 0."""
    src = np.asarray(source, dtype=np.float64)[list(KNOTS)]
    ref = np.asarray(reference, dtype=np.float64)[list(KNOTS)]
    d_src = np.diff(src)
    d_src = np.where(d_src < FLAT, np.inf, d_src)
    slope = np.diff(ref) / d_src
    intercept = ref[:-1] - slope * src[:-1]
    values = np.asarray(values, dtype=np.float64)
    segment = np.digitize(values, src[1:-1], right=False)
    return slope[segment] * values + intercept[segment]


def harmonised_histogram(histogram: Sequence[float], bin_edges: Sequence[float],
                         source: Sequence[float], reference: Sequence[float]) -> np.ndarray:
    """The 'after' histogram on the same bins: each bin's mass spread evenly over the
    interval its edges map to (the map is monotone); mass mapped outside the bins is
    dropped, as the sites' histograms drop values outside them."""
    edges = np.asarray(bin_edges, dtype=np.float64)
    mass = np.asarray(histogram, dtype=np.float64)
    if len(mass) != len(edges) - 1:
        raise ValueError(f"histogram has {len(mass)} bins but bin_edges define "
                         f"{len(edges) - 1}")
    mapped = nyul_map(edges, source, reference)
    lo, hi = np.minimum(mapped[:-1], mapped[1:]), np.maximum(mapped[:-1], mapped[1:])
    width = hi - lo
    overlap = np.clip(np.minimum(hi[:, None], edges[None, 1:])
                      - np.maximum(lo[:, None], edges[None, :-1]), 0.0, None)
    share = overlap / np.where(width > 0, width, 1.0)[:, None]
    point = width <= 0  # a bin mapped onto one value: all its mass in that value's bin
    if point.any():
        at = np.searchsorted(edges, lo[point], side="right") - 1
        rows = np.zeros((int(point.sum()), len(mass)))
        inside = (at >= 0) & (at < len(mass))
        rows[np.flatnonzero(inside), at[inside]] = 1.0
        share[point] = rows
    return mass @ share


# -- helpers --------------------------------------------------------------------------------
def new_figure(panels: int, width: float = 4.0, height: float = 3.2, cols: int | None = None):
    from matplotlib.figure import Figure

    cols = cols or min(panels, 3)
    rows = -(-panels // cols)
    fig = Figure(figsize=(width * cols, height * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[panels:]:
        ax.set_visible(False)
    return fig, axes[:panels]


def save(fig, path: Path, dpi: int) -> Path:
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    return path


def main_configs(study: StudyResults, protocol: str) -> list[Config]:
    """One set-up's configurations, every framework: per-structure prior, no augmentation,
    both phases where the study has them, else the set-up most frameworks share."""
    groups: dict[tuple, list[Config]] = {}
    for c in study.configs:
        if c.protocol == protocol:
            groups.setdefault((c.prior, c.augment, tuple(c.phases)), []).append(c)
    if not groups:
        return []
    preferred = ("structures", "none", BOTH)
    key = preferred if preferred in groups else max(groups, key=lambda k: (len(groups[k]), k))
    return groups[key]


def site_label(study: StudyResults, site: str) -> str:
    for entry in study.meta.get("sites") or []:
        if entry.get("name") == site and len(entry.get("centres") or []) == 1:
            return entry["centres"][0]
    return site


# -- figure 7 -------------------------------------------------------------------------------
def auc_by_setup(study: StudyResults, out: Path) -> FigureResult:
    title = "AUC per set-up and framework (the paper's figure 7)"
    panels = [(spec, spec.configs(study)) for spec in TABLES]
    panels = [(spec, present) for spec, present in panels if present]
    if not panels:
        return FigureResult(None, title, "absent: no cell of Tables 2-4")
    fig, axes = new_figure(len(panels), width=5.0, height=3.6)
    for ax, (spec, present) in zip(axes, panels, strict=True):
        values = [v for v in spec.values if any(v == p for p, _ in present)]
        frameworks = [(c.framework, c.vote_alpha, c.label) for _, c in present]
        frameworks = list(dict.fromkeys(frameworks))
        width = 0.8 / len(frameworks)
        for j, (framework, alpha, label) in enumerate(frameworks):
            for i, value in enumerate(values):
                config = next((c for v, c in present if v == value and c.framework == framework
                               and c.vote_alpha == alpha), None)
                if config is None or config.summary().mean is None:
                    continue
                s, x = config.summary(), i + (j - (len(frameworks) - 1) / 2) * width
                ax.bar(x, s.mean, width * 0.9, yerr=s.std or 0.0, capsize=3,
                       color=COLOURS.get(framework, "#888"), label=label if i == 0 else None)
                seeds = [v for v in s.per_seed.values() if v is not None]
                ax.plot([x] * len(seeds), seeds, "k.", ms=3)
                paper = paper_reference.published(framework, config.prior, config.augment,
                                                  config.protocol, tuple(config.phases))
                if paper is not None:
                    ax.plot(x, paper.mean, "kx", ms=7,
                            label="paper (its real data)" if i == 0 and j == 0 else None)
        ax.set_xticks(range(len(values)), values, fontsize=8)
        ax.set_ylim(0.0, 1.2)
        ax.set_yticks(np.linspace(0, 1, 6))
        ax.axhline(0.5, color="#999", lw=0.8, ls=":")
        ax.set_title(f"{spec.name}: {spec.protocol.upper()}, by {spec.vary}", fontsize=10)
        ax.set_ylabel("total AUC")
        ax.legend(fontsize=7, loc="upper center", ncol=4, handletextpad=0.3,
                  columnspacing=0.8)
    path = save(fig, out / "auc_by_setup.png", study.settings.dpi)
    return FigureResult(path, title, "Bars: ours (this run's data), mean total AUC over "
                        "seeds; error bars: std over seeds; dots: each seed; x: the paper's "
                        "published total (its real data) where the configuration matches.")


# -- ROC ------------------------------------------------------------------------------------
def roc_curves(study: StudyResults, out: Path, protocol: str) -> FigureResult:
    from sklearn.metrics import roc_auc_score, roc_curve

    title = f"ROC curves per centre ({protocol.upper()})"
    configs = main_configs(study, protocol)
    if not configs:
        return FigureResult(None, title, f"absent: no {protocol.upper()} cell")
    centres = sorted({c for config in configs for c in config.test_centres}) + [TOTAL]
    fig, axes = new_figure(len(centres), width=3.4, height=3.2)
    for ax, centre in zip(axes, centres, strict=True):
        for config in configs:
            rows = [r for seed in config.seeds for r in config.rows[seed]
                    if centre in (TOTAL, r["centre"])]
            labels = np.array([r["label"] for r in rows])
            if len(set(labels.tolist())) < 2:
                continue
            scores = np.array([r["score"] for r in rows])
            fpr, tpr, _ = roc_curve(labels, scores)
            ax.plot(fpr, tpr, color=COLOURS.get(config.framework, "#888"),
                    label=f"{config.label} ({roc_auc_score(labels, scores):.2f})")
        ax.plot([0, 1], [0, 1], color="#999", lw=0.8, ls=":")
        ax.set_title(centre, fontsize=10)
        ax.set_xlabel("1 − specificity", fontsize=8)
        ax.set_ylabel("sensitivity", fontsize=8)
        ax.legend(fontsize=7, loc="lower right")
    path = save(fig, out / f"roc_{protocol}.png", study.settings.dpi)
    c = configs[0]
    return FigureResult(path, title, f"Set-up {c.prior} prior, {c.augment} augmentation, "
                        f"phases {'+'.join(c.phases)}; each framework's test frames of every "
                        "seed pooled (seed-pooled ROC; in brackets the AUC of the pooled "
                        "frames, which differs from the tables' mean over seeds).")


# -- figure 5 -------------------------------------------------------------------------------
def harmonisation_source(study: StudyResults) -> tuple[Cell, int, dict, str] | None:
    """The fold record with the most sites: FL first (its summary.json holds what the
    sites released), CCV before LCO, the main set-up first; else a CDS harmonisation.json."""
    order = main_configs(study, "ccv") + [c for c in study.configs if c.protocol == "ccv"] \
        + study.configs
    order = sorted(dict.fromkeys(order), key=lambda c: c.framework == "cds")
    best = None
    for config in order:
        name = CDS_HARMONISATION if config.framework == "cds" else FL_SUMMARY
        for seed in config.seeds:
            for cell in config.cells_of(seed):
                for fold in cell.spec["folds"]:
                    path = cell.run / f"fold_{fold}" / name
                    if not path.exists():
                        continue
                    record = json.loads(path.read_text())
                    if record.get("site_summaries") and record.get("reference_landmarks") and (
                            best is None or len(record["site_summaries"])
                            > len(best[2]["site_summaries"])):
                        best = (cell, fold, record, name)
        if best is not None and config.framework != "cds":
            return best
    return best


def harmonisation(study: StudyResults, out: Path) -> FigureResult:
    title = "Intensity histograms before and after harmonisation (the paper's figure 5)"
    found = harmonisation_source(study)
    if found is None:
        return FigureResult(None, title, "absent: no finished cell recorded the sites' "
                            "histogram summaries (fold_K/summary.json site_summaries, or "
                            "fold_K/harmonisation.json for CDS)")
    cell, fold, record, name = found
    edges = np.asarray(record["bin_edges"])
    centres = 0.5 * (edges[:-1] + edges[1:])
    reference = record["reference_landmarks"]
    sites = record["site_summaries"]
    fig, axes = new_figure(len(sites), width=3.6, height=2.8, cols=min(len(sites), 4))
    for ax, (site, entry) in zip(axes, sorted(sites.items()), strict=True):
        before = np.asarray(entry["histogram"]) / entry["n_images"]
        after = harmonised_histogram(before, edges, entry["landmarks"], reference)
        ax.step(centres, before, where="mid", label="before", color="#4c72b0")
        ax.step(centres, after, where="mid", label="after", color="#dd8452")
        if record.get("reference_histogram"):
            ax.plot(centres, record["reference_histogram"], color="#555", lw=0.9, ls="--",
                    label="reference (all training sites)")
        ax.set_title(f"{site_label(study, site)} ({entry['n_subjects']} subjects)",
                     fontsize=10)
        ax.set_xlabel("intensity (p1 → 0, p99 → 100 per image)", fontsize=8)
        ax.legend(fontsize=7)
    path = save(fig, out / "harmonisation.png", study.settings.dpi)
    source = ("the sites' released summaries (FL)" if name == FL_SUMMARY
              else "per-centre summaries of the pooled training frames (CDS)")
    return FigureResult(path, title, f"From {source}: cell `{cell.key}`, fold {fold}, "
                        f"{cell.spec['prior']} prior. Before: the centre's mean image "
                        "histogram on the standard scale (p1 → 0, p99 → 100 per image); after: "
                        "that histogram through the piecewise-linear Nyul map from the "
                        "centre's mean landmarks to the reference landmarks, the map applied "
                        "to each image with its own landmarks, here applied to the aggregate "
                        "(an approximation of the per-image mapping).")

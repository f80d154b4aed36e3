"""The demo's one table: each model's test AUC per centre and in total, with a 95% interval
by bootstrap over subjects (stratified by label, as the study report's: lab/study/stats.py),
from the predictions each federated run gathered. On the demo's small test split (a few
subjects per centre) the intervals are wide, and the table says how wide."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from fedcmr.common.metrics import auc
from fedcmr.common.results import read_predictions
from fedcmr.lab.study.stats import N_BOOT, bootstrap_auc_ci

TOTAL = "total"


#: Subjects each class needs for an interval: with one, every resample draws the same.
MIN_SUBJECTS_PER_CLASS = 2


def auc_with_interval(rows: list[dict], n_boot: int = N_BOOT, seed: int = 0
                      ) -> tuple[float, float | None, float | None] | None:
    """(AUC, low, high) of the rows' scores, the interval over subjects (None, None where a
    class has fewer than MIN_SUBJECTS_PER_CLASS subjects); None where the rows hold one
    class only (no AUC)."""
    labels = np.array([r["label"] for r in rows], dtype=int)
    scores = np.array([r["score"] for r in rows], dtype=float)
    point = auc(labels, scores)
    if point is None:
        return None
    subjects = np.array([f"{r['centre']}/{r['subject']}" for r in rows])
    per_class = [len(set(subjects[labels == c].tolist())) for c in (0, 1)]
    if min(per_class) < MIN_SUBJECTS_PER_CLASS:
        return point, None, None
    low, high = bootstrap_auc_ci(labels, scores, subjects, n_boot=n_boot, seed=seed)
    return point, low, high


def _cell(found: tuple[float, float | None, float | None] | None) -> str:
    if found is None:
        return "n/a (one class)"
    point, low, high = found
    return f"{point:.3f} (n/a)" if low is None else f"{point:.3f} ({low:.2f}-{high:.2f})"


def interval_table(runs: Mapping[str, Path], n_boot: int = N_BOOT) -> str:
    """One row per centre (and the total), one column per model (`runs`: name -> the run
    folder holding predictions.csv)."""
    predictions = {name: read_predictions(folder / "predictions.csv")
                   for name, folder in runs.items()}
    first = next(iter(predictions.values()))
    centres = sorted({r["centre"] for r in first})
    head = f"{'centre':<18} {'frames':>6} {'HCM':>4} {'NOR':>4}"
    lines = [head + "".join(f"  {name:<22}" for name in runs)]
    for centre in [*centres, TOTAL]:
        picked = {name: [r for r in rows if centre in (TOTAL, r["centre"])]
                  for name, rows in predictions.items()}
        base = picked[next(iter(picked))]
        hcm = sum(r["label"] for r in base)
        cells = [_cell(auc_with_interval(rows, n_boot)) for rows in picked.values()]
        lines.append(f"{centre:<18} {len(base):>6} {hcm:>4} {len(base) - hcm:>4}"
                     + "".join(f"  {cell:<22}" for cell in cells))
    lines.append(f"test AUC, 95% interval by bootstrap over subjects ({n_boot} resamples; "
                 "n/a: a class with one subject); few subjects per centre make them wide")
    return "\n".join(lines)

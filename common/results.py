"""Run outputs shared by the centralised baseline and the federation: predictions.csv and
metrics.json (AUC over the pooled test predictions of all folds, frame-level as in the paper).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fedcmr.common.atomic import write_csv
from fedcmr.common.metrics import auc

if TYPE_CHECKING:
    from fedcmr.common.learning.data import CachedFrame

#: A run folder's per-frame test scores (both frameworks).
PREDICTIONS_CSV = "predictions.csv"
PREDICTION_COLUMNS = ("subject", "centre", "phase", "fold", "label", "score")


def prediction_rows(frames: Sequence[CachedFrame], scores: Sequence[float], fold: int
                    ) -> list[dict]:
    """One predictions.csv row per scored frame (P(HCM) in `score`)."""
    return [{"subject": f.subject, "centre": f.entry.centre, "phase": f.entry.phase,
             "fold": fold, "label": f.entry.label, "score": float(s)}
            for f, s in zip(frames, scores, strict=True)]


def write_predictions(path: Path, rows: Sequence[dict]) -> None:
    write_csv(path, PREDICTION_COLUMNS,
              sorted(rows, key=lambda r: (r["fold"], r["centre"], r["subject"], r["phase"])))


def read_predictions(path: Path) -> list[dict]:
    with path.open(newline="") as handle:
        return [{**r, "fold": int(r["fold"]), "label": int(r["label"]),
                 "score": float(r["score"])} for r in csv.DictReader(handle)]


def metrics_from_predictions(rows: Sequence[dict]) -> dict:
    """{"auc": {"total": .., "<centre>": ..}, "n": {...}}; an undefined AUC is null."""
    centres = sorted({r["centre"] for r in rows})
    out: dict = {"auc": {}, "n": {}}
    for name, subset in [("total", rows)] + [(c, [r for r in rows if r["centre"] == c])
                                             for c in centres]:
        labels = np.array([r["label"] for r in subset])
        scores = np.array([r["score"] for r in subset])
        out["auc"][name] = auc(labels, scores) if len(subset) else None
        out["n"][name] = {"frames": len(subset), "HCM": int((labels == 1).sum()),
                          "NOR": int((labels == 0).sum())}
    return out


def auc_table(metrics: dict) -> str:
    """The per-centre AUC table the console prints."""
    lines = [f"{'centre':<18} {'AUC':>6} {'frames':>7} {'HCM':>5} {'NOR':>5}"]
    for name, value in metrics["auc"].items():
        n = metrics["n"][name]
        shown = "  n/a" if value is None else f"{value:6.3f}"
        lines.append(f"{name:<18} {shown:>6} {n['frames']:>7} {n['HCM']:>5} {n['NOR']:>5}")
    if privacy := metrics.get("privacy"):
        lines.append(f"differential privacy: epsilon {privacy['epsilon']} at delta "
                     f"{privacy['delta']:g} ({privacy['releases_total']} noisy rounds, "
                     f"clip {privacy['dp_clip']:g}, noise multiplier "
                     f"{privacy['noise_multiplier']:g})")
    return "\n".join(lines)

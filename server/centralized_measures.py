"""The centralised baseline of the measures model: the pooled training subjects' clinical
measures, standardised and fitted exactly (common/learning/measures_model.fit_central), on
the same splits as every other run, with the same fold outputs (history.csv, predictions
rows) and the fold's model bundle (common/bundle.py, model "measures")."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from fedcmr.common.atomic import atomic_path, write_csv
from fedcmr.common.bundle import (
    BUNDLE_DIR,
    Metrics,
    Preprocessing,
    SplitMetric,
    measures_metadata,
    write_bundle,
)
from fedcmr.common.learning import measures_model as mm
from fedcmr.common.learning.data import CachedFrame
from fedcmr.common.learning.split import split_frames
from fedcmr.common.measures import SubjectMeasures
from fedcmr.common.metrics import auc
from fedcmr.common.results import prediction_rows
from fedcmr.common.run_config import RunConfig


def train_measures_fold(frames: Sequence[CachedFrame], config: RunConfig, fold: int,
                        fold_dir: Path, measures: Mapping[str, SubjectMeasures],
                        preprocessing: Preprocessing | None = None
                        ) -> tuple[list[dict], dict]:
    """(test prediction rows, {"val_auc", "val_loss", "state"}) of one fold; writes
    fold_dir/best_model.pt, history.csv and the bundle (fold_dir/bundle)."""
    parts = split_frames(frames, config, fold)
    if not parts["train"] or not parts["test"]:
        raise ValueError(f"fold {fold}: empty train or test split; the cohort is too small")
    _, x, y = mm.subject_table(parts["train"], measures)
    if len(set(y.tolist())) < 2:
        raise ValueError(f"fold {fold}: the training subjects are all of one class")
    state = mm.fit_central(x, y)
    with atomic_path(fold_dir / "best_model.pt") as tmp:
        torch.save(state, tmp)
    val_labels, val_scores, val_loss = mm.frame_scores(parts["val"], measures, state)
    val_auc = auc(val_labels, val_scores) if len(val_labels) else None
    write_csv(fold_dir / "history.csv", ["epoch", "train_loss", "val_loss", "val_auc", "best"],
              [{"epoch": 0, "train_loss": mm.loss(state, x, y),
                "val_loss": val_loss, "val_auc": val_auc, "best": True}])
    test_labels, test_scores, _ = mm.frame_scores(parts["test"], measures, state)
    metrics = Metrics(validation=SplitMetric(auc=val_auc, n=len(val_labels)),
                      test=SplitMetric(auc=auc(test_labels, test_scores) if len(test_labels)
                                       else None, n=len(test_labels)))
    write_bundle(fold_dir / BUNDLE_DIR, measures_metadata(config, fold, "cds", preprocessing,
                                                          metrics), fold_dir / "best_model.pt")
    return (prediction_rows(parts["test"], test_scores, fold),
            {"val_auc": val_auc, "val_loss": val_loss, "state": state})

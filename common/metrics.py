"""Metrics as plain functions of arrays, and the binned form the federation may release."""

from __future__ import annotations

import numpy as np

#: Score bins for the federated AUC: per-class counts in these bins leave the site, never
#: a per-subject score. 1000 bins bound the AUC error by the ties they create.
AUC_BINS = 1000


def auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """ROC AUC; None when only one class is present (undefined)."""
    from sklearn.metrics import roc_auc_score  # 1.5 s to import; a ClientApp never needs it

    labels = np.asarray(labels)
    if len(np.unique(labels)) < 2:
        return None
    return float(roc_auc_score(labels, scores))


def binned_counts(labels: np.ndarray, scores: np.ndarray, bins: int = AUC_BINS
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Per-class histograms of scores in [0, 1]: (negatives, positives)."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    labels = np.asarray(labels).astype(int)
    scores = np.clip(np.asarray(scores, dtype=float), 0.0, 1.0)
    neg, _ = np.histogram(scores[labels == 0], edges)
    pos, _ = np.histogram(scores[labels == 1], edges)
    return neg.astype(np.int64), pos.astype(np.int64)


def auc_from_counts(neg: np.ndarray, pos: np.ndarray) -> float | None:
    """AUC from per-class binned counts (ties within a bin count one half)."""
    neg, pos = np.asarray(neg, float), np.asarray(pos, float)
    n_neg, n_pos = neg.sum(), pos.sum()
    if n_neg == 0 or n_pos == 0:
        return None
    below = np.cumsum(neg) - neg  # negatives in strictly lower bins
    return float((pos * (below + 0.5 * neg)).sum() / (n_neg * n_pos))

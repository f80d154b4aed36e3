"""AUC: sklearn over frames, and the binned form the federation releases."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score

from fedcmr.common.metrics import auc, auc_from_counts, binned_counts
from fedcmr.common.results import metrics_from_predictions


def test_binned_auc_matches_sklearn_within_1e3():
    rng = np.random.default_rng(0)
    for trial in range(20):
        n = int(rng.integers(10, 400))
        labels = rng.integers(0, 2, n)
        scores = np.clip(rng.normal(0.5 + 0.2 * (labels - 0.5) * trial / 10, 0.2), 0, 1)
        exact = roc_auc_score(labels, scores)
        neg, pos = binned_counts(labels, scores)
        assert abs(auc_from_counts(neg, pos) - exact) < 1e-3


def test_binned_counts_add_up_across_sites():
    rng = np.random.default_rng(1)
    labels, scores = rng.integers(0, 2, 300), rng.random(300)
    parts = [binned_counts(labels[s], scores[s]) for s in (slice(0, 100), slice(100, 300))]
    neg = parts[0][0] + parts[1][0]
    pos = parts[0][1] + parts[1][1]
    assert abs(auc_from_counts(neg, pos) - roc_auc_score(labels, scores)) < 1e-3


def test_auc_is_undefined_for_one_class():
    assert auc(np.array([1, 1]), np.array([0.2, 0.9])) is None
    assert auc_from_counts(np.zeros(5), np.ones(5)) is None


def test_metrics_per_centre_and_total():
    rows = [{"subject": str(i), "centre": "A" if i < 4 else "B", "phase": "ED", "fold": 0,
             "label": i % 2, "score": (i % 2) * 0.5 + i / 100} for i in range(8)]
    m = metrics_from_predictions(rows)
    assert m["auc"]["total"] == 1.0 and set(m["auc"]) == {"total", "A", "B"}
    assert m["n"]["A"] == {"frames": 4, "HCM": 2, "NOR": 2}

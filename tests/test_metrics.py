"""AUC: sklearn over frames, and the binned form the federation releases (logit bins: exact
to 1e-3 on saturated scores too)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.special import expit
from sklearn.metrics import roc_auc_score
from torch import nn

from fedcmr.common.device import placement
from fedcmr.common.learning.training import score
from fedcmr.common.metrics import (
    AUC_BINS,
    LOGIT_LIMIT,
    auc,
    auc_error_bound,
    auc_from_counts,
    binned_counts,
    logit_edges,
)
from fedcmr.common.results import metrics_from_predictions


def saturated(seed: int, mu: float, n: int = 360, sd: float = 10.0):
    """Labels and scores of a confident model: fp32 logits ~ N(+-mu, sd), P(HCM) by a
    float64 sigmoid as `score` computes it."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    logits = rng.normal(np.where(labels == 1, mu, -mu), sd).astype(np.float32)
    return labels, expit(logits.astype(np.float64))


def test_binned_auc_matches_sklearn_within_1e3():
    rng = np.random.default_rng(0)
    for trial in range(20):
        n = int(rng.integers(10, 400))
        labels = rng.integers(0, 2, n)
        scores = np.clip(rng.normal(0.5 + 0.2 * (labels - 0.5) * trial / 10, 0.2), 0, 1)
        exact = roc_auc_score(labels, scores)
        neg, pos = binned_counts(labels, scores)
        assert abs(auc_from_counts(neg, pos) - exact) < 1e-3


@pytest.mark.parametrize("mu", [0.5, 2.0, 5.0, 15.0])
def test_binned_auc_matches_sklearn_on_saturated_scores(mu):
    for seed in range(6):
        labels, scores = saturated(seed, mu)
        # saturated indeed: 40% or more lie within 1e-3 of 0 or 1 (where probability bins
        # of width 1e-3 lump them together)
        assert np.mean((scores < 1e-3) | (scores > 1 - 1e-3)) > 0.4
        exact = roc_auc_score(labels, scores)
        neg, pos = binned_counts(labels, scores)
        binned = auc_from_counts(neg, pos)
        assert abs(binned - exact) < 1e-3, (mu, seed, binned, exact)
        assert abs(binned - exact) <= auc_error_bound(neg, pos) + 1e-12
        assert auc_error_bound(neg, pos) < 1e-3


def test_exact_zeros_and_ones_stay_ties_as_sklearn_sees_them():
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 2, 360)
    group = rng.integers(0, 3, 360)  # 0: exactly 0.0, 1: exactly 1.0, 2: in between
    scores = np.where(group == 0, 0.0, np.where(group == 1, 1.0, rng.random(360)))
    scores = np.where(group == 2, np.clip(scores + 0.3 * labels, 0, 1), scores)
    neg, pos = binned_counts(labels, scores)
    assert len(neg) == len(pos) == AUC_BINS + 2
    # the open-ended bins hold exactly the 0.0 and 1.0 scores of each class
    for counts, cls in ((neg, 0), (pos, 1)):
        assert counts[0] == np.sum((scores == 0.0) & (labels == cls))
        assert counts[-1] == np.sum((scores == 1.0) & (labels == cls))
    assert abs(auc_from_counts(neg, pos) - roc_auc_score(labels, scores)) < 1e-3
    # fp32 sigmoids saturate: scores equal to 1.0 and ties, as sklearn sees them
    labels, scores64 = saturated(3, 5.0)
    scores32 = torch.sigmoid(torch.from_numpy(scores64).logit().float()).double().numpy()
    assert np.mean(scores32 == 1.0) > 0.05
    neg, pos = binned_counts(labels, scores32)
    assert abs(auc_from_counts(neg, pos) - roc_auc_score(labels, scores32)) < 1e-3


def test_the_error_bound_holds_where_bins_are_coarse():
    rng = np.random.default_rng(2)
    for _ in range(20):
        labels = rng.integers(0, 2, 200)
        scores = expit(rng.normal(labels, 1.5))
        neg, pos = binned_counts(labels, scores, bins=40)  # bins 2 logit units wide
        error = abs(auc_from_counts(neg, pos) - roc_auc_score(labels, scores))
        assert error <= auc_error_bound(neg, pos) + 1e-12
        assert auc_error_bound(neg, pos) > 1e-2  # coarse bins: a bound that matters


def test_binned_counts_add_up_across_sites():
    rng = np.random.default_rng(1)
    labels, scores = rng.integers(0, 2, 300), rng.random(300)
    parts = [binned_counts(labels[s], scores[s]) for s in (slice(0, 100), slice(100, 300))]
    neg = parts[0][0] + parts[1][0]
    pos = parts[0][1] + parts[1][1]
    assert abs(auc_from_counts(neg, pos) - roc_auc_score(labels, scores)) < 1e-3


def test_saturated_counts_add_up_across_sites_to_the_pooled_counts():
    labels, scores = saturated(11, 3.0)
    sites = (slice(0, 40), slice(40, 190), slice(190, 360))
    parts = [binned_counts(labels[s], scores[s]) for s in sites]
    neg, pos = sum(p[0] for p in parts), sum(p[1] for p in parts)
    whole = binned_counts(labels, scores)
    assert np.array_equal(neg, whole[0]) and np.array_equal(pos, whole[1])
    assert abs(auc_from_counts(neg, pos) - roc_auc_score(labels, scores)) < 1e-3


def test_nan_scores_are_left_out_and_bins_must_be_positive():
    neg, pos = binned_counts(np.array([0, 1, 1]), np.array([0.2, np.nan, 0.9]))
    assert neg.sum() == 1 and pos.sum() == 1
    with pytest.raises(ValueError, match="bins=0"):
        binned_counts(np.array([0, 1]), np.array([0.2, 0.9]), bins=0)


def test_scores_are_float64_and_unsaturated_up_to_logits_of_30():
    """`score` takes the sigmoid in float64: logits of +-20 and +-30 keep their order (an
    fp32 sigmoid gives 1.0 from 17 up)."""
    model = nn.Linear(1, 1)
    with torch.no_grad():
        model.weight.fill_(1.0)
        model.bias.zero_()
    logits = [-30.0, -20.0, 0.0, 20.0, 25.0, 30.0]
    data = [(torch.tensor([z]), torch.tensor(float(z > 0))) for z in logits]
    out = score(model, data, placement("cpu"), batch_size=4)
    assert out.scores.dtype == np.float64
    assert np.all(np.diff(out.scores) > 0) and out.scores[-1] < 1.0
    assert out.labels.tolist() == [0, 0, 0, 1, 1, 1] and out.auc == 1.0


def test_auc_is_undefined_for_one_class():
    assert auc(np.array([1, 1]), np.array([0.2, 0.9])) is None
    assert auc_from_counts(np.zeros(5), np.ones(5)) is None
    assert auc_error_bound(np.zeros(5), np.ones(5)) is None


def test_metrics_per_centre_and_total():
    rows = [{"subject": str(i), "centre": "A" if i < 4 else "B", "phase": "ED", "fold": 0,
             "label": i % 2, "score": (i % 2) * 0.5 + i / 100} for i in range(8)]
    m = metrics_from_predictions(rows)
    assert m["auc"]["total"] == 1.0 and set(m["auc"]) == {"total", "A", "B"}
    assert m["n"]["A"] == {"frames": 4, "HCM": 2, "NOR": 2}


def test_any_bin_count_gives_edges_one_more_than_the_bins():
    for bins in (1, 2, 3, 7, AUC_BINS):
        edges = logit_edges(bins)
        assert len(edges) == bins + 1 and edges[0] == -LOGIT_LIMIT and edges[-1] == LOGIT_LIMIT
    with pytest.raises(ValueError, match="at least 1"):
        logit_edges(0)


def test_one_positive_or_one_negative_still_has_an_auc():
    neg, pos = binned_counts(np.array([0, 0, 1]), np.array([0.2, 0.7, 0.5]))
    assert auc_from_counts(neg, pos) == pytest.approx(0.5)
    neg, pos = binned_counts(np.array([1, 1, 0]), np.array([0.2, 0.7, 0.5]))
    assert auc_from_counts(neg, pos) == pytest.approx(0.5)
    neg, pos = binned_counts(np.array([1, 1]), np.array([0.2, 0.7]))
    assert auc_from_counts(neg, pos) is None

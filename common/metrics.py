"""Metrics as plain functions of arrays, and the binned form the federation may release."""

from __future__ import annotations

import numpy as np

#: The federated AUC's bins: per-class counts of the scores' LOGITS in these bins leave the
#: site, never a per-subject score. Uniform edges of width LOGIT_WIDTH over
#: [-LOGIT_LIMIT, LOGIT_LIMIT], plus an open-ended bin below and one above, the same at every
#: site, so that counts add up across sites.
#:
#: Why logits: a trained classifier's scores pile up near 0 and 1, where uniform bins on
#: P(HCM) put whole classes into one bin; in logit space the same scores are spread out.
#:
#: Why 40: the largest finite logit of a float64 probability below 1 is 36.7 (1 - 2**-53),
#: so the upper open bin holds exactly the scores equal to 1.0, which scikit-learn ties
#: too; likewise P = 0 falls in the lower one (its logit is -inf).
#:
#: Why 0.002: the binned AUC differs from the exact one only by pairs (a negative, a
#: positive) that share a bin, each counted 1/2 instead of 0 or 1, so the error is at most
#: `auc_error_bound` = 1/2 x the share of such pairs ~ 1/2 x width x the integral of the
#: product of the two classes' logit densities <= 1/2 x width x the smaller class's peak
#: density. At 0.002 that bound is under 1e-4 for logits of SD 10 and about 5e-4 for class
#: SDs of 0.8 (a peak density of 0.5 per logit unit); the actual error is smaller still,
#: since pairs in a bin fall either way (benchmarks/results/release_auc_cost.json: 200
#: draws of 360 frames from tests/test_metrics.py's distributions, at most 5e-5 at SD 10
#: and 2.2e-4 at SD 1; logits bunched closer, as an untrained model's are, err more, and
#: the bound says so). 40,002 counts per class and split are small beside a reply's 133 MB
#: of weights (benchmarks/results/update_encoding.json).
LOGIT_LIMIT = 40.0
LOGIT_WIDTH = 0.002
#: Number of finite bins; the counts have two more (the open-ended ones).
AUC_BINS = round(2 * LOGIT_LIMIT / LOGIT_WIDTH)


def auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """ROC AUC; None when only one class is present (undefined)."""
    from sklearn.metrics import roc_auc_score  # 1.5 s to import; a ClientApp never needs it

    labels = np.asarray(labels)
    if len(np.unique(labels)) < 2:
        return None
    return float(roc_auc_score(labels, scores))


def logit(scores: np.ndarray) -> np.ndarray:
    """log(p / (1 - p)) in float64; p = 0 -> -inf, p = 1 -> +inf (monotone, so ties and
    order are those of the scores)."""
    p = np.clip(np.asarray(scores, dtype=np.float64), 0.0, 1.0)
    with np.errstate(divide="ignore"):
        return np.log(p) - np.log1p(-p)


def logit_edges(bins: int = AUC_BINS) -> np.ndarray:
    """The `bins + 1` finite edges, uniform over [-LOGIT_LIMIT, LOGIT_LIMIT]."""
    if bins < 1:
        raise ValueError(f"binned_counts: bins={bins}; it needs at least 1 (default "
                         f"AUC_BINS = {AUC_BINS})")
    return np.linspace(-LOGIT_LIMIT, LOGIT_LIMIT, bins + 1)


def binned_counts(labels: np.ndarray, scores: np.ndarray, bins: int = AUC_BINS
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Per-class counts of the scores' (P(HCM) in [0, 1]) logits: (negatives, positives),
    `bins + 2` entries each, lowest first: logits below -LOGIT_LIMIT (P = 0 among them),
    `bins` uniform bins, then logits from LOGIT_LIMIT up (P = 1 among them). A NaN score
    is left out (the counts then sum to fewer than the frames)."""
    labels = np.asarray(labels).astype(int)
    z = logit(scores)
    keep = ~np.isnan(z)
    index = np.searchsorted(logit_edges(bins), z[keep], side="right")
    kept = labels[keep]
    neg = np.bincount(index[kept == 0], minlength=bins + 2)
    pos = np.bincount(index[kept == 1], minlength=bins + 2)
    return neg.astype(np.int64), pos.astype(np.int64)


def auc_from_counts(neg: np.ndarray, pos: np.ndarray) -> float | None:
    """AUC from per-class binned counts (ties within a bin count one half)."""
    neg, pos = np.asarray(neg, float), np.asarray(pos, float)
    n_neg, n_pos = neg.sum(), pos.sum()
    if n_neg == 0 or n_pos == 0:
        return None
    below = np.cumsum(neg) - neg  # negatives in strictly lower bins
    return float((pos * (below + 0.5 * neg)).sum() / (n_neg * n_pos))


def auc_error_bound(neg: np.ndarray, pos: np.ndarray) -> float | None:
    """The most `auc_from_counts` can differ from the AUC of the scores behind the counts:
    half the share of (negative, positive) pairs that share a bin."""
    neg, pos = np.asarray(neg, float), np.asarray(pos, float)
    n_neg, n_pos = neg.sum(), pos.sum()
    if n_neg == 0 or n_pos == 0:
        return None
    return float(0.5 * (neg * pos).sum() / (n_neg * n_pos))


def auc_text(value: float | None) -> str:
    """An AUC as a log line shows it: three decimals, "n/a" where it is undefined."""
    return "n/a" if value is None else f"{value:.3f}"

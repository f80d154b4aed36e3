"""Uncertainty of the study's AUCs, as plain functions of numpy arrays (in the manner of
scikit-learn's metrics): bootstrap confidence intervals over SUBJECTS, a paired bootstrap
comparison of two frameworks scored on the same test frames, and DeLong's test as a
cross-check.

Why subjects: a subject's ED and ES frames are two looks at one heart, so their scores are
correlated; resampling frames as if independent would make the intervals too narrow.
Resampling is stratified by label (a subject's frames share its label): each class's
subjects are drawn with replacement separately, so every resample holds both classes.

A resample is held as weights rather than copied arrays: a subject drawn k times weighs k,
on each of its frames, and the AUC with integer weights is the AUC of the frames repeated
that often (ties counted one half, as scikit-learn does). All resamples are then one
vectorised pass per score vector: 2000 resamples of 400 frames take ~0.1 s.

`scores` may be 1-D (frames) or 2-D (seeds x frames, one row per network seed, the same
frame order): the statistic is then the mean over seeds of the per-seed AUC.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import norm, rankdata

#: Bootstrap resamples and confidence level by default.
N_BOOT = 2000
LEVEL = 0.95
#: Resamples x frames held in memory at once (float64 weights).
_CHUNK_CELLS = 2_000_000


@dataclass(frozen=True)
class PairedTest:
    """Framework A against B on the same test frames: AUC_a - AUC_b (mean over seeds where
    2-D), its bootstrap CI, the two-sided p-value of "no difference"."""

    diff: float
    ci_low: float
    ci_high: float
    p_value: float
    n_subjects: int
    method: str = "paired bootstrap over subjects"


# -- AUC ------------------------------------------------------------------------------------
def rank_auc(labels: np.ndarray, scores: np.ndarray) -> float | np.ndarray:
    """ROC AUC by midranks (Mann-Whitney U / (n_pos n_neg); ties count one half), per row
    of `scores` where 2-D. Equals scikit-learn's roc_auc_score."""
    y = _labels(labels)
    _both_classes(y)
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim not in (1, 2) or s.shape[-1] != len(y):
        raise ValueError(f"scores: shape {s.shape} for {len(y)} labels. Fix: 1-D (frames) or "
                         "2-D (seeds x frames), in the labels' frame order")
    pos = y == 1
    m, n = int(pos.sum()), int((~pos).sum())
    ranks = rankdata(s, axis=-1)
    out = (ranks[..., pos].sum(axis=-1) - m * (m + 1) / 2) / (m * n)
    return float(out) if out.ndim == 0 else out


def weighted_auc(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUC of `scores` (1-D, frames) under each row of frame `weights` (resamples x
    frames): with integer weights, the AUC of each frame repeated that often. NaN for a row
    that leaves a class without weight."""
    y, s = _labels(labels), np.asarray(scores, dtype=np.float64)
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    order = np.argsort(s, kind="stable")
    ordered = s[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])  # groups of ties
    positive = y[order] == 1
    w = w[:, order]
    pos = np.add.reduceat(np.where(positive, w, 0.0), starts, axis=1)
    neg = np.add.reduceat(np.where(positive, 0.0, w), starts, axis=1)
    below = np.cumsum(neg, axis=1) - neg  # negative weight strictly below each group
    pairs = pos.sum(axis=1) * neg.sum(axis=1)
    ordered_pairs = (pos * (below + 0.5 * neg)).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pairs > 0, ordered_pairs / pairs, np.nan)


def mean_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """The AUC of 1-D scores, or the mean over seeds of the per-seed AUC of 2-D ones."""
    labels, scores = _labels(labels), _scores(scores, len(labels), "scores")
    _both_classes(labels)
    return float(np.mean(rank_auc(labels, scores)))


# -- resampling -----------------------------------------------------------------------------
def subject_draws(labels: np.ndarray, subjects: np.ndarray, n_boot: int = N_BOOT,
                  seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Stratified bootstrap over subjects: (counts, frame_subject). `counts[b, k]` is how
    often resample b draws subject k (each class's subjects drawn with replacement, as many
    as it has); `frame_subject[i]` is frame i's subject index, so `counts[:, frame_subject]`
    are the frame weights, equal on all of a subject's frames."""
    y = _labels(labels)
    ids, frame_subject = np.unique(np.asarray(subjects), return_inverse=True)
    if len(frame_subject) != len(y):
        raise ValueError(f"subjects: {len(frame_subject)} entries for {len(y)} labels. Fix: "
                         "give one subject id per frame, in the frames' order")
    subject_label = np.zeros(len(ids), dtype=int)
    subject_label[frame_subject] = y
    mixed = np.flatnonzero(np.bincount(frame_subject, weights=y) % np.bincount(frame_subject))
    if len(mixed):
        raise ValueError(f"subjects {ids[mixed][:3].tolist()} have frames of both labels. "
                         "Fix: a subject's frames share its diagnosis; check the subject ids")
    if n_boot < 1:
        raise ValueError(f"n_boot={n_boot}: at least 1 resample. Fix: use e.g. {N_BOOT}")
    rng = np.random.default_rng(seed)
    counts = np.zeros(n_boot * len(ids), dtype=np.int64)
    rows = np.arange(n_boot)[:, None] * len(ids)
    for cls in (0, 1):
        members = np.flatnonzero(subject_label == cls)
        if len(members):
            drawn = members[rng.integers(0, len(members), size=(n_boot, len(members)))]
            counts += np.bincount((rows + drawn).ravel(), minlength=counts.size)
    return counts.reshape(n_boot, len(ids)), frame_subject


def _resampled_aucs(labels: np.ndarray, scores: np.ndarray, counts: np.ndarray,
                    frame_subject: np.ndarray) -> np.ndarray:
    """Mean over seeds (rows of `scores`) of each resample's AUC, NaN where one class only."""
    out = np.empty(len(counts))
    step = max(1, _CHUNK_CELLS // max(1, len(labels)))
    for start in range(0, len(counts), step):
        weights = counts[start:start + step][:, frame_subject]
        out[start:start + step] = np.mean(
            [weighted_auc(labels, row, weights) for row in scores], axis=0)
    return out


def bootstrap_auc_ci(labels: np.ndarray, scores: np.ndarray, subjects: np.ndarray,
                     n_boot: int = N_BOOT, seed: int = 0, level: float = LEVEL
                     ) -> tuple[float, float]:
    """Percentile bootstrap CI of the AUC (mean over seeds where `scores` is 2-D), by
    resampling subjects stratified by label. Resamples with one class only are skipped."""
    labels = _labels(labels)
    scores = _scores(scores, len(labels), "scores")
    _both_classes(labels)
    _level(level)
    counts, frame_subject = subject_draws(labels, subjects, n_boot, seed)
    stats = _resampled_aucs(labels, scores, counts, frame_subject)
    stats = stats[np.isfinite(stats)]
    tail = (1 - level) / 2
    low, high = np.quantile(stats, [tail, 1 - tail])
    return float(low), float(high)


def paired_auc_test(labels: np.ndarray, scores_a: np.ndarray, scores_b: np.ndarray,
                    subjects: np.ndarray, n_boot: int = N_BOOT, seed: int = 0,
                    level: float = LEVEL) -> PairedTest:
    """A against B, both scored on the same frames: each resample draws the same subjects
    for both. p-value: 2 x the smaller share of resampled differences on either side of 0,
    each share (count + 1) / (resamples + 1), so never exactly 0; capped at 1."""
    labels = _labels(labels)
    a = _scores(scores_a, len(labels), "scores_a")
    b = _scores(scores_b, len(labels), "scores_b")
    _both_classes(labels)
    _level(level)
    counts, frame_subject = subject_draws(labels, subjects, n_boot, seed)
    diffs = (_resampled_aucs(labels, a, counts, frame_subject)
             - _resampled_aucs(labels, b, counts, frame_subject))
    diffs = diffs[np.isfinite(diffs)]
    tail = (1 - level) / 2
    low, high = np.quantile(diffs, [tail, 1 - tail])
    side = min((diffs <= 0).sum(), (diffs >= 0).sum())
    p_value = min(1.0, 2 * (side + 1) / (len(diffs) + 1))
    return PairedTest(diff=float(np.mean(rank_auc(labels, a)) - np.mean(rank_auc(labels, b))),
                      ci_low=float(low), ci_high=float(high), p_value=float(p_value),
                      n_subjects=int(counts.shape[1]))


# -- DeLong ---------------------------------------------------------------------------------
def delong_covariance(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUCs of the rows of `scores` (scorers x frames) and their covariance by DeLong et al.
    (1988), computed with the midrank algorithm of Sun & Xu (2014). Frames are taken as
    independent (no subjects)."""
    y = _labels(labels)
    s = np.atleast_2d(_scores(scores, len(y), "scores"))
    _both_classes(y)
    x, z = s[:, y == 1], s[:, y == 0]
    m, n = x.shape[1], z.shape[1]
    rank_x, rank_z = rankdata(x, axis=1), rankdata(z, axis=1)
    rank_all = rankdata(np.concatenate([x, z], axis=1), axis=1)
    aucs = rank_all[:, :m].sum(axis=1) / (m * n) - (m + 1) / (2 * n)
    v_pos = (rank_all[:, :m] - rank_x) / n  # per positive: share of negatives below it
    v_neg = 1 - (rank_all[:, m:] - rank_z) / m  # per negative: share of positives above
    cov = np.atleast_2d(np.cov(v_pos)) / m + np.atleast_2d(np.cov(v_neg)) / n
    return aucs, cov


def delong_test(labels: np.ndarray, scores_a: np.ndarray, scores_b: np.ndarray
                ) -> tuple[float, float]:
    """(AUC_a - AUC_b, two-sided p-value) of DeLong's test for two 1-D scorers of the same
    frames."""
    labels = _labels(labels)
    a, b = (np.asarray(v, dtype=np.float64) for v in (scores_a, scores_b))
    if a.ndim != 1 or b.ndim != 1:
        raise ValueError(f"delong_test: scores of shape {a.shape} and {b.shape}; it takes 1-D "
                         "scores. Fix: compare one seed's scores, or use paired_auc_test")
    aucs, cov = delong_covariance(labels, np.vstack([_scores(a, len(labels), "scores_a"),
                                                     _scores(b, len(labels), "scores_b")]))
    diff = float(aucs[0] - aucs[1])
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    if var <= 1e-15:  # identical rankings: no difference, and no variance to test it by
        return diff, 1.0 if abs(diff) < 1e-12 else 0.0
    return diff, float(2 * norm.sf(abs(diff) / np.sqrt(var)))


# -- input checks ---------------------------------------------------------------------------
def _labels(labels: np.ndarray) -> np.ndarray:
    y = np.asarray(labels)
    if y.ndim != 1 or not np.isin(y, (0, 1)).all():
        raise ValueError("labels: a 1-D array of 0 (NOR) and 1 (HCM) per frame. Fix: pass "
                         "the predictions' label column")
    return y.astype(int)


def _scores(scores: np.ndarray, n_frames: int, name: str) -> np.ndarray:
    """Scores as (seeds x frames), checked."""
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim not in (1, 2) or s.shape[-1] != n_frames:
        raise ValueError(f"{name}: shape {s.shape} for {n_frames} frames. Fix: 1-D (frames) "
                         "or 2-D (seeds x frames), in the labels' frame order")
    if not np.isfinite(s).all():
        raise ValueError(f"{name}: NaN or infinite scores. Fix: drop the failed run's frames "
                         "or rerun it")
    return np.atleast_2d(s)


def _both_classes(labels: np.ndarray) -> None:
    if len(np.unique(labels)) < 2:
        raise ValueError("labels hold one class only: the AUC is undefined. Fix: include "
                         "frames of both HCM and NOR subjects")


def _level(level: float) -> None:
    if not 0 < level < 1:
        raise ValueError(f"level={level}: a confidence level in (0, 1), e.g. {LEVEL}")

"""The study's uncertainty: rank AUC, bootstrap CIs over subjects, the paired comparison of
two frameworks, DeLong's test (lab/study/stats.py)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from fedcmr.lab.study.stats import (
    PairedTest,
    bootstrap_auc_ci,
    delong_covariance,
    delong_test,
    mean_auc,
    paired_auc_test,
    rank_auc,
    subject_draws,
    weighted_auc,
)


def cohort(n_subjects: int, seed: int = 0, effect: float = 1.0, frames: int = 2):
    """Labels, scores, subjects: `frames` frames per subject (ED, ES), whose scores share the
    subject's heart (correlated) plus a little per-frame noise."""
    rng = np.random.default_rng(seed)
    subject_label = np.arange(n_subjects) % 2
    heart = rng.normal(effect * subject_label, 1.0)
    subjects = np.repeat(np.arange(n_subjects), frames)
    labels = subject_label[subjects]
    scores = heart[subjects] + rng.normal(0, 0.3, len(subjects))
    return labels, scores, subjects


def width(ci: tuple[float, float]) -> float:
    return ci[1] - ci[0]


def test_rank_auc_equals_sklearn_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(20):
        labels = rng.integers(0, 2, 150)
        scores = np.round(rng.normal(labels * 0.7, 1.0), 1)  # rounded: many ties
        assert len(np.unique(scores)) < 100
        assert rank_auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    rows = np.round(rng.normal(size=(3, 150)), 1)
    assert rank_auc(labels, rows) == pytest.approx([roc_auc_score(labels, r) for r in rows])


def test_weighted_auc_is_the_auc_of_the_repeated_frames():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 60)
    scores = np.round(rng.normal(labels, 1.0), 1)
    weights = rng.integers(0, 4, size=(10, 60))
    expected = [roc_auc_score(np.repeat(labels, w), np.repeat(scores, w)) for w in weights]
    assert weighted_auc(labels, scores, weights) == pytest.approx(expected, abs=1e-12)
    assert np.isnan(weighted_auc(labels, scores, (labels == 1)[None].astype(int)))[0]


def test_resamples_hold_whole_subjects_and_both_classes():
    labels, _, subjects = cohort(30, frames=3)
    counts, frame_subject = subject_draws(labels, subjects, n_boot=200, seed=0)
    weights = counts[:, frame_subject]
    for sub in np.unique(subjects):  # every frame of a subject weighs the same
        frames = weights[:, subjects == sub]
        assert (frames == frames[:, :1]).all()
    subject_label = np.arange(30) % 2
    for cls in (0, 1):  # stratified: each class keeps its number of subjects
        assert (counts[:, subject_label == cls].sum(axis=1) == 15).all()
    assert (counts == 0).any() and (counts > 1).any()  # drawn with replacement


def test_ci_contains_the_point_auc_and_narrows_with_more_subjects():
    small, large = cohort(40, seed=2), cohort(400, seed=2)
    ci_small, ci_large = bootstrap_auc_ci(*small), bootstrap_auc_ci(*large)
    for (labels, scores, _), ci in ((small, ci_small), (large, ci_large)):
        assert ci[0] < rank_auc(labels, scores) < ci[1]
    assert width(ci_large) < 0.6 * width(ci_small)


def test_ci_over_seeds_is_of_the_mean_auc():
    labels, scores, subjects = cohort(80, seed=3)
    rng = np.random.default_rng(3)
    seeds = scores + rng.normal(0, 0.5, size=(4, len(scores)))
    ci = bootstrap_auc_ci(labels, seeds, subjects)
    point = mean_auc(labels, seeds)
    assert point == pytest.approx(np.mean([roc_auc_score(labels, s) for s in seeds]))
    assert ci[0] < point < ci[1]
    # one seed repeated is that seed: the same draws give the same interval
    assert bootstrap_auc_ci(labels, np.stack([scores] * 3), subjects) == pytest.approx(
        bootstrap_auc_ci(labels, scores, subjects), abs=1e-12)


def test_duplicated_frames_of_a_subject_add_nothing_frames_as_subjects_would():
    labels, scores, subjects = cohort(60, seed=4)
    twice = (np.repeat(labels, 2), np.repeat(scores, 2), np.repeat(subjects, 2))
    by_subject = bootstrap_auc_ci(*twice)
    assert by_subject == pytest.approx(bootstrap_auc_ci(labels, scores, subjects), abs=1e-12)
    by_frame = bootstrap_auc_ci(twice[0], twice[1], np.arange(len(twice[0])))
    assert width(by_frame) < 0.8 * width(by_subject)


def test_results_are_reproducible_for_a_seed():
    data = cohort(50, seed=5)
    assert bootstrap_auc_ci(*data, seed=7) == bootstrap_auc_ci(*data, seed=7)
    assert bootstrap_auc_ci(*data, seed=7) != bootstrap_auc_ci(*data, seed=8)
    other = data[1] + np.random.default_rng(5).normal(0, 1, len(data[1]))
    assert paired_auc_test(data[0], data[1], other, data[2], seed=1) == paired_auc_test(
        data[0], data[1], other, data[2], seed=1)


def test_identical_scores_differ_by_nothing():
    labels, scores, subjects = cohort(40, seed=6)
    result = paired_auc_test(labels, scores, scores, subjects)
    assert isinstance(result, PairedTest) and result.method == "paired bootstrap over subjects"
    assert (result.diff, result.ci_low, result.ci_high, result.p_value) == (0, 0, 0, 1)
    assert result.n_subjects == 40
    assert delong_test(labels, scores, scores) == (0.0, 1.0)


def test_a_clearly_better_scorer_wins_both_tests():
    labels, scores, subjects = cohort(120, seed=7, effect=2.0)
    worse = scores + np.random.default_rng(7).normal(0, 2.0, len(scores))
    result = paired_auc_test(labels, scores, worse, subjects)
    assert result.diff == pytest.approx(roc_auc_score(labels, scores)
                                        - roc_auc_score(labels, worse))
    assert result.diff > 0 and result.ci_low > 0 and result.p_value < 0.01
    assert result.p_value > 0  # the +1 correction
    swapped = paired_auc_test(labels, worse, scores, subjects)
    assert swapped.diff == pytest.approx(-result.diff)
    assert swapped.p_value == result.p_value
    assert delong_test(labels, scores, worse)[1] < 0.01


def test_delong_aucs_and_covariance_match_their_definition():
    rng = np.random.default_rng(8)
    labels = rng.integers(0, 2, 70)
    scores = np.round(rng.normal(labels * [[0.5], [1.0]], 1.0), 1)  # two scorers, ties
    aucs, cov = delong_covariance(labels, scores)
    assert aucs == pytest.approx([roc_auc_score(labels, s) for s in scores], abs=1e-12)
    # DeLong's structural components from their definition, pair by pair
    x, y = scores[:, labels == 1], scores[:, labels == 0]
    psi = (x[:, :, None] > y[:, None, :]) + 0.5 * (x[:, :, None] == y[:, None, :])
    v10, v01 = psi.mean(axis=2), psi.mean(axis=1)
    expected = np.cov(v10) / x.shape[1] + np.cov(v01) / y.shape[1]
    assert cov == pytest.approx(expected, abs=1e-12)


def test_delong_and_the_paired_bootstrap_agree_in_order_of_magnitude():
    """One frame per subject (DeLong takes frames as independent), two scorers with their
    own noise, a difference near its standard error."""
    for seed in (9, 10, 11, 12, 13):
        rng = np.random.default_rng(seed)
        labels = np.arange(200) % 2
        a, b = rng.normal(1.2 * labels, 1.0), rng.normal(0.8 * labels, 1.0)
        diff, p_delong = delong_test(labels, a, b)
        result = paired_auc_test(labels, a, b, np.arange(200))
        assert diff == pytest.approx(result.diff, abs=1e-12)
        assert 2e-3 < p_delong < 0.5  # a p-value the bootstrap's 2000 draws can resolve
        assert abs(np.log10(p_delong) - np.log10(result.p_value)) < 0.5


@pytest.mark.parametrize(("args", "message"), [
    ((np.array([0, 0, 1, 1]), np.arange(4.0), np.array([1, 2, 2, 3])), "both labels"),
    ((np.array([0, 1, 1]), np.arange(4.0), np.arange(4)), "shape"),
    ((np.array([0, 1, 1, 0]), np.arange(4.0), np.arange(3)), "one subject id per frame"),
    ((np.ones(4, int), np.arange(4.0), np.arange(4)), "one class only"),
    ((np.array([0, 1, 2, 0]), np.arange(4.0), np.arange(4)), "0 \\(NOR\\) and 1"),
    ((np.array([0, 1, 1, 0]), np.array([0, 1, np.nan, 0]), np.arange(4)), "NaN"),
])
def test_bad_input_is_named(args, message):
    with pytest.raises(ValueError, match=message):
        bootstrap_auc_ci(*args, n_boot=10)

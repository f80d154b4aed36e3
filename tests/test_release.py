"""What a site does to a result before it leaves (client/site/release.py), checked against
what each step means: counts coarsened to the policy's bins land in their own bin, and the
measures' perturbation has the stated size, is fixed per subject and secret, and touches
nothing when off. The attacks these stop: tests/test_release_attacks.py."""

from __future__ import annotations

import numpy as np
import pytest

from fedcmr.client.site.release import coarsen, perturbed_measures, site_spread
from fedcmr.common.measures import FEATURES, SubjectMeasures
from fedcmr.common.metrics import AUC_BINS, LOGIT_LIMIT, LOGIT_WIDTH, binned_counts


def score(logit: float) -> float:
    return float(1.0 / (1.0 + np.exp(-logit)))


def one_count(logit: float) -> np.ndarray:
    """The fine-grid counts of one positive frame with this logit."""
    _, pos = binned_counts(np.array([1]), np.array([score(logit)]))
    return pos


@pytest.mark.parametrize("width", [0.1, 0.25, 0.3, 1.0])
def test_each_count_lands_at_the_middle_of_its_own_coarse_bin(width):
    """A frame's count moves to the fine bin at the middle of the coarse bin holding its
    logit (bins of `width` from -LOGIT_LIMIT; 0.3 does not divide the range: the last bin
    is shorter), never to another coarse bin; the open-ended bins keep theirs."""
    group = round(width / LOGIT_WIDTH)
    rng = np.random.default_rng(1)
    # above ~36.7 a float64 score is 1.0: the open upper bin (checked below)
    logits = np.concatenate([rng.uniform(-LOGIT_LIMIT, 36.0, 300),
                             [-LOGIT_LIMIT + 1e-9, 0.0, 36.5]])
    for z in logits:
        fine = one_count(z)
        (index,) = np.flatnonzero(coarsen(fine, width))
        (was,) = np.flatnonzero(fine)
        start = (was - 1) // group * group  # the coarse bin's first fine bin (0-based)
        stop = min(start + group, AUC_BINS)
        assert index - 1 == (start + stop - 1) // 2, (z, index, start, stop)
        centre = -LOGIT_LIMIT + (index - 0.5) * LOGIT_WIDTH
        p = score(z)
        held = np.log(p) - np.log1p(-p)  # the logit the float64 score holds (near 40: less)
        assert abs(centre - held) <= (stop - start) * LOGIT_WIDTH / 2 + LOGIT_WIDTH
    for z, end in ((-np.inf, 0), (np.inf, -1), (-60.0, 0), (60.0, -1)):
        assert coarsen(one_count(z), width)[end] == 1
    counts = sum(one_count(z) for z in logits)
    assert coarsen(counts, width).sum() == counts.sum()
    assert np.array_equal(coarsen(counts, LOGIT_WIDTH), counts)  # the grid itself: as is


def rows(n: int, constant: bool = False) -> dict[str, SubjectMeasures]:
    rng = np.random.default_rng(n)
    out = {}
    for i in range(n):
        values = rng.normal(100, 20, len(FEATURES))
        if constant:
            values[3] = 150.0
        out[f"s{i}"] = SubjectMeasures(subject=f"s{i}", centre="A", label=i % 2,
                                       **dict(zip(FEATURES, values, strict=True)))
    return out


def test_the_spread_is_each_measures_sd_over_the_site_floored_at_one():
    table = rows(50, constant=True)
    x = np.array([m.features() for m in table.values()])
    sd = site_spread(table)
    expected = x.std(axis=0)
    expected[3] = 1.0  # a constant measure: a unit, not zero
    assert np.allclose(sd, expected)
    assert np.array_equal(site_spread(rows(1)), np.ones(len(FEATURES)))  # one subject
    assert not np.array_equal(site_spread(rows(2)), np.ones(len(FEATURES)))


def test_the_perturbation_has_the_stated_size_and_is_fixed_per_subject_and_secret():
    table = rows(400)
    x = np.array([m.features() for m in table.values()])
    secret = bytes(range(32))
    seen = perturbed_measures(table, 0.25, secret)
    shift = (np.array([seen[s].features() for s in table]) - x) / site_spread(table)
    assert np.std(shift, axis=0) == pytest.approx(np.full(len(FEATURES), 0.25), rel=0.15)
    assert abs(float(np.mean(shift))) < 0.02
    again = perturbed_measures(table, 0.25, secret)
    assert all(again[s] == seen[s] for s in table)  # the same secret: the same values
    other = perturbed_measures(table, 0.25, bytes(32))
    assert all(other[s] != seen[s] for s in table)
    # a subject's draw does not depend on the others (the site's SD aside)
    fewer = dict(list(table.items())[:200])
    scaled = perturbed_measures(fewer, 0.25, secret)
    ratio = (np.array(scaled["s0"].features()) - table["s0"].features()) / \
        (np.array(seen["s0"].features()) - table["s0"].features())
    assert np.allclose(ratio, site_spread(fewer) / site_spread(table))
    assert perturbed_measures(table, 0.0, secret) == table  # off: exact
    assert all(seen[s].label == table[s].label for s in table)  # labels untouched

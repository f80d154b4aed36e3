"""What a site does to a result before it leaves, so that it leaves no finer than the site's
policy allows (client/site/policy.py), whatever model the coordinator sent:

- `score_counts`: validation and test scores as per-class counts in logit bins of the
  policy's `score_bin_width` (common.metrics' 0.002 grid, summed over groups of its bins
  and set at each group's middle bin, so that counts of sites with other widths still add
  up at the coordinator);
- `perturbed_measures`: the measures model sees every subject's measures with a fixed
  secret perturbation of `measures_resolution` of the site's own standard deviation per
  measure, drawn once per subject from the site's secret (client/site/secret.py). Whatever
  standardisation, coefficients or thresholds a coordinator crafts, and however often it
  asks, the sums, updates and counts it gets are functions of the perturbed measures: it
  can at best recover those, each off the true value by a draw of N(0, r^2) site SDs.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from fedcmr.client.site.secret import secret_rng
from fedcmr.common.measures import FEATURES, SubjectMeasures
from fedcmr.common.metrics import AUC_BINS, LOGIT_WIDTH
from fedcmr.common.replies import ScoreCounts


def coarsen(counts: np.ndarray, width: float) -> np.ndarray:
    """Counts on the fine grid (open bin, AUC_BINS bins, open bin) with each group of
    width / LOGIT_WIDTH finite bins summed into the group's middle bin."""
    group = max(1, round(width / LOGIT_WIDTH))
    if group == 1:
        return counts
    out = np.zeros_like(counts)
    out[0], out[-1] = counts[0], counts[-1]
    finite = counts[1:-1]
    for start in range(0, AUC_BINS, group):
        stop = min(start + group, AUC_BINS)
        out[1 + (start + stop - 1) // 2] = finite[start:stop].sum()
    return out


def score_counts(labels: np.ndarray, scores: np.ndarray, loss: float, width: float
                 ) -> ScoreCounts:
    """A split's counts as the site releases them: logit bins of `width`."""
    fine = ScoreCounts.of(labels, scores, loss)
    return fine.model_copy(update={"neg": coarsen(np.asarray(fine.neg), width).tolist(),
                                   "pos": coarsen(np.asarray(fine.pos), width).tolist()})


def site_spread(measures: Mapping[str, SubjectMeasures]) -> np.ndarray:
    """Each measure's standard deviation over the site's subjects (1 where it is 0)."""
    x = np.array([m.features() for m in measures.values()], dtype=np.float64)
    if len(x) < 2:
        return np.ones(len(FEATURES))
    sd = x.std(axis=0)
    return np.where(sd > 0, sd, 1.0)


def perturbed_measures(measures: Mapping[str, SubjectMeasures], resolution: float,
                       secret: bytes) -> dict[str, SubjectMeasures]:
    """Every subject's measures plus its fixed secret draw of N(0, (resolution x the site's
    SD)^2) per measure; as they are where `resolution` is 0."""
    if resolution <= 0:
        return dict(measures)
    scale = resolution * site_spread(measures)
    out = {}
    for subject, row in measures.items():
        shift = secret_rng(secret, "measures", subject).normal(0.0, 1.0, len(FEATURES))
        values = np.asarray(row.features()) + scale * shift
        out[subject] = row.model_copy(update=dict(zip(FEATURES, map(float, values),
                                                      strict=True)))
    return out

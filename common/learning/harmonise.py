"""Intensity harmonisation as one object, in the manner of torchio's
`HistogramStandardization(landmarks)`: the prior's mask rule, the reference landmarks, and
the mapping of a standardised image onto [0, 1].

The federation fits it from the sites' released summaries (`from_summaries`), the pooled
baseline from its pooled training frames (`fit`, equal to combining per-centre summaries
with weights N_k / N, tested in test_nyul), and every dataset applies it (`transform`).
Without landmarks each image is scaled by its own p1 / p99.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from fedcmr.common import nyul
from fedcmr.common.run_config import Prior

if TYPE_CHECKING:
    from fedcmr.common.learning.data import CachedFrame


@dataclass(frozen=True)
class Harmoniser:
    prior: Prior
    #: Reference landmarks (nyul.PERCENTILES mapped); None: per-image p1 / p99 scaling.
    landmarks: tuple[float, ...] | None = None

    # -- fit ---------------------------------------------------------------------------
    def mask(self, labels: np.ndarray) -> np.ndarray | None:
        """Masked inputs count only heart voxels; the baseline uses torchio's default."""
        return None if self.prior == "baseline" else labels > 0

    def summary(self, frames: Sequence[CachedFrame], min_subjects: int) -> nyul.NyulSummary:
        """What a site releases about its TRAINING frames (raises nyul.PrivacyError below
        `min_subjects` subjects)."""
        return nyul.site_summary([f.image for f in frames], [self.mask(f.labels) for f in frames],
                                 [f.subject for f in frames], min_subjects=min_subjects)

    def with_summaries(self, summaries: Sequence[nyul.NyulSummary]) -> Harmoniser:
        """This mask rule with the landmarks combined from the sites' summaries."""
        return Harmoniser(self.prior, tuple(float(x) for x in nyul.combine(summaries)))

    def fit(self, frames: Sequence[CachedFrame]) -> Harmoniser:
        """Landmarks of pooled training frames (the centralised baseline)."""
        return self.with_summaries([self.summary(frames, min_subjects=1)])

    # -- transform ---------------------------------------------------------------------
    def transform(self, image: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Nyul-standardise, then map the landmark scale (p1 -> 0, p99 -> 100) onto [0, 1].

        A fixed division rather than a per-image min-max: the latter would undo the
        harmonisation.
        """
        mask = self.mask(labels)
        if self.landmarks is not None:
            scaled = nyul.standardize(image, np.asarray(self.landmarks), mask) / 100.0
        else:
            region = image[mask] if mask is not None and mask.any() else image
            lo, hi = np.percentile(region, [1, 99])
            scaled = (image - lo) / max(hi - lo, 1e-6)
        return np.clip(scaled, 0.0, 1.0).astype(np.float32)

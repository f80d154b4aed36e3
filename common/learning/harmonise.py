"""Intensity harmonisation as one object, in the manner of torchio's
`HistogramStandardization(landmarks)`: the prior's mask rule, the reference landmarks, and
the mapping of a standardised image onto [0, 1].

The federation fits it from the sites' released summaries (`from_summaries`), the pooled
baseline from its pooled training frames (`fit`, equal to combining per-centre summaries
with weights N_k / N, tested in test_nyul), and every dataset applies it (`transform`).
Without landmarks each image is scaled by its own p1 / p99.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from fedcmr.common import nyul
from fedcmr.common.run_config import Prior


class CachedFrame(Protocol):
    """What harmonisation reads of a frame (common/learning/data.py CachedFrame)."""

    image: np.ndarray
    labels: np.ndarray
    entry: Any

    @property
    def subject(self) -> str: ...


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


def centre_summaries(harmoniser: Harmoniser, frames: Sequence[CachedFrame]
                     ) -> dict[str, nyul.NyulSummary]:
    """Each centre's summary of these (training) frames, as a site would release it."""
    centres = sorted({f.entry.centre for f in frames})
    return {c: harmoniser.summary([f for f in frames if f.entry.centre == c], min_subjects=1)
            for c in centres}


def harmonisation_record(summaries: Mapping[str, nyul.NyulSummary | dict],
                         reference_landmarks: Sequence[float] | None) -> dict:
    """The per-site intensity aggregates of one fold, as the federation and the baseline
    record them (FL: fold_K/summary.json; CDS: fold_K/harmonisation.json): each site's
    released sums turned into means (landmarks = landmark_sum / n_images; the histogram
    stays the sum over images of each image's normalised histogram), the reference
    landmarks every image is standardised to, and the combined histogram."""
    parsed = {site: s if isinstance(s, nyul.NyulSummary) else nyul.NyulSummary(**s)
              for site, s in summaries.items()}
    out: dict = {"percentiles": list(nyul.PERCENTILES),
                 "reference_landmarks": None if reference_landmarks is None
                 else [float(x) for x in reference_landmarks],
                 "site_summaries": {
                     site: {"n_images": s.n_images, "n_subjects": s.n_subjects,
                            "histogram": s.histogram,
                            "landmarks": [x / s.n_images for x in s.landmark_sum]}
                     for site, s in sorted(parsed.items())}}
    if parsed:
        values = list(parsed.values())
        out["reference_histogram"] = nyul.combine_histograms(values).tolist()
        out["bin_edges"] = list(values[0].bin_edges)
    return out


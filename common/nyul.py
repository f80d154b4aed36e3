"""Federated Nyul histogram standardisation, landmark-for-landmark equal to torchio's.

torchio's `HistogramStandardization.train` takes, for every image, the percentiles
`PERCENTILES` of the voxels inside the mask, maps them linearly so that p1 -> 0 and
p99 -> 100, and averages the mapped vectors over images. An average over images is a sum
divided by a count, so a site can release the sum of its mapped vectors and its image count
(`site_summary`, on the client), the server adds them up (`combine`) and every site
standardises its images with the result (`standardize`). The combined landmarks equal
torchio's on the pooled images (the N_k/N weighting of the study spec), and no site releases
a subject's own landmarks.

Computations run in float64 so that the equality holds to float precision. torchio keeps
the dtype it reads, so it matches bit-for-bit-close only on float64 images; on float32
images it computes its percentiles in float32 (differences of about 1e-6 relative).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, model_validator

#: torchio's landmark percentiles for its default cutoff (0.01, 0.99): the deciles, the
#: quartiles 25 and 75 (torchio adds them; its transform then skips them as knots) and the
#: cutoffs. Checked against torchio's own `_get_percentiles` in the tests.
PERCENTILES: tuple[float, ...] = (1, 10, 20, 25, 30, 40, 50, 60, 70, 75, 80, 90, 99)
#: torchio's standard range: p1 -> 0, p99 -> 100.
STANDARD_RANGE: tuple[float, float] = (0.0, 100.0)
#: Histogram bins of the mapped intensities; identical at every site so histograms add up.
DEFAULT_BIN_EDGES: tuple[float, ...] = tuple(np.linspace(-10.0, 110.0, 61).tolist())


class PrivacyError(ValueError):
    """A site was asked to release an aggregate of too few subjects."""


class NyulSummary(BaseModel):
    """What one site releases: sums over its training images, no per-image value.

    `histogram` is the sum over images of each image's normalised histogram (fractions of its
    voxels inside the mask, after the p1 -> 0, p99 -> 100 mapping), so that every image
    weighs the same in the average histogram, as it does in the landmarks. Mapped values
    outside `bin_edges` are not counted.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    landmark_sum: list[float]
    n_images: int
    n_subjects: int
    histogram: list[float]
    bin_edges: list[float]

    @model_validator(mode="after")
    def _consistent(self) -> NyulSummary:
        if len(self.landmark_sum) != len(PERCENTILES):
            raise ValueError(
                f"landmark_sum has {len(self.landmark_sum)} values, expected {len(PERCENTILES)}"
            )
        if len(self.histogram) != len(self.bin_edges) - 1:
            raise ValueError(
                f"histogram has {len(self.histogram)} bins but bin_edges define "
                f"{len(self.bin_edges) - 1}"
            )
        if not 1 <= self.n_subjects <= self.n_images:
            raise ValueError(
                f"need 1 <= n_subjects <= n_images, got {self.n_subjects} and {self.n_images}"
            )
        return self


def _masked_values(image: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """Voxels that count, as float64: inside `mask > 0`, or all (torchio's default)."""
    values = np.asarray(image, dtype=np.float64)
    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape != values.shape:
            raise ValueError(f"mask shape {mask.shape} differs from image shape {values.shape}")
        values = values[mask > 0]
    else:
        values = values.ravel()
    if values.size == 0:
        raise ValueError("the mask selects no voxel; Nyul landmarks are undefined")
    if not np.all(np.isfinite(values)):
        raise ValueError("the image has non-finite intensities inside the mask")
    return values


def _slope(low: float, high: float) -> float:
    """Slope of the map p1 -> 0, p99 -> 100; refuses an image flat between p1 and p99."""
    if not high > low:
        # torchio would divide by zero and return NaN landmarks; fail loudly instead.
        raise ValueError("p1 equals p99 inside the mask; Nyul landmarks are undefined")
    return (STANDARD_RANGE[1] - STANDARD_RANGE[0]) / (high - low)


def _mapped_landmarks(values: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Mapped landmark vector, slope and p1 of one image's counted voxels."""
    percentiles = np.percentile(values, PERCENTILES)
    low = float(percentiles[0])
    slope = _slope(low, float(percentiles[-1]))
    # Same arithmetic as torchio's _get_average_mapping: slope * p - slope * p1.
    return STANDARD_RANGE[0] + slope * percentiles - slope * low, slope, low


def image_landmarks(image: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """One image's landmarks mapped so that p1 -> 0 and p99 -> 100 (float64).

    With `mask=None` every voxel counts, as in torchio's `train` without `mask_path` and its
    transform without `masking_method`.
    """
    return _mapped_landmarks(_masked_values(image, mask))[0]


def _image_stats(
    image: np.ndarray, mask: np.ndarray | None, bin_edges: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Mapped landmarks and histogram (fractions of the counted voxels per bin) of one image."""
    values = _masked_values(image, mask)
    landmarks, slope, low = _mapped_landmarks(values)
    counts, _ = np.histogram(STANDARD_RANGE[0] + slope * (values - low), bins=bin_edges)
    return landmarks, counts / values.size


def site_summary(
    images: Iterable[np.ndarray],
    masks: Iterable[np.ndarray | None] | None,
    subject_ids: Iterable[str],
    min_subjects: int = 5,
    bin_edges: Sequence[float] = DEFAULT_BIN_EDGES,
) -> NyulSummary:
    """Sum one site's landmark vectors and histograms; refuse if too few subjects.

    `images`, `masks` and `subject_ids` are read in step, one image at a time, so a site
    never holds its whole training set in memory. Several frames of one subject (ED and ES)
    count as one subject. `masks=None` means no image is masked.
    """
    if min_subjects < 1:
        raise ValueError(f"min_subjects must be at least 1, got {min_subjects}")
    edges = np.asarray(bin_edges, dtype=np.float64)
    landmark_sum = np.zeros(len(PERCENTILES), dtype=np.float64)
    histogram = np.zeros(len(edges) - 1, dtype=np.float64)
    subjects: set[str] = set()
    n_images = 0
    for image, mask, subject_id in _triples(images, masks, subject_ids):
        landmarks, image_histogram = _image_stats(image, mask, edges)
        landmark_sum += landmarks
        histogram += image_histogram
        subjects.add(subject_id)
        n_images += 1
    if len(subjects) < min_subjects:
        raise PrivacyError(
            f"refusing to release a histogram summary computed from {len(subjects)} subjects; "
            f"the minimum is {min_subjects} (min_subjects in the run config)"
        )
    return NyulSummary(
        landmark_sum=landmark_sum.tolist(),
        n_images=n_images,
        n_subjects=len(subjects),
        histogram=histogram.tolist(),
        bin_edges=edges.tolist(),
    )


def _triples(
    images: Iterable[np.ndarray],
    masks: Iterable[np.ndarray | None] | None,
    subject_ids: Iterable[str],
) -> Iterable[tuple[np.ndarray, np.ndarray | None, str]]:
    """Zip the three streams, failing on a length mismatch."""
    if masks is None:
        for image, subject_id in zip(images, subject_ids, strict=True):
            yield image, None, subject_id
    else:
        yield from zip(images, masks, subject_ids, strict=True)


def _require(summaries: Sequence[NyulSummary]) -> None:
    if not summaries:
        raise ValueError("cannot combine zero Nyul summaries (no training site sent one)")


def combine(summaries: Sequence[NyulSummary]) -> np.ndarray:
    """Reference landmarks: sum of landmark sums / total images (= weights N_k / N)."""
    _require(summaries)
    total = np.sum([np.asarray(s.landmark_sum, dtype=np.float64) for s in summaries], axis=0)
    return total / sum(s.n_images for s in summaries)


def combine_histograms(summaries: Sequence[NyulSummary]) -> np.ndarray:
    """H_average = sum_k (N_k / N) * (site k's mean image histogram), for plots."""
    _require(summaries)
    edges = summaries[0].bin_edges
    if any(s.bin_edges != edges for s in summaries):
        raise ValueError("sites used different histogram bin edges; histograms do not add up")
    total = np.sum([np.asarray(s.histogram, dtype=np.float64) for s in summaries], axis=0)
    return total / sum(s.n_images for s in summaries)


def standardize(image: np.ndarray, landmarks: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """Map `image` onto the reference `landmarks` with torchio's own function (float32).

    The image's percentiles come from the voxels inside `mask > 0` (all voxels if None);
    every voxel is mapped, as torchio's HistogramStandardization transform does.
    """
    landmarks = np.asarray(landmarks, dtype=np.float64)
    if landmarks.shape != (len(PERCENTILES),):
        raise ValueError(f"expected {len(PERCENTILES)} landmarks, got shape {landmarks.shape}")
    array = np.asarray(image)
    mask_array = None
    if mask is not None:
        mask_array = np.asarray(mask) > 0
        if mask_array.shape != array.shape:
            raise ValueError(f"mask shape {mask_array.shape} differs from image {array.shape}")
    # torchio's private `_normalize` is what its public HistogramStandardization transform
    # applies, without building a Subject per image; this is the one place fedcmr calls it,
    # and test_nyul.py::test_standardize_matches_torchio_transform fails loudly should a
    # torchio release change it. Imported here: torchio costs seconds to import, and a
    # ClientApp is a fresh process per message that only needs this one function of it.
    import torch
    from torchio.transforms.preprocessing.intensity.histogram_standardization import (
        _normalize as torchio_normalize,
    )

    result = torchio_normalize(torch.as_tensor(array), landmarks, mask=mask_array)
    return result.numpy()

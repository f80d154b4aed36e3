"""Federated Nyul landmarks against torchio's HistogramStandardization on pooled images."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import torchio as tio
from torchio.transforms.preprocessing.intensity.histogram_standardization import (
    _get_percentiles,
)

from fedcmr.common.nyul import (
    PERCENTILES,
    NyulSummary,
    PrivacyError,
    combine,
    combine_histograms,
    image_landmarks,
    site_summary,
    standardize,
)

SHAPE = (10, 32, 32)  # z, y, x
#: Site name -> (number of images, gamma, scale): different sizes and intensity profiles.
SITES: dict[str, tuple[int, float, float]] = {
    "A": (2, 0.6, 300.0),
    "B": (3, 1.0, 1000.0),
    "C": (3, 1.8, 60.0),
}
KNOTS = [0, 1, 2, 4, 5, 6, 7, 8, 10, 11, 12]  # torchio's range_to_use in _normalize
EXACT = {"rtol": 1e-10, "atol": 1e-10}  # landmarks live on 0..100; torchio's p1 is ~1e-14


@dataclass
class Item:
    site: str
    subject: str
    image: np.ndarray
    mask: np.ndarray
    image_path: Path
    mask_path: Path


def _phantom(rng: np.random.Generator, gamma: float, scale: float) -> np.ndarray:
    """A bright blob on a darker background with noise, bent by the site's gamma and scale."""
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, n) for n in SHAPE), indexing="ij")
    centre = rng.uniform(-0.3, 0.3, size=2)
    blob = np.exp(-((x - centre[0]) ** 2 + (y - centre[1]) ** 2) / 0.2)
    base = 0.2 + 0.7 * blob + 0.05 * z + rng.uniform(0.0, 0.1, size=SHAPE)
    return scale * np.clip(base, 1e-3, None) ** gamma


def _mask(rng: np.random.Generator) -> np.ndarray:
    """An elliptical cylinder of random size, off-centre: masks differ per image."""
    _, y, x = np.meshgrid(*(np.linspace(-1, 1, n) for n in SHAPE), indexing="ij")
    ax, ay = rng.uniform(0.4, 0.9, size=2)
    shift = rng.uniform(-0.1, 0.1)
    return (((x - shift) / ax) ** 2 + (y / ay) ** 2 < 1).astype(np.uint8)


def _write(array: np.ndarray, path: Path) -> Path:
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    return path


@pytest.fixture(scope="module")
def items(tmp_path_factory: pytest.TempPathFactory) -> list[Item]:
    """Eight float64 images (three sites of 2, 3 and 3) and their masks, as NIfTI files."""
    folder = tmp_path_factory.mktemp("nyul")
    rng = np.random.default_rng(20220101)
    result = []
    for site, (count, gamma, scale) in SITES.items():
        for index in range(count):
            name = f"{site}{index}"
            image, mask = _phantom(rng, gamma, scale), _mask(rng)
            result.append(
                Item(
                    site=site,
                    subject=name,
                    image=image,
                    mask=mask,
                    image_path=_write(image, folder / f"{name}.nii.gz"),
                    mask_path=_write(mask, folder / f"{name}_mask.nii.gz"),
                )
            )
    return result


def _summary(items: list[Item], masked: bool, min_subjects: int = 1) -> NyulSummary:
    return site_summary(
        (item.image for item in items),
        [item.mask for item in items] if masked else None,
        (item.subject for item in items),
        min_subjects=min_subjects,
    )


def _by_site(items: list[Item]) -> dict[str, list[Item]]:
    return {site: [item for item in items if item.site == site] for site in SITES}


def _torchio_train(items: list[Item], masked: bool) -> np.ndarray:
    return tio.HistogramStandardization.train(
        [item.image_path for item in items],
        mask_path=[item.mask_path for item in items] if masked else None,
        progress=False,
    )


def test_percentiles_are_torchios() -> None:
    np.testing.assert_array_equal(PERCENTILES, _get_percentiles((1.0, 99.0)))


@pytest.mark.parametrize("masked", [True, False], ids=["masked", "unmasked"])
def test_combined_sites_equal_torchio_on_pooled_images(items: list[Item], masked: bool) -> None:
    summaries = [_summary(site_items, masked) for site_items in _by_site(items).values()]
    assert [s.n_images for s in summaries] == [2, 3, 3]
    np.testing.assert_allclose(combine(summaries), _torchio_train(items, masked), **EXACT)


@pytest.mark.parametrize("held_out", list(SITES))
def test_leave_centre_out_ignores_the_held_out_site(items: list[Item], held_out: str) -> None:
    sites = _by_site(items)
    training = [item for item in items if item.site != held_out]
    reference = combine([_summary(sites[s], True) for s in SITES if s != held_out])
    np.testing.assert_allclose(reference, _torchio_train(training, True), **EXACT)

    # Whatever the held-out site's images look like, the reference is the same.
    perturbed = [
        Item(**{**vars(item), "image": 3.0 * item.image**1.5 + 7.0}) for item in sites[held_out]
    ]
    assert _summary(perturbed, True) != _summary(sites[held_out], True)
    summaries = {s: _summary(sites[s], True) for s in SITES if s != held_out}
    summaries[held_out] = _summary(perturbed, True)
    again = combine([summary for site, summary in summaries.items() if site != held_out])
    np.testing.assert_array_equal(again, reference)


def test_weighting_is_by_image_count_not_by_site(items: list[Item]) -> None:
    # A one-image site next to a three-image site with a different intensity profile.
    chosen = [items[0], *_by_site(items)["C"]]
    summaries = [_summary([items[0]], True), _summary(_by_site(items)["C"], True)]
    site_means = [np.asarray(s.landmark_sum) / s.n_images for s in summaries]
    weights = [s.n_images / sum(t.n_images for t in summaries) for s in summaries]
    weighted = sum(w * m for w, m in zip(weights, site_means, strict=True))

    np.testing.assert_allclose(combine(summaries), weighted, **EXACT)
    np.testing.assert_allclose(combine(summaries), _torchio_train(chosen, True), **EXACT)
    plain = np.mean(site_means, axis=0)
    assert np.max(np.abs(combine(summaries) - plain)) > 0.5  # landmarks are on a 0..100 scale


@pytest.mark.parametrize("masked", [True, False], ids=["masked", "unmasked"])
def test_standardize_matches_torchio_transform(items: list[Item], masked: bool) -> None:
    landmarks = combine([_summary(site_items, masked) for site_items in _by_site(items).values()])
    transform = tio.HistogramStandardization(
        {"mri": landmarks}, masking_method="mask" if masked else None
    )
    for item in items:
        subject = tio.Subject(
            mri=tio.ScalarImage(tensor=torch.as_tensor(item.image[None])),
            mask=tio.LabelMap(tensor=torch.as_tensor(item.mask[None])),
        )
        expected = transform(subject)["mri"].data.numpy()[0]
        ours = standardize(item.image, landmarks, item.mask if masked else None)
        assert ours.dtype == np.float32
        np.testing.assert_allclose(ours, expected, rtol=1e-6, atol=1e-5)
        # The standardised image's own landmarks land on the reference at torchio's knots
        # (all but the quartiles 25 and 75, which its piecewise-linear map skips).
        own = image_landmarks(ours, item.mask if masked else None)
        np.testing.assert_allclose(own[KNOTS], landmarks[KNOTS], atol=0.05)


def test_privacy_guard_counts_distinct_subjects(items: list[Item]) -> None:
    four = items[:4]
    with pytest.raises(PrivacyError, match=r"from 4 subjects; the minimum is 5 \(min_subjects"):
        _summary(four, True, min_subjects=5)
    assert _summary(four, True, min_subjects=4).n_subjects == 4

    # ED and ES frames of three subjects: six images, three subjects.
    frames = [item for item in items[:3] for _ in ("ED", "ES")]
    with pytest.raises(PrivacyError, match="from 3 subjects; the minimum is 5"):
        site_summary([i.image for i in frames], None, [i.subject for i in frames])  # default 5
    summary = _summary(frames, True, min_subjects=3)
    assert (summary.n_images, summary.n_subjects) == (6, 3)
    assert issubclass(PrivacyError, ValueError)


def test_summary_holds_aggregates_only_and_round_trips(items: list[Item]) -> None:
    summary = _summary(_by_site(items)["B"], True)
    array_fields = {
        name
        for name, field in NyulSummary.model_fields.items()
        if getattr(field.annotation, "__origin__", None) is list
    }
    assert array_fields == {"landmark_sum", "histogram", "bin_edges"}
    assert len(summary.landmark_sum) == len(PERCENTILES)
    assert summary.bin_edges == np.linspace(-10, 110, 61).tolist()  # fixed, not data-driven
    assert not any(item.subject in repr(summary) for item in items)

    # as it travels: inside the site's NyulReply, in a Flower MetricRecord
    from fedcmr.common.replies import NyulReply

    content = NyulReply(site="B", summary=summary).to_content()
    assert NyulReply.from_content(content).summary == summary
    with pytest.raises(ValueError, match="Extra inputs"):
        NyulSummary.model_validate({**summary.model_dump(), "subject_ids": [1.0]})


def test_average_histogram_weights_images_equally(items: list[Item]) -> None:
    sites = _by_site(items)
    summaries = [_summary(sites[s], True) for s in SITES]
    pooled = _summary(items, True)
    np.testing.assert_allclose(
        combine_histograms(summaries), np.asarray(pooled.histogram) / 8, **EXACT
    )
    assert 0.95 < combine_histograms(summaries).sum() <= 1.0  # ~98% lies in p1..p99


def test_combine_rejects_empty_and_mismatched_input(items: list[Item]) -> None:
    with pytest.raises(ValueError, match="zero Nyul summaries"):
        combine([])
    other = site_summary([items[0].image], [None], ["x"], min_subjects=1, bin_edges=[0, 50, 100])
    with pytest.raises(ValueError, match="bin edges"):
        combine_histograms([_summary(items[:2], True), other])
    with pytest.raises(ValueError, match="p1 equals p99"):
        image_landmarks(np.ones(SHAPE), None)


def test_histograms_combine_from_one_site_and_refuse_other_edges_in_either_order(
        items: list[Item]) -> None:
    one = _summary(items[:2], True)
    np.testing.assert_allclose(combine_histograms([one]),
                               np.asarray(one.histogram) / one.n_images, **EXACT)
    other = site_summary([items[0].image], [None], ["x"], min_subjects=1,
                         bin_edges=[0, 50, 100])
    for pair in ([one, other], [other, one]):
        with pytest.raises(ValueError, match="bin edges"):
            combine_histograms(pair)


def test_a_summary_checks_its_lengths_whatever_their_size(items: list[Item]) -> None:
    """Over 256 bins (beyond Python's cached small integers), a consistent summary is
    valid; an inconsistent one names the count its edges define."""
    edges = np.linspace(-10, 110, 301).tolist()
    wide = site_summary([items[0].image], [None], ["x"], min_subjects=1, bin_edges=edges)
    assert len(wide.histogram) == 300
    with pytest.raises(ValueError, match="histogram has 5 bins but bin_edges define 3"):
        NyulSummary.model_validate({**wide.model_dump(), "histogram": [0.0] * 5,
                                    "bin_edges": [0.0, 1.0, 2.0, 3.0]})


@pytest.mark.parametrize("shape", [(2, 3, 3), (4, 8, 8)])
def test_a_mask_of_another_shape_is_refused(shape) -> None:
    image = np.random.default_rng(0).uniform(1, 100, (3, 4, 4)).astype(np.float32)
    with pytest.raises(ValueError, match="mask shape"):
        standardize(image, np.linspace(0, 100, len(PERCENTILES)), np.ones(shape, bool))

"""N4 correction on a synthetic frame with a known multiplicative bias field."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from fedcmr.client.data.bias_field import N4Params, n4_correct

SIZE = (96, 96, 8)  # x, y, z as SimpleITK counts
SPACING = (1.5, 1.5, 10.0)
ORIGIN = (-70.0, 12.5, 3.0)
DIRECTION = (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0)


def _anatomy() -> tuple[np.ndarray, np.ndarray]:
    """Piecewise-constant (z, y, x) phantom and the mask of its homogeneous 'tissue'."""
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, n) for n in SIZE[::-1]), indexing="ij")
    body = (x / 0.9) ** 2 + (y / 0.75) ** 2 < 1
    cavity = (x - 0.15) ** 2 + y**2 < 0.12
    wall = ((x - 0.15) ** 2 + y**2 < 0.2) & ~cavity
    anatomy = np.where(body, 100.0, 0.0)
    anatomy[wall] = 60.0
    anatomy[cavity] = 220.0
    # "Tissue" away from every edge, so that the bias is all that varies inside it.
    inner = (x / 0.8) ** 2 + (y / 0.65) ** 2 < 1
    tissue = inner & ((x - 0.15) ** 2 + y**2 > 0.3)
    return anatomy, tissue


def _bias() -> np.ndarray:
    """Smooth field spanning about a factor 2.2 over the body, mostly in-plane."""
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, n) for n in SIZE[::-1]), indexing="ij")
    return np.exp(0.45 * x - 0.25 * y + 0.2 * x * y - 0.15 * x**2 + 0.05 * z)


def _image(values: np.ndarray) -> sitk.Image:
    image = sitk.GetImageFromArray(values.astype(np.float32))
    image.SetSpacing(SPACING)
    image.SetOrigin(ORIGIN)
    image.SetDirection(DIRECTION)
    return image


def _cv(values: np.ndarray) -> float:
    return float(values.std() / values.mean())


@pytest.fixture(scope="module")
def phantom() -> tuple[sitk.Image, np.ndarray]:
    anatomy, tissue = _anatomy()
    rng = np.random.default_rng(0)
    noisy = anatomy * _bias() + rng.normal(0.0, 1.0, anatomy.shape) * (anatomy > 0)
    return _image(np.clip(noisy, 0.0, None)), tissue


@pytest.fixture(scope="module")
def corrected(phantom: tuple[sitk.Image, np.ndarray]) -> sitk.Image:
    return n4_correct(phantom[0], N4Params(), threads=1)


def test_reduces_variation_in_homogeneous_tissue(phantom, corrected) -> None:
    image, tissue = phantom
    before = _cv(sitk.GetArrayFromImage(image)[tissue])
    after = _cv(sitk.GetArrayFromImage(corrected)[tissue])
    assert before > 0.15
    assert after < 0.5 * before


def test_keeps_geometry_dtype_and_zero_background(phantom, corrected) -> None:
    image, _ = phantom
    assert corrected.GetPixelID() == sitk.sitkFloat32
    assert corrected.GetSize() == image.GetSize()
    assert corrected.GetSpacing() == pytest.approx(image.GetSpacing())
    assert corrected.GetOrigin() == pytest.approx(image.GetOrigin())
    assert corrected.GetDirection() == pytest.approx(image.GetDirection())
    values = sitk.GetArrayFromImage(corrected)
    assert np.isfinite(values).all()
    assert (values[sitk.GetArrayFromImage(image) == 0] == 0).all()


def test_keeps_intensity_scale(phantom, corrected) -> None:
    """The field is normalised to geometric mean 1 over the voxels it is fitted on: there
    the mean log intensity is unchanged by the correction (a field off by a factor e^0.25
    moves it by 0.25), and the tissue stays within 10% of its true value of 100 (107.4; the
    same field off by e^0.25 gives 83.7)."""
    from fedcmr.client.data.bias_field import foreground_mask

    image, tissue = phantom
    fitted = foreground_mask(image, N4Params().mask)
    before = np.log(sitk.GetArrayFromImage(image)[fitted]).mean()
    after = np.log(sitk.GetArrayFromImage(corrected)[fitted]).mean()
    assert after == pytest.approx(before, abs=1e-3)
    median = np.median(sitk.GetArrayFromImage(corrected)[tissue])
    assert median == pytest.approx(100.0, rel=0.1)


def test_disabled_returns_float_copy(phantom) -> None:
    image = sitk.Cast(phantom[0], sitk.sitkInt16)
    out = n4_correct(image, N4Params(enabled=False))
    assert out.GetPixelID() == sitk.sitkFloat32
    assert out.GetOrigin() == pytest.approx(image.GetOrigin())
    np.testing.assert_array_equal(sitk.GetArrayFromImage(out), sitk.GetArrayFromImage(image))


def test_negative_values_and_single_slice() -> None:
    """Negative noise stays finite and keeps its sign; a one-slice volume stays 3D."""
    anatomy, tissue = _anatomy()
    values = anatomy * _bias() - 5.0 * (anatomy == 0)
    image = _image(values[3:4])
    out = n4_correct(image, N4Params(iterations=(10, 10)), threads=1)
    result = sitk.GetArrayFromImage(out)
    assert out.GetSize() == image.GetSize()
    assert np.isfinite(result).all()
    assert (result[values[3:4] < 0] < 0).all()
    assert _cv(result[tissue[3:4]]) < _cv(values[3:4][tissue[3:4]])


def test_tiny_or_empty_image_is_returned_unchanged() -> None:
    tiny = _image(np.zeros((2, 4, 4)))
    out = n4_correct(tiny, N4Params())
    np.testing.assert_array_equal(sitk.GetArrayFromImage(out), 0)
    assert out.GetSize() == tiny.GetSize()


def test_params_hashable_and_round_trip() -> None:
    params = N4Params(shrink_factor=2, iterations=(20, 10), mask="none")
    assert hash(params) == hash(N4Params.model_validate_json(params.model_dump_json()))
    assert N4Params.model_validate_json(params.model_dump_json()) == params
    assert params != N4Params()
    with pytest.raises(ValueError):
        N4Params(shrink_factor=0)

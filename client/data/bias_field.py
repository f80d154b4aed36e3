"""N4 bias-field correction of one frame, fast enough for a whole cohort.

N4 at SimpleITK's defaults fits the field on every voxel at full resolution (30-100 s per
cine frame on two cores). The field is smooth (a cubic B-spline on a coarse mesh), so it is
fitted here on an in-plane shrunk copy, under a foreground mask, and then evaluated from its
control points on the full-resolution grid: the correction is applied at full resolution.
The through-plane axis is never shrunk: short-axis slices are 5-10 mm thick and a frame has
only 6-18 of them. docs/n4-bias-correction.md has the measurements behind the defaults.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import SimpleITK as sitk

from fedcmr.client.data.prep_config import N4Params

#: Fewest voxels an in-plane axis keeps after shrinking: below this the mesh of the last
#: fitting level has more control points than the shrunk image has voxels.
MIN_SHRUNK_SIZE = 32
#: Fewest fit voxels worth fitting a field on; smaller images are returned uncorrected.
MIN_FIT_VOXELS = 64


def n4_correct(image: sitk.Image, params: N4Params, threads: int | None = None) -> sitk.Image:
    """Return ``image / bias`` as float32 on the same grid (a float32 copy when disabled).

    The field is normalised to geometric mean 1 over the fit voxels, so the corrected image
    keeps the input's intensity scale (an N4 field is only defined up to a factor).
    ``threads`` caps the threads of every filter run here without touching SimpleITK's
    global default, which other code in the process may rely on.
    """
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError("n4_correct expects a scalar image")
    original = sitk.Cast(image, sitk.sitkFloat32)
    if not params.enabled:
        return original
    work = _squeeze_single_slice(original)
    log_bias = _fit_log_bias(work, params, threads)
    if log_bias is None:
        return original
    corrected = sitk.GetArrayFromImage(work) / np.exp(sitk.GetArrayFromImage(log_bias))
    out = sitk.GetImageFromArray(corrected.astype(np.float32).reshape(original.GetSize()[::-1]))
    out.CopyInformation(original)
    return out


def n4_log_bias_field(
    image: sitk.Image, params: N4Params, threads: int | None = None
) -> sitk.Image | None:
    """The fitted log bias field on ``image``'s grid (None when the image is too small to
    fit); exposed for benchmarks and diagnostics."""
    work = _squeeze_single_slice(sitk.Cast(image, sitk.sitkFloat32))
    return _fit_log_bias(work, params, threads)


def foreground_mask(image: sitk.Image, kind: Literal["otsu", "none"]) -> np.ndarray:
    """Boolean (z, y, x) array of the voxels the field is fitted on.

    Only finite, strictly positive voxels qualify: N4 works on log intensities. Otsu is
    taken on the log of those voxels: on linear intensities a few very bright voxels (fat,
    blood in cine SSFP) put the threshold above the myocardium, and the field would be
    fitted on blood and fat alone (measured on ACDC: 0-94% of myocardium kept, against
    > 99.7% in the log domain).
    """
    values = sitk.GetArrayFromImage(image)
    valid = np.isfinite(values) & (values > 0)
    if kind == "none" or valid.sum() < MIN_FIT_VOXELS:
        return valid
    log_values = np.log(values, where=valid, out=np.full(values.shape, -np.inf))
    threshold = _otsu_threshold(log_values[valid])
    mask = valid & (log_values > threshold)
    # A degenerate histogram (near-constant image) leaves too little; fall back to all.
    return mask if mask.sum() >= MIN_FIT_VOXELS else valid


def _otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of a 1-D sample (between-class variance maximised over bins)."""
    hist, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    weight0 = np.cumsum(hist)
    weight1 = weight0[-1] - weight0
    mean0 = np.cumsum(hist * centres) / np.maximum(weight0, 1)
    mean1 = (np.sum(hist * centres) - np.cumsum(hist * centres)) / np.maximum(weight1, 1)
    between = weight0 * weight1 * (mean0 - mean1) ** 2
    return float(centres[int(np.argmax(between))])


def _squeeze_single_slice(image: sitk.Image) -> sitk.Image:
    """A one-slice 3D volume as a 2D image: a B-spline cannot span a zero-length axis."""
    if image.GetDimension() == 3 and image.GetSize()[2] == 1:
        return image[:, :, 0]
    return image


def _fit_log_bias(image: sitk.Image, params: N4Params, threads: int | None) -> sitk.Image | None:
    """Fit N4 on the shrunk, masked, positive image; evaluate log(field) on ``image``'s grid."""
    mask = foreground_mask(image, params.mask)
    if mask.sum() < MIN_FIT_VOXELS:
        return None
    fit_input = _positive_fit_input(image, mask)
    mask_image = sitk.GetImageFromArray(mask.astype(np.uint8))
    mask_image.CopyInformation(image)
    factors = _shrink_factors(image, params.shrink_factor)
    shrink = sitk.ShrinkImageFilter()
    shrink.SetShrinkFactors(factors)
    small = _run(shrink, threads, fit_input)
    small_mask = _run(shrink, threads, mask_image)
    if sitk.GetArrayViewFromImage(small_mask).sum() < MIN_FIT_VOXELS:
        return None
    n4 = sitk.N4BiasFieldCorrectionImageFilter()
    n4.SetMaximumNumberOfIterations(list(params.iterations))
    n4.SetConvergenceThreshold(params.convergence_threshold)
    n4.SetNumberOfControlPoints([params.control_points] * image.GetDimension())
    n4.SetNumberOfHistogramBins(params.histogram_bins)
    n4.SetBiasFieldFullWidthAtHalfMaximum(params.bias_field_fwhm)
    n4.SetMaskLabel(1)
    _run(n4, threads, small, small_mask)
    log_bias = sitk.GetArrayFromImage(n4.GetLogBiasFieldAsImage(image))
    log_bias -= log_bias[mask].mean()
    out = sitk.GetImageFromArray(log_bias.astype(np.float32))
    out.CopyInformation(image)
    return out


def _positive_fit_input(image: sitk.Image, mask: np.ndarray) -> sitk.Image:
    """The image with every voxel outside the fit mask set to the smallest fitted value.

    N4 takes logs of the whole image even where the mask is 0; zeros, negatives and
    non-finite values would give -inf/NaN there. The fit ignores those voxels, so any
    positive stand-in leaves the field unchanged.
    """
    values = sitk.GetArrayFromImage(image)
    values = np.where(mask, values, values[mask].min()).astype(np.float32)
    out = sitk.GetImageFromArray(values)
    out.CopyInformation(image)
    return out


def _shrink_factors(image: sitk.Image, shrink: int) -> list[int]:
    """In-plane factors capped so each axis keeps MIN_SHRUNK_SIZE voxels; z stays 1."""
    factors = [1] * image.GetDimension()
    for axis in (0, 1):
        size = image.GetSize()[axis]
        factors[axis] = max(1, min(shrink, size // MIN_SHRUNK_SIZE))
    return factors


def _run(process: sitk.ProcessObject, threads: int | None, *inputs: sitk.Image) -> sitk.Image:
    """Execute a SimpleITK filter with an optional per-filter thread cap."""
    if threads is not None:
        process.SetNumberOfThreads(max(1, threads))
    return process.Execute(*inputs)

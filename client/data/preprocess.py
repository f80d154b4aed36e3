"""Per-frame geometry: isotropic resampling and the label-centred crop.

Voxel axes stay in the acquisition's index order (slice axis = z): reorienting an oblique
short-axis stack to patient axes could swap the slice axis with an in-plane one.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk


def resample(image: sitk.Image, spacing: tuple[float, float, float],
             interpolator: int) -> sitk.Image:
    """Resample onto a grid of `spacing` (x, y, z mm) covering the same field of view."""
    old_spacing = np.array(image.GetSpacing())
    old_size = np.array(image.GetSize())
    new_spacing = np.array(spacing, dtype=float)
    new_size = np.maximum(1, np.round(old_size * old_spacing / new_spacing)).astype(int)
    # Keep the centre of the first voxel's footprint where it was.
    shift = (new_spacing - old_spacing) / 2.0
    origin = np.array(image.GetOrigin()) + np.array(image.GetDirection()).reshape(3, 3) @ shift
    return sitk.Resample(image, [int(s) for s in new_size], sitk.Transform(), interpolator,
                         [float(o) for o in origin], [float(s) for s in new_spacing],
                         image.GetDirection(), 0.0, image.GetPixelID())


def resample_frame(image: sitk.Image, labels: sitk.Image,
                   spacing: tuple[float, float, float]) -> tuple[sitk.Image, sitk.Image]:
    """Linear for intensities, nearest neighbour for labels (no invented label values)."""
    return (resample(image, spacing, sitk.sitkLinear),
            resample(labels, spacing, sitk.sitkNearestNeighbor))


def label_centre(labels: np.ndarray) -> tuple[int, ...]:
    """Centre of the bounding box of the non-zero labels, per axis."""
    coords = np.nonzero(labels)
    return tuple(int((c.min() + c.max()) // 2) for c in coords)


def crop_around(array: np.ndarray, centre: tuple[int, ...], size: tuple[int, ...]) -> np.ndarray:
    """A `size` window centred on `centre`; zero padding where it leaves the array."""
    out = np.zeros(size, dtype=array.dtype)
    src, dst = [], []
    for c, n, dim in zip(centre, size, array.shape, strict=True):
        start = c - n // 2
        lo, hi = max(start, 0), min(start + n, dim)
        src.append(slice(lo, hi))
        dst.append(slice(lo - start, hi - start))
    out[tuple(dst)] = array[tuple(src)]
    return out


def crop_frame(image: sitk.Image, labels: sitk.Image,
               size: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(z, y, x) arrays of `size`, centred on the heart's bounding box."""
    image_arr = sitk.GetArrayFromImage(image).astype(np.float32, copy=False)
    label_arr = sitk.GetArrayFromImage(labels).astype(np.uint8, copy=False)
    centre = label_centre(label_arr)
    return crop_around(image_arr, centre, size), crop_around(label_arr, centre, size)

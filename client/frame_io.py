"""Reading one cardiac phase (image + label map) from NIfTI, with every check a site needs."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from fedcmr.client.errors import DataError
from fedcmr.common.frames import FrameSource
from fedcmr.common.labels import LabelMap

#: Geometry differences below these are rounding in the NIfTI header, not a mismatch.
_SPACING_TOL = 1e-3
_ORIGIN_TOL_MM = 1e-2
_DIRECTION_TOL = 1e-3


_NIFTI1_HEADER = 348
_TRUNCATED_FIX = "re-export or re-copy the file; it may be truncated"


def _payload(path: Path) -> bytes | int:
    """Header bytes and total decompressed length; raises on a broken gzip stream."""
    opener = gzip.open if path.name.endswith(".gz") else open
    total, head = 0, b""
    with opener(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            if len(head) < _NIFTI1_HEADER:
                head += chunk[: _NIFTI1_HEADER - len(head)]
            total += len(chunk)
    return head, total


def check_complete(path: Path, what: str) -> None:
    """ITK zero-fills a truncated .nii.gz without a word: compare the header's data size
    with the bytes actually there."""
    try:
        head, total = _payload(path)
    except (EOFError, zlib.error, OSError) as exc:
        raise DataError(path, f"{what} is truncated or corrupt ({exc})", _TRUNCATED_FIX) from None
    if len(head) < _NIFTI1_HEADER:
        return
    for order in ("<", ">"):
        if np.frombuffer(head[:4], f"{order}i4")[0] == _NIFTI1_HEADER:
            break
    else:
        return  # not NIfTI-1 (e.g. NIfTI-2): ITK's own checks apply
    dims = np.frombuffer(head[40:56], f"{order}i2")
    bitpix = int(np.frombuffer(head[72:74], f"{order}i2")[0])
    vox_offset = int(np.frombuffer(head[108:112], f"{order}f4")[0])
    ndim = int(dims[0])
    if not 1 <= ndim <= 7:
        return
    expected = vox_offset + int(np.prod(dims[1 : ndim + 1].astype(np.int64))) * bitpix // 8
    if total < expected:
        raise DataError(path, f"{what} is truncated ({total} of {expected} bytes)",
                        _TRUNCATED_FIX)


def read_volume(path: Path, what: str) -> sitk.Image:
    """Read a NIfTI file, turning every failure into a DataError that names the file."""
    if not path.exists():
        raise DataError(path, f"{what} file is missing", "put the file in place or drop the "
                        "subject from the metadata")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.SetGlobalWarningDisplay(False)  # real ACDC headers warn about sform scales
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unknown error"
        raise DataError(path, f"{what} cannot be read as NIfTI ({first[:120]})",
                        _TRUNCATED_FIX) from None
    check_complete(path, what)
    return image


def select_time(image: sitk.Image, index: int | None, path, what: str) -> sitk.Image:
    """The 3D frame at a 0-based time index of a 4D image (3D images pass through)."""
    dim = image.GetDimension()
    if index is None:
        if dim != 3:
            raise DataError(path, f"{what} is {dim}D but no frame index was given",
                            "give the frame's time index, or a 3D file per phase")
        return image
    if dim == 3:
        if index != 0:
            raise DataError(path, f"{what} is 3D but frame index {index} was asked for",
                            "give 4D files for time indices, or 3D files without an index")
        return image
    if dim != 4:
        raise DataError(path, f"{what} is {dim}D", "give a 3D frame or a 4D cine series")
    frames = image.GetSize()[3]
    if not 0 <= index < frames:
        raise DataError(path, f"frame index {index} is outside the series (0..{frames - 1})",
                        "correct the ED/ES index in the metadata (M&Ms indices are 0-based)")
    size = list(image.GetSize())
    size[3] = 0
    extractor = sitk.ExtractImageFilter()
    extractor.SetSize(size)
    extractor.SetIndex([0, 0, 0, index])
    extractor.SetDirectionCollapseToStrategy(extractor.DIRECTIONCOLLAPSETOSUBMATRIX)
    return extractor.Execute(image)


def check_same_geometry(image: sitk.Image, labels: sitk.Image, path) -> None:
    problems = []
    if image.GetSize() != labels.GetSize():
        problems.append(f"size {image.GetSize()} vs {labels.GetSize()}")
    if not np.allclose(image.GetSpacing(), labels.GetSpacing(), atol=_SPACING_TOL):
        problems.append(f"spacing {image.GetSpacing()} vs {labels.GetSpacing()}")
    if not np.allclose(image.GetOrigin(), labels.GetOrigin(), atol=_ORIGIN_TOL_MM):
        problems.append(f"origin {image.GetOrigin()} vs {labels.GetOrigin()}")
    if not np.allclose(image.GetDirection(), labels.GetDirection(), atol=_DIRECTION_TOL):
        problems.append("direction differs")
    if problems:
        raise DataError(path, "label map and image have different geometry: " +
                        "; ".join(problems), "export the label map on the image's grid")


def check_signal(image: sitk.Image, source: FrameSource) -> None:
    """An image of NaN/Inf voxels, or one without any contrast, would train as a blank frame
    with a label: refuse it, naming the file."""
    values = sitk.GetArrayViewFromImage(image)
    where = "" if source.time_index is None else f" at frame {source.time_index}"
    if not np.isfinite(values).all():
        raise DataError(source.image, f"image holds NaN or Inf values{where}",
                        "re-export the image: a conversion step wrote invalid voxels")
    if values.size and values.max() == values.min():
        raise DataError(source.image, f"image is blank (every voxel is "
                        f"{float(values.flat[0]):g}){where}",
                        "check the export and the frame index: the series holds no signal")


def read_frame(source: FrameSource, label_map: LabelMap) -> tuple[sitk.Image, sitk.Image]:
    """Image (float32) and label map (uint8, internal numbering) of one phase, both checked."""
    image = select_time(read_volume(source.image, "image"), source.time_index, source.image,
                        "image")
    labels = select_time(read_volume(source.labels, "label map"), source.time_index,
                         source.labels, "label map")
    check_same_geometry(image, labels, source.labels)
    check_signal(image, source)
    array = sitk.GetArrayViewFromImage(labels)
    unknown = label_map.unknown_values(array)
    if unknown:
        known = f"0, {label_map.lv} (LV), {label_map.myo} (MYO), {label_map.rv} (RV)"
        raise DataError(source.labels, f"unknown label values {unknown} (expected {known})",
                        "give the site's own label numbers (lv/myo/rv columns) or clean the map")
    internal = label_map.to_internal(array)
    if not internal.any():
        where = "" if source.time_index is None else f" at frame {source.time_index}"
        raise DataError(source.labels, f"label map is empty{where}",
                        "check the ED/ES frame index, or segment this frame")
    out_labels = sitk.GetImageFromArray(internal)
    out_labels.CopyInformation(labels)
    return sitk.Cast(image, sitk.sitkFloat32), out_labels

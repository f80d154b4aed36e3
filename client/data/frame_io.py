"""Reading one cardiac phase (image + label map) from NIfTI, with every check a site needs."""

from __future__ import annotations

import functools
import gzip
import logging
import os
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from fedcmr.client.data.errors import DataError
from fedcmr.common.frames import FrameSource
from fedcmr.common.labels import LabelMap

log = logging.getLogger(__name__)

#: Geometry differences below these are rounding in the NIfTI header, not a mismatch.
_SPACING_TOL = 1e-3
_ORIGIN_TOL_MM = 1e-2
_DIRECTION_TOL = 1e-3


_NIFTI1_HEADER = 348
_TRUNCATED_FIX = "re-export or re-copy the file; it may be truncated"

#: How far (degrees) the sform's voxel axes may be from perpendicular and still be read, with
#: the nearest rotation. ITK itself refuses anything past ~0.006 degrees (R R^T = I within
#: 1e-4) when the header has no qform to fall back on, as some M&Ms exports do; the pipeline
#: works in voxel index space (resampling keeps the axes), so a rounding-level skew changes
#: nothing, while a larger one means the header does not describe a scanner orientation.
ORTHONORMAL_TOL_DEG = 0.5
_ITK_NOT_ORTHONORMAL = "orthonormal direction cosines"
_ITK_SFORM_PERMISSIVE = "ITK_NIFTI_SFORM_PERMISSIVE"  # read by ITK >= 5.4's NIfTI reader
_SKEW_FIX = ("re-export the NIfTI from the DICOM series (e.g. with dcm2niix) so that its "
             "sform (srow_x/y/z) or qform holds the scanner orientation; a resampled or "
             "hand-edited header can shear it")
_warned: set[str] = set()


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


def _byte_order(head: bytes) -> str | None:
    """'<' or '>' for a NIfTI-1 header, None for anything else (e.g. NIfTI-2)."""
    if len(head) < _NIFTI1_HEADER:
        return None
    for order in ("<", ">"):
        if np.frombuffer(head[:4], f"{order}i4")[0] == _NIFTI1_HEADER:
            return order
    return None


def sform_skew(path: Path) -> tuple[np.ndarray | None, float] | None:
    """The header's sform as (rotation, skew): the nearest rotation to its unit-length voxel
    axes (polar decomposition; ITK's LPS, columns = voxel axes) and the largest angle in
    degrees by which two axes miss perpendicular. Rotation None for a degenerate sform; None
    when there is no NIfTI-1 sform to read."""
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as handle:
            head = handle.read(_NIFTI1_HEADER)
    except (EOFError, zlib.error, OSError):
        return None
    order = _byte_order(head)
    if order is None or np.frombuffer(head[254:256], f"{order}i2")[0] <= 0:
        return None
    axes = np.frombuffer(head[280:328], f"{order}f4").reshape(3, 4)[:, :3].astype(float)
    norms = np.linalg.norm(axes, axis=0)
    if not np.isfinite(axes).all() or not (norms > 0).all():
        return None, 90.0
    unit = axes / norms
    u, singular, vt = np.linalg.svd(unit)
    cosines = np.abs(unit.T @ unit - np.eye(3)).max()
    skew = float(np.degrees(np.arcsin(min(cosines, 1.0))))
    if singular[-1] < 1e-6:
        return None, 90.0
    return np.diag([-1.0, -1.0, 1.0]) @ (u @ vt), skew  # NIfTI's RAS to ITK's LPS


@contextmanager
def _sform_permissive() -> Iterator[None]:
    old = os.environ.get(_ITK_SFORM_PERMISSIVE)
    os.environ[_ITK_SFORM_PERMISSIVE] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(_ITK_SFORM_PERMISSIVE, None)
        else:
            os.environ[_ITK_SFORM_PERMISSIVE] = old


def _orthonormal_rotation(path: Path, what: str) -> np.ndarray:
    """The rotation to read a file ITK refused for non-orthonormal direction cosines with,
    or a DataError giving the real cause when the header is too far from one."""
    found = sform_skew(path)
    if found is None:
        raise DataError(path, f"{what} header has no orthonormal orientation (ITK refuses "
                        "its direction cosines, and it has no sform fedcmr could correct)",
                        _SKEW_FIX)
    rotation, skew = found
    if rotation is None:
        raise DataError(path, f"{what} header's sform is degenerate (a zero or repeated voxel "
                        "axis), so it holds no orientation", _SKEW_FIX)
    if skew > ORTHONORMAL_TOL_DEG:
        raise DataError(path, f"{what} header's direction cosines are not orthonormal: its "
                        f"sform axes are {skew:.3g} degrees from perpendicular (fedcmr "
                        f"corrects up to {ORTHONORMAL_TOL_DEG:g})", _SKEW_FIX)
    if str(path) not in _warned:
        _warned.add(str(path))
        log.warning("%s: %s direction cosines are not orthonormal (sform axes %.2g degrees "
                    "from perpendicular, tolerance %g); read with the nearest rotation",
                    path, what, skew, ORTHONORMAL_TOL_DEG)
    return rotation


def _execute(reader: sitk.ImageFileReader, path: Path, what: str, info_only: bool = False
             ) -> tuple[sitk.Image | None, np.ndarray | None]:
    """Run the reader; a header ITK refuses only for slightly non-orthonormal direction
    cosines is read again in ITK's permissive mode. Returns the image (None when only the
    information was read) and the rotation to impose (None when ITK's own was fine)."""
    run = reader.ReadImageInformation if info_only else reader.Execute
    rotation = None
    try:
        try:
            return run(), None
        except RuntimeError as exc:
            if _ITK_NOT_ORTHONORMAL not in str(exc):
                raise
        rotation = _orthonormal_rotation(path, what)
        with _sform_permissive():
            return run(), rotation
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unknown error"
        raise DataError(path, f"{what} cannot be read as NIfTI ({first[:120]})",
                        _TRUNCATED_FIX) from None


def _impose(image: sitk.Image, rotation: np.ndarray) -> None:
    n = image.GetDimension()
    direction = np.array(image.GetDirection()).reshape(n, n)
    direction[:3, :3] = rotation
    image.SetDirection(direction.ravel().tolist())


def native_spacing(path: Path, what: str = "image") -> tuple[float, ...]:
    """The voxel size (x, y, z mm) from the header alone."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.SetGlobalWarningDisplay(False)
    _execute(reader, path, what, info_only=True)
    return reader.GetSpacing()[:3]


def check_complete(path: Path, what: str) -> None:
    """ITK zero-fills a truncated .nii.gz without a word: compare the header's data size
    with the bytes actually there."""
    try:
        head, total = _payload(path)
    except (EOFError, zlib.error, OSError) as exc:
        raise DataError(path, f"{what} is truncated or corrupt ({exc})", _TRUNCATED_FIX) from None
    order = _byte_order(head)
    if order is None:
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
    image, rotation = _execute(reader, path, what)
    if rotation is not None:
        _impose(image, rotation)
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


def non_finite_on_disk(path: Path, time_index: int | None) -> bool:
    """Whether the NIfTI file's voxels (of frame `time_index` of a 4D file) hold NaN or
    Inf. ITK's NIfTI reader turns NaN voxels into 0 without a word, so a float file is read
    again with nibabel to see them (an integer file cannot hold them: no second read), once
    per file however many of its frames are checked."""
    stat = path.stat()
    bad = _non_finite_frames(str(path), stat.st_mtime_ns, stat.st_size)
    if bad is None:
        return False
    return bool(bad[time_index] if time_index is not None and len(bad) > 1 else bad.any())


@functools.lru_cache(maxsize=4)
def _non_finite_frames(path: str, mtime_ns: int, size: int) -> np.ndarray | None:
    """Per frame (the last axis of a 4D file; one entry for 3D) whether it holds NaN or Inf;
    None for an integer file or one nibabel cannot read (ITK read it: this is a second look)."""
    import nibabel as nib

    try:
        volume = nib.load(path)
    except Exception:  # noqa: BLE001 - see the docstring
        return None
    if not np.issubdtype(volume.get_data_dtype(), np.floating):
        return None
    data = np.asarray(volume.dataobj)
    if data.ndim == 4:
        return ~np.isfinite(data).all(axis=(0, 1, 2))
    return np.array([not np.isfinite(data).all()])


def check_signal(image: sitk.Image, source: FrameSource) -> None:
    """An image of NaN/Inf voxels, or one without any contrast, would train as a blank frame
    with a label: refuse it, naming the file."""
    values = sitk.GetArrayViewFromImage(image)
    where = "" if source.time_index is None else f" at frame {source.time_index}"
    if not np.isfinite(values).all() or (
            Path(source.image).exists() and non_finite_on_disk(Path(source.image),
                                                                source.time_index)):
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

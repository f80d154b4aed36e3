"""Tiny NIfTI phantoms written by the tests themselves (a ring of myocardium round a cavity)."""

from __future__ import annotations

import gzip
import math
import struct
from pathlib import Path

import numpy as np
import SimpleITK as sitk

SIZE = (48, 48, 4)  # x, y, z
SPACING = (2.0, 2.0, 8.0)


def phantom(lv: int, myo: int, rv: int, thickness: float = 3.0, seed: int = 0
            ) -> tuple[np.ndarray, np.ndarray]:
    """(z, y, x) image and labels with the source's own label numbers."""
    z, y, x = np.mgrid[0:SIZE[2], 0:SIZE[1], 0:SIZE[0]]
    r = np.hypot(x - 24, y - 24)
    labels = np.zeros(r.shape, np.uint8)
    labels[r < 7] = lv
    labels[(r >= 7) & (r < 7 + thickness)] = myo
    labels[(np.hypot(x - 13, y - 24) < 5) & (labels == 0)] = rv
    rng = np.random.default_rng(seed)
    image = 100 + 200 * (labels == lv) + 50 * (labels == rv) + rng.normal(0, 5, r.shape)
    return image.astype(np.int16), labels


def to_image(array: np.ndarray, spacing=SPACING) -> sitk.Image:
    img = sitk.GetImageFromArray(array, isVector=False)
    img.SetSpacing(spacing if array.ndim == 3 else (*spacing, 1.0))
    return img


def write_3d(path: Path, array: np.ndarray, spacing=SPACING) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(to_image(array, spacing), str(path))
    return path


def write_4d(path: Path, frames: list[np.ndarray]) -> Path:
    """Frames (z, y, x) stacked on a 4th (time) axis, as M&Ms stores its cine series."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.JoinSeries([to_image(f) for f in frames]), str(path))
    return path


def write_acdc_patient(root: Path, number: int, group: str, ed: int = 1, es: int = 3,
                       frames: int = 5) -> Path:
    folder = root / "training" / f"patient{number:03d}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "Info.cfg").write_text(f"ED: {ed}\nES: {es}\nGroup: {group}\nHeight: 180.0\n"
                                     f"NbFrame: {frames}\nWeight: 80.0\n")
    for frame in (ed, es):
        image, labels = phantom(lv=3, myo=2, rv=1, seed=number + frame)
        stem = folder / f"patient{number:03d}_frame{frame:02d}"
        write_3d(stem.with_name(stem.name + ".nii.gz"), image)
        write_3d(stem.with_name(stem.name + "_gt.nii.gz"), labels)
    return folder


MNMS_HEADER = "External code,VendorName,Vendor,Centre,ED,ES,Age,Pathology,Sex,Height,Weight\n"


def write_mnms_subject(root: Path, code: str, ed: int = 0, es: int = 2, frames: int = 4,
                       part: str = "Training/Labeled") -> Path:
    folder = root / part / code
    images, labels = [], []
    for t in range(frames):
        image, label = phantom(lv=1, myo=2, rv=3, seed=t)
        images.append(image)
        labels.append(label if t in (ed, es) else np.zeros_like(label))
    write_4d(folder / f"{code}_sa.nii.gz", images)
    write_4d(folder / f"{code}_sa_gt.nii.gz", labels)
    return folder


def mnms_row(code: str, centre: int | str = 2, vendor: str = "B", ed: int = 0, es: int = 2,
             pathology: str = "HCM") -> str:
    names = {"A": "Siemens", "B": "Philips", "C": "GE", "D": "Canon"}
    return f"{code},{names[vendor]},{vendor},{centre},{ed},{es},50,{pathology},M,170,70\n"


def skew_header(path: Path, degrees: float) -> Path:
    """Shear the sform of a .nii.gz written above so that its y axis leans `degrees` towards
    x, and clear qform_code so that ITK has no orthonormal form to fall back on (as in some
    real M&Ms exports). nifti1.h offsets: qform_code 252 (int16), srow_x/y/z 280/296/312
    (float32 x4 each); the writer here is little-endian."""
    raw = bytearray(gzip.decompress(path.read_bytes()))
    rows = [list(struct.unpack("<4f", raw[o : o + 16])) for o in (280, 296, 312)]
    dy = math.sqrt(sum(row[1] ** 2 for row in rows))
    rows[0][1] += math.tan(math.radians(degrees)) * dy
    raw[280:296] = struct.pack("<4f", *rows[0])
    raw[252:254] = struct.pack("<h", 0)
    path.write_bytes(gzip.compress(bytes(raw)))
    return path

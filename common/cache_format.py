"""The prepared-data cache: the contract between `fedcmr prepare` and everything after it.

CACHE/manifest.csv   one row per frame (MANIFEST_COLUMNS), file relative to CACHE
CACHE/prep.json      preprocessing parameters, fedcmr version, counts
CACHE/skipped.csv    subjects that could not be prepared, with the reason and the fix
CACHE/frames/...     one .npz per frame: image float32 (z, y, x), labels uint8 (internal)
"""

from __future__ import annotations

import csv
import zipfile
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict

from fedcmr.common.atomic import atomic_path, write_csv
from fedcmr.common.frames import Phase

MANIFEST = "manifest.csv"
PREP_INFO = "prep.json"
SKIPPED = "skipped.csv"
FRAMES_DIR = "frames"
MANIFEST_COLUMNS = ("subject", "centre", "vendor", "label", "phase", "file", "key",
                    "source", "time_index", "native_spacing")
SKIPPED_COLUMNS = ("subject", "file", "problem", "fix")


class FrameEntry(BaseModel):
    """One manifest row."""

    model_config = ConfigDict(frozen=True)

    subject: str
    centre: str
    vendor: str
    label: int
    phase: Phase
    file: str
    key: str
    source: str = ""
    time_index: str = ""
    native_spacing: str = ""


def write_manifest(cache: Path, entries: list[FrameEntry]) -> None:
    ordered = sorted(entries, key=lambda e: (e.centre, e.subject, e.phase))
    write_csv(cache / MANIFEST, MANIFEST_COLUMNS, [e.model_dump() for e in ordered])


def read_manifest(cache: Path) -> list[FrameEntry]:
    path = cache / MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"{path}: no manifest. Fix: run `fedcmr prepare ... --out "
                                f"{cache}` first")
    with path.open(newline="", encoding="utf-8") as handle:
        return [FrameEntry(**row) for row in csv.DictReader(handle)]


def save_frame(path: Path, image: np.ndarray, labels: np.ndarray, key: str) -> None:
    """Write-then-rename, so a crash never leaves a file a rerun would trust."""
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez_compressed(tmp, image=image.astype(np.float32),
                            labels=labels.astype(np.uint8), key=np.array(key))


def frame_key(path: Path) -> str | None:
    """The parameter key a cached frame was made with (None if absent or unreadable)."""
    try:
        with np.load(path) as data:
            return str(data["key"])
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):
        return None


def load_frame(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path) as data:
        return data["image"], data["labels"]

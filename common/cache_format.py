"""The prepared-data cache: the contract between `fedcmr prepare` and everything after it.

CACHE/manifest.csv   one row per frame (MANIFEST_COLUMNS), file relative to CACHE
CACHE/prep.json      preprocessing parameters, fedcmr version, counts
CACHE/skipped.csv    subjects that could not be prepared, with the reason and the fix
CACHE/frames/...     one .npz per frame: image float32 (z, y, x), labels uint8 (internal)
"""

from __future__ import annotations

import csv
import zipfile
import zlib
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from fedcmr.common.atomic import atomic_path, write_csv
from fedcmr.common.frames import Phase
from fedcmr.common.labels import Structure

MANIFEST = "manifest.csv"
PREP_INFO = "prep.json"
SKIPPED = "skipped.csv"
FRAMES_DIR = "frames"
MANIFEST_COLUMNS = ("subject", "centre", "vendor", "label", "phase", "file", "key",
                    "source", "time_index", "native_spacing")
SKIPPED_COLUMNS = ("subject", "file", "problem", "fix")
#: The members every frame file holds (np.savez names them NAME.npy).
FRAME_MEMBERS = ("image.npy", "labels.npy", "key.npy")
#: The layout of a cache (frame files, manifest, prep.json). Bump it when what a cache holds
#: changes, so that a site with older caches is refused at the handshake (common/handshake.py)
#: and re-runs `fedcmr prepare`. 0: a prep.json from before the version was recorded;
#: 1: prep.json records it and the label convention.
CACHE_FORMAT_VERSION = 1
#: The prep.json keys that say which format and label convention a cache was written in.
PREP_FORMAT_KEY = "cache_format_version"
PREP_LABELS_KEY = "label_convention"


def label_convention() -> str:
    """The internal label numbers every cached label map holds, as text
    ("BACKGROUND=0,LV=1,MYO=2,RV=3"): a cache written under another convention is refused."""
    return ",".join(f"{s.name}={s.value}" for s in Structure)


def format_info() -> dict[str, int | str]:
    """What prep.json records about the cache format itself (`fedcmr prepare` writes it)."""
    return {PREP_FORMAT_KEY: CACHE_FORMAT_VERSION, PREP_LABELS_KEY: label_convention()}


class CacheError(ValueError):
    """A prepared cache that cannot be used as it is: one line naming the file, the problem
    and the fix (a ValueError, so that every command reports it as bad input)."""

    def __init__(self, file: Path | str, problem: str, fix: str):
        self.file, self.problem, self.fix = str(file), problem, fix
        super().__init__(f"{file}: {problem}. Fix: {fix}")

    def __reduce__(self):
        return (CacheError, (self.file, self.problem, self.fix))


def rerun_fix(cache: Path | None, does: str = "recomputes damaged or missing frames") -> str:
    out = cache if cache is not None else "CACHE"
    return f"re-run `fedcmr prepare ... --out {out}` with the same options; it {does}"


def damaged(path: Path, detail: str, cache: Path | None = None) -> CacheError:
    return CacheError(path, f"damaged cache file (truncated or not a .npz: {detail})",
                      rerun_fix(cache))


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
    fix = rerun_fix(cache, "rewrites the manifest (do not edit it by hand)")
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            header = reader.fieldnames or []
            required = [name for name, field in FrameEntry.model_fields.items()
                        if field.is_required()]
            missing = [name for name in required if name not in header]
            if missing:
                raise CacheError(path, f"manifest has no column {', '.join(missing)}", fix)
            return [_entry(row, path, reader.line_num, len(header), fix) for row in reader]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise CacheError(path, f"manifest is not a readable CSV ({exc})", fix) from None


def _entry(row: dict, path: Path, line: int, width: int, fix: str) -> FrameEntry:
    """One manifest row, or a CacheError naming its line and what is wrong with it."""
    extra, short = len(row.get(None) or ()), sum(v is None for v in row.values())
    if extra or short:  # csv.DictReader files extra fields under None, fills missing with None
        raise CacheError(path, f"line {line} has {width + extra - short} fields, the header "
                         f"{width}", fix)
    try:
        return FrameEntry(**row)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise CacheError(path, f"line {line}: bad {where} {first.get('input')!r} "
                         f"({first['msg']})", fix) from None


def save_frame(path: Path, image: np.ndarray, labels: np.ndarray, key: str) -> None:
    """Write-then-rename, so a crash never leaves a file a rerun would trust."""
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez_compressed(tmp, image=image.astype(np.float32),
                            labels=labels.astype(np.uint8), key=np.array(key))


def check_frame(path: Path, cache: Path | None = None) -> None:
    """The cheap open-time check of one frame file: present, a zip archive whose directory
    is intact (a truncated file loses it), with the three members, each lying inside the
    file. Reads the zip directory only, never the voxels; damage inside a member's data is
    caught when it is read (load_frame)."""
    if not path.is_file():
        raise CacheError(path, f"cache file missing (listed in {MANIFEST})", rerun_fix(cache))
    size = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as archive:
            infos = {info.filename: info for info in archive.infolist()}
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise damaged(path, str(exc) or type(exc).__name__, cache) from None
    absent = [name for name in FRAME_MEMBERS if name not in infos]
    if absent:
        raise damaged(path, f"no {', '.join(absent)} in it", cache)
    for info in infos.values():
        if info.header_offset + info.compress_size > size:
            raise damaged(path, f"{info.filename} runs past the end of the file", cache)


def check_cache(cache: Path, entries: list[FrameEntry]) -> None:
    """check_frame for every listed frame; one error naming the first damaged file and how
    many others there are, so that one re-run of prepare is known to be enough."""
    errors = []
    for entry in entries:
        try:
            check_frame(cache / entry.file, cache)
        except CacheError as err:
            errors.append(err)
    if errors:
        first = errors[0]
        more = f" (and {len(errors) - 1} more frame file(s) of {cache})" if errors[1:] else ""
        raise CacheError(first.file, first.problem + more, first.fix)


def load_frame(path: Path, cache: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Image (z, y, x) float32 and labels of one frame; any damage is a CacheError naming
    the file (the CRC of each member is checked as it is read)."""
    image, labels, _ = _read_frame(path, cache)
    return image, labels


def frame_key(path: Path) -> str | None:
    """The parameter key a cached frame was made with; None if absent or damaged in any way
    load_frame would refuse, so that `fedcmr prepare` recomputes it."""
    if not path.is_file():
        return None
    try:
        return _read_frame(path, None)[2]
    except CacheError:
        return None


def _read_frame(path: Path, cache: Path | None) -> tuple[np.ndarray, np.ndarray, str]:
    check_frame(path, cache)
    try:
        with np.load(path) as data:
            image, labels, key = data["image"], data["labels"], str(data["key"])
    except (zipfile.BadZipFile, zlib.error, OSError, KeyError, ValueError, EOFError) as exc:
        raise damaged(path, str(exc) or type(exc).__name__, cache) from None
    if image.ndim != 3 or image.shape != labels.shape:
        raise damaged(path, f"image {image.shape} and labels {labels.shape} are not one "
                      "(z, y, x) grid", cache)
    return image, labels, key

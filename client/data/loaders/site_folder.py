"""A hospital's own folder: a CSV manifest that points at its files, whatever their names.

One row per subject. Columns (any order, spelling as in csv_table.normalise):
  subject, label (NOR/HCM or 0/1),
  either ed_image, ed_labels, es_image, es_labels (3D file per phase)
  or     image, labels, ed_index, es_index       (4D cine, 0-based time indices),
  lv, myo, rv: the site's own label numbers (or given once with --label-numbers),
  centre, vendor: optional (else from the command line).
Relative paths are read from the manifest's folder.
"""

from __future__ import annotations

from pathlib import Path

from fedcmr.client.data.errors import DataError, DatasetError
from fedcmr.client.data.loaders.csv_table import normalise, read_table
from fedcmr.client.data.loaders.result import LoadResult
from fedcmr.common.frames import FrameSource, SubjectRecord
from fedcmr.common.labels import LabelMap, parse_diagnosis

PER_PHASE = ("ed_image", "ed_labels", "es_image", "es_labels")
SERIES = ("image", "labels", "ed_index", "es_index")
LABEL_COLUMNS = ("lv", "myo", "rv")


def parse_label_numbers(text: str) -> LabelMap:
    """`"lv=3,myo=2,rv=1"` -> LabelMap."""
    values = dict(item.split("=", 1) for item in text.replace(" ", "").split(",") if item)
    try:
        return LabelMap(**{k: int(v) for k, v in values.items()})
    except (ValueError, TypeError) as exc:
        raise DatasetError(f"--label-numbers {text!r}: {exc}. Fix: write lv=N,myo=N,rv=N") \
            from None


def _layout(path: Path, header: list[str], site_labels: LabelMap | None) -> str:
    cols = set(header)
    if not {"subject", "label"} <= cols:
        raise DatasetError(f"{path}: missing column subject or label. Fix: add them "
                           f"(columns found: {', '.join(header)})")
    if site_labels is None and not {normalise(c) for c in LABEL_COLUMNS} <= cols:
        raise DatasetError(f"{path}: no lv, myo, rv columns. Fix: add the site's label "
                           "numbers as columns, or pass --label-numbers lv=N,myo=N,rv=N")
    for layout in (PER_PHASE, SERIES):
        if {normalise(c) for c in layout} <= cols:
            return "per_phase" if layout is PER_PHASE else "series"
    raise DatasetError(f"{path}: needs columns {', '.join(PER_PHASE)} (3D per phase) or "
                       f"{', '.join(SERIES)} (4D). Fix: add them (found: {', '.join(header)})")


def _path(base: Path, value: str, manifest: Path, column: str) -> Path:
    if not value:
        raise DataError(manifest, f"empty {column}", f"fill in the {column} column")
    path = Path(value)
    return path if path.is_absolute() else base / path


def _index(value: str, manifest: Path, column: str) -> int:
    if not value.strip().isdigit():
        raise DataError(manifest, f"{column} {value!r} is not a 0-based frame index",
                        f"write the 0-based time index in {column}")
    return int(value)


def _frames(row: dict[str, str], layout: str, base: Path, manifest: Path) -> dict:
    frames = {}
    for phase in ("ED", "ES"):
        p = phase.lower()
        if layout == "per_phase":
            frames[phase] = FrameSource(image=_path(base, row[f"{p}image"], manifest,
                                                    f"{p}_image"),
                                        labels=_path(base, row[f"{p}labels"], manifest,
                                                     f"{p}_labels"))
        else:
            frames[phase] = FrameSource(image=_path(base, row["image"], manifest, "image"),
                                        labels=_path(base, row["labels"], manifest, "labels"),
                                        time_index=_index(row[f"{p}index"], manifest,
                                                          f"{p}_index"))
    return frames


def _label_map(row: dict[str, str], site_labels: LabelMap | None, manifest: Path) -> LabelMap:
    if all(row.get(c) for c in LABEL_COLUMNS):
        try:
            return LabelMap(**{c: int(row[c]) for c in LABEL_COLUMNS})
        except ValueError as exc:
            raise DataError(manifest, f"label numbers invalid ({exc})",
                            "write three distinct non-zero integers in lv, myo, rv") from None
    if site_labels is None:
        raise DataError(manifest, "no label numbers", "fill in lv, myo, rv")
    return site_labels


def load_site_folder(manifest: Path, centre: str, vendor: str = "unknown",
                     site_labels: LabelMap | None = None) -> LoadResult:
    """Subjects listed in a site's manifest CSV; NOR and HCM kept."""
    header, rows = read_table(manifest)
    layout = _layout(manifest, header, site_labels)
    result = LoadResult()
    for row in rows:
        subject = row.get("subject", "")
        if not subject:
            continue
        diagnosis = parse_diagnosis(row.get("label", ""))
        if diagnosis is None:
            result.excluded[f"label {row.get('label') or '?'}"] += 1
            continue
        try:
            record = SubjectRecord(
                subject=subject, centre=row.get("centre") or centre,
                vendor=row.get("vendor") or vendor, diagnosis=diagnosis,
                label_map=_label_map(row, site_labels, manifest),
                frames=_frames(row, layout, manifest.parent, manifest))
        except DataError as err:
            result.skipped.append(err.for_subject(subject))
            continue
        result.subjects.append(record)
    result.drop_duplicates(str(manifest))
    return result

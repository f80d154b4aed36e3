"""M&Ms (MICCAI 2020): 4D cine + 4D label map per subject, metadata in one CSV.

ED/ES in the CSV are 0-based indices into the time axis, and ED may come after ES. The
release spreads subjects over Training/Validation/Testing folders, so files are found by
subject code anywhere under the root.
"""

from __future__ import annotations

import logging
from pathlib import Path

from fedcmr.client.data.errors import DataError, DatasetError
from fedcmr.client.data.loaders.csv_table import read_table, resolve_columns
from fedcmr.client.data.loaders.result import LoadResult
from fedcmr.common.centres import MNMS_DEFAULT_CENTRES, MNMS_VENDORS, STUDY_MNMS_CENTRES
from fedcmr.common.frames import FrameSource, SubjectRecord
from fedcmr.common.labels import MNMS_LABELS, parse_diagnosis

log = logging.getLogger(__name__)

COLUMNS: dict[str, tuple[str, ...]] = {
    "code": ("External code", "External Code", "Code", "Subject", "SubjectCode"),
    "vendor": ("VendorName", "Vendor name", "Vendor"),
    "centre": ("Centre", "Center", "Centre name", "Hospital"),
    "ed": ("ED", "ED frame"),
    "es": ("ES", "ES frame"),
    "pathology": ("Pathology", "Diagnosis", "Group"),
    "height": ("Height", "Height (cm)", "Height_cm"),
    "weight": ("Weight", "Weight (kg)", "Weight_kg"),
}
#: Columns a release may lack (subjects then have no body size, hence no LV mass index).
OPTIONAL_COLUMNS = ("height", "weight")


def find_metadata_csv(root: Path) -> Path:
    """The one M&Ms metadata CSV under `root` (at most two folders down)."""
    candidates = sorted(p for pattern in ("*.csv", "*/*.csv", "*/*/*.csv", "*.xlsx")
                        for p in root.glob(pattern) if "m&ms" in p.name.lower()
                        or "dataset" in p.name.lower() or "information" in p.name.lower())
    if not candidates:
        raise DatasetError(f"{root}: no M&Ms metadata CSV found. Fix: pass --csv PATH "
                           "(e.g. 211230_M&Ms_Dataset_information_diagnosis_opendataset.csv)")
    if len(candidates) > 1:
        names = ", ".join(str(p.relative_to(root)) for p in candidates)
        raise DatasetError(f"{root}: several metadata CSVs ({names}). Fix: choose with --csv")
    return candidates[0]


def vendor_name(value: str) -> str:
    """Vendor letters (A-D) to names; names pass through."""
    return MNMS_VENDORS.get(value.strip().upper(), value.strip())


class CentreNamer:
    """Centre numbers to names, warning once when the default map disagrees with the CSV."""

    def __init__(self, override: dict[str, str] | None):
        self.override = override or {}
        self._warned: set[str] = set()

    def __call__(self, raw: str, vendor: str) -> str:
        key = raw.strip()
        if key.replace(".", "", 1).isdigit():
            key = str(int(float(key)))
        else:
            return key  # the authors' copy names centres
        if key in self.override:
            return self.override[key]
        if key not in MNMS_DEFAULT_CENTRES:
            return f"M&Ms centre {key}"
        info = MNMS_DEFAULT_CENTRES[key]
        if info.vendor != vendor and key not in self._warned:
            self._warned.add(key)
            log.warning("M&Ms centre %s: the default map says %s (%s) but the CSV says vendor "
                        "%s; pass --centre-map '%s=NAME' if the name is wrong", key, info.name,
                        info.vendor, vendor, key)
        return info.name


def index_series(root: Path) -> dict[str, list[Path]]:
    """Every `<code>_sa.nii.gz` under root, by code (a list: duplicates are an error)."""
    found: dict[str, list[Path]] = {}
    for path in root.rglob("*_sa.nii.gz"):
        found.setdefault(path.name[: -len("_sa.nii.gz")], []).append(path)
    return found


def _time_index(row: dict[str, str], column: str, csv_path: Path, phase: str) -> int:
    raw = row.get(column, "")
    try:
        value = float(raw)
    except ValueError:
        raise DataError(csv_path, f"{phase} index {raw!r} is not a number",
                        f"write the 0-based {phase} time index") from None
    if value != int(value) or value < 0:
        raise DataError(csv_path, f"{phase} index {raw!r} is not a 0-based frame index",
                        f"write the 0-based {phase} time index")
    return int(value)


def _series(code: str, series: dict[str, list[Path]], root: Path) -> Path:
    paths = series.get(code, [])
    if not paths:
        raise DataError(root / code / f"{code}_sa.nii.gz", "no image series for this subject "
                        "under the root", "put the subject's folder under the root or drop its "
                        "CSV row")
    if len(paths) > 1:
        raise DataError(paths[1], f"{len(paths)} copies of {code}_sa.nii.gz under the root",
                        "keep one copy of the subject's folder")
    return paths[0]


def load_mnms(root: Path, csv_path: Path | None = None, centres: list[str] | None = None,
              centre_map: dict[str, str] | None = None) -> LoadResult:
    """NOR and HCM subjects of the chosen centres (default: the study's three)."""
    csv_path = csv_path or find_metadata_csv(root)
    header, rows = read_table(csv_path)
    cols = resolve_columns(csv_path, header, COLUMNS, optional=OPTIONAL_COLUMNS)
    wanted = set(centres or STUDY_MNMS_CENTRES)
    namer = CentreNamer(centre_map)
    series = index_series(root)
    result = LoadResult()
    for row in rows:
        code = row.get(cols["code"], "")
        if not code:
            continue
        diagnosis = parse_diagnosis(row.get(cols["pathology"], ""))
        vendor = vendor_name(row.get(cols["vendor"], ""))
        centre = namer(row.get(cols["centre"], ""), vendor)
        if diagnosis is None:
            result.excluded[f"pathology {row.get(cols['pathology']) or '?'}"] += 1
            continue
        if "all" not in wanted and centre not in wanted:
            result.excluded[f"centre {centre}"] += 1
            continue
        try:
            image = _series(code, series, root)
            labels = image.with_name(f"{code}_sa_gt.nii.gz")
            frames = {phase: FrameSource(image=image, labels=labels,
                                         time_index=_time_index(row, cols[phase.lower()],
                                                                csv_path, phase))
                      for phase in ("ED", "ES")}
        except DataError as err:
            result.skipped.append(err.for_subject(code))
            continue
        result.subjects.append(SubjectRecord(subject=code, centre=centre, vendor=vendor,
                                             diagnosis=diagnosis, label_map=MNMS_LABELS,
                                             frames=frames,
                                             height_cm=row.get(cols.get("height", ""), ""),
                                             weight_kg=row.get(cols.get("weight", ""), "")))
    result.drop_duplicates(str(csv_path))
    return result

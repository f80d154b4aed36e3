"""Clinical measures of each subject: the contract between `fedcmr prepare` (which measures
them from the whole label stacks, client/data/measures.py) and the measures model
(common/learning/measures_model.py).

CACHE/measures.csv   one row per subject (MEASURE_COLUMNS); a value that cannot be had
                     (LV mass index without height and weight) is an empty cell.

Volumes in ml, mass in g (1.05 g/ml), thickness in mm, ejection fractions as fractions
(0..1), body surface area in m^2 (Mosteller), mass index in g/m^2. How each is measured is
in docs/measures.md.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from fedcmr.common.atomic import write_csv

MEASURES_CSV = "measures.csv"
#: Myocardial tissue density (g/ml), the usual convention for LV mass from CMR.
MYOCARDIAL_DENSITY = 1.05

#: The measures every subject has (label maps alone): the measures model's features.
FEATURES: tuple[str, ...] = (
    "lv_edv_ml", "lv_esv_ml", "lv_ef", "lv_mass_g",
    "max_wall_ed_mm", "mean_wall_ed_mm", "max_wall_es_mm", "mean_wall_es_mm",
    "rv_edv_ml", "rv_esv_ml", "rv_ef",
)
#: Measures that need what the label maps do not hold (height and weight).
OPTIONAL: tuple[str, ...] = ("height_cm", "weight_kg", "bsa_m2", "lv_mass_index_g_m2")
MEASURE_COLUMNS: tuple[str, ...] = ("subject", "centre", "label", *FEATURES, *OPTIONAL)


class SubjectMeasures(BaseModel):
    """One row of measures.csv."""

    model_config = ConfigDict(frozen=True)

    subject: str
    centre: str
    label: int
    lv_edv_ml: float
    lv_esv_ml: float
    lv_ef: float
    lv_mass_g: float
    max_wall_ed_mm: float
    mean_wall_ed_mm: float
    max_wall_es_mm: float
    mean_wall_es_mm: float
    rv_edv_ml: float
    rv_esv_ml: float
    rv_ef: float
    height_cm: float | None = None
    weight_kg: float | None = None
    bsa_m2: float | None = None
    lv_mass_index_g_m2: float | None = None

    @field_validator(*OPTIONAL, mode="before")
    @classmethod
    def _empty(cls, value):
        return None if value == "" else value

    @field_validator(*FEATURES)
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("not a finite number")
        return value

    def features(self) -> list[float]:
        """The model's inputs, in FEATURES order."""
        return [float(getattr(self, name)) for name in FEATURES]


class MeasureSums(BaseModel):
    """What a site releases for the standardisation: subject count, and per measure the sum
    and the sum of squares over its training subjects."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    n: int
    total: list[float]
    squares: list[float]


def body_surface_area(height_cm: float, weight_kg: float) -> float:
    """Mosteller's formula: sqrt(height [cm] * weight [kg] / 3600), in m^2."""
    return math.sqrt(height_cm * weight_kg / 3600.0)


def write_measures(cache: Path, rows: list[SubjectMeasures]) -> None:
    ordered = sorted(rows, key=lambda r: (r.centre, r.subject))
    write_csv(cache / MEASURES_CSV, MEASURE_COLUMNS,
              [{k: ("" if v is None else v) for k, v in r.model_dump().items()}
               for r in ordered])


def read_measures(cache: Path) -> dict[str, SubjectMeasures]:
    """The cache's measures by subject; a missing or damaged file names the fix."""
    path = cache / MEASURES_CSV
    fix = (f"re-run `fedcmr prepare ... --out {cache}` with this fedcmr version; it measures "
           "every subject from its label maps (prepared frames are reused)")
    if not path.exists():
        raise FileNotFoundError(f"{path}: no clinical measures in this cache. Fix: {fix}")
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    out: dict[str, SubjectMeasures] = {}
    for line, row in enumerate(rows, start=2):
        try:
            measures = SubjectMeasures(**row)
        except (ValidationError, TypeError) as exc:
            raise ValueError(f"{path}: line {line} is not a valid measures row ({exc}). "
                             f"Fix: {fix}") from None
        out[measures.subject] = measures
    return out


def read_all_measures(caches) -> dict[str, SubjectMeasures]:
    """The measures of every subject the caches hold, as one table (a subject listed with
    different measures in two caches is an error naming the cache)."""
    out: dict[str, SubjectMeasures] = {}
    for cache in caches:
        for subject, row in read_measures(Path(cache)).items():
            if subject in out and out[subject] != row:
                raise ValueError(f"{cache}: subject {subject} has other measures in another "
                                 "cache. Fix: prepare each subject into one cache")
            out[subject] = row
    return out

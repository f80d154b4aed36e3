"""Clinical measures of one subject from its whole label stacks at ED and ES.

Grid: the label map's NATIVE grid, before resampling and the crop. Volumes are then exact
voxel counts (no interpolated label boundary), every short-axis slice is measured on the
plane it was acquired in and at its own in-plane resolution, and the crop (a 10 mm slab)
cannot cut the heart. The slice axis is the label image's third voxel axis (k, numpy axis 0
of a SimpleITK array), as in ACDC and M&Ms short-axis stacks; a 4D file's time index is
resolved by client/frame_io.read_frame first. Labels are in the internal convention
(common/labels.py: LV = 1 cavity, MYO = 2, RV = 3).

- Volumes (ml): voxel count x voxel volume (the header's spacing), per structure and phase.
- LV and RV EF: (EDV - ESV) / EDV, as a fraction. LV mass (g): MYO volume at ED x 1.05 g/ml.
- Wall thickness (mm), per slice holding both LV cavity and myocardium: the 2D Euclidean
  distance transform of "not LV cavity" (scipy.ndimage.distance_transform_edt, sampling =
  the in-plane spacing) read at the epicardial boundary pixels of the myocardium (MYO pixels
  4-adjacent to a pixel that is neither MYO nor LV, the image border included). Each such
  value is the distance from that epicardial pixel's centre to the nearest cavity pixel's
  centre, i.e. the number of myocardial pixels crossed on the shortest path: the wall's local
  thickness. Per slice: the maximum and the mean over its epicardial pixels. Subject: the
  maximum of the per-slice maxima and the mean of the per-slice means, at ED and at ES.
- Slices with myocardium but no cavity (apical caps, sometimes basal rims) are SKIPPED:
  there the wall is cut tangentially, and any in-plane size of the disc (its radius or
  diameter) measures where the slice meets the curved apex, not the wall.
- BSA (m^2, Mosteller) and LV mass index (g/m^2) where the loader knows height and weight.

docs/measures.md has the limits. A phase whose labels lack the LV cavity, the myocardium or
the RV (so no EF or thickness can be had) is a DataError naming the label file.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy.ndimage import distance_transform_edt

from fedcmr.client.data.errors import DataError
from fedcmr.client.data.frame_io import read_frame
from fedcmr.common.atomic import write_json
from fedcmr.common.frames import PHASES, Phase, SubjectRecord
from fedcmr.common.labels import Structure
from fedcmr.common.measures import (
    FEATURES,
    MYOCARDIAL_DENSITY,
    SubjectMeasures,
    body_surface_area,
)

#: Bump when the measuring code changes what it computes (cached measures are then redone).
MEASURES_VERSION = 1
#: Stage folder under the cache's .stages/: one JSON of label-derived FEATURES per subject.
MEASURES_STAGE = "measures"


def measures_part() -> str:
    """The measuring code's part of a subject's measures stage key."""
    return json.dumps({"measures": MEASURES_VERSION})


@dataclass(frozen=True)
class PhaseMeasures:
    """One phase of one subject, from its label stack."""

    lv_ml: float
    myo_ml: float
    rv_ml: float
    max_wall_mm: float  # max over slices of the per-slice maximum
    mean_wall_mm: float  # mean over slices of the per-slice mean
    slices: int  # slices whose wall was measured


def slice_wall_thickness(labels: np.ndarray, sampling: tuple[float, float]
                         ) -> tuple[float, float] | None:
    """(maximum, mean) wall thickness in mm of one (y, x) slice, None without a cavity or
    without myocardium. `sampling` is the in-plane spacing in array order (dy, dx)."""
    lv = labels == Structure.LV
    myo = labels == Structure.MYO
    if not lv.any() or not myo.any():
        return None
    outside = np.pad(~(lv | myo), 1, constant_values=True)
    touches = (outside[:-2, 1:-1] | outside[2:, 1:-1] | outside[1:-1, :-2]
               | outside[1:-1, 2:])
    epicardium = myo & touches
    if not epicardium.any():  # myocardium wholly inside the cavity: no wall to measure
        return None
    values = distance_transform_edt(~lv, sampling=sampling)[epicardium]
    return float(values.max()), float(values.mean())


def measure_phase(labels: np.ndarray, spacing: tuple[float, float, float]) -> PhaseMeasures:
    """Volumes and wall thickness of a (z, y, x) label stack; `spacing` is the image's
    (x, y, z) in mm as SimpleITK gives it. Structures are assumed present (check_phase)."""
    sx, sy, sz = (float(s) for s in spacing)
    voxel_ml = sx * sy * sz / 1000.0
    counts = np.bincount(labels.ravel(), minlength=len(Structure))
    walls = [w for sl in labels if (w := slice_wall_thickness(sl, (sy, sx))) is not None]
    return PhaseMeasures(
        lv_ml=float(counts[Structure.LV] * voxel_ml),
        myo_ml=float(counts[Structure.MYO] * voxel_ml),
        rv_ml=float(counts[Structure.RV] * voxel_ml),
        max_wall_mm=max((w[0] for w in walls), default=math.nan),
        mean_wall_mm=float(np.mean([w[1] for w in walls])) if walls else math.nan,
        slices=len(walls))


def check_phase(measured: PhaseMeasures, record: SubjectRecord, phase: Phase) -> None:
    """A phase the measures cannot be had from: a DataError naming its label file."""
    source = record.frames[phase]
    where = f"{phase}" + ("" if source.time_index is None else f" (frame {source.time_index})")
    numbers = record.label_map
    missing = [name for name, volume in (
        (f"LV cavity (label {numbers.lv})", measured.lv_ml),
        (f"myocardium (label {numbers.myo})", measured.myo_ml),
        (f"RV cavity (label {numbers.rv})", measured.rv_ml)) if volume <= 0]
    fix = ("segment the LV cavity, myocardium and RV cavity at ED and ES, or drop the "
           "subject")
    if missing:
        raise DataError(source.labels, f"no {', no '.join(missing)} at {where}: its clinical "
                        "measures (volumes, EF, wall thickness) cannot be computed", fix)
    if measured.slices == 0:
        raise DataError(source.labels, f"no slice at {where} holds both LV cavity and "
                        "myocardium, so no wall thickness can be measured", fix)


def label_features(ed: PhaseMeasures, es: PhaseMeasures) -> dict[str, float]:
    """The label-derived measures (common.measures.FEATURES) from both phases."""
    values = {
        "lv_edv_ml": ed.lv_ml, "lv_esv_ml": es.lv_ml, "lv_ef": (ed.lv_ml - es.lv_ml) / ed.lv_ml,
        "lv_mass_g": ed.myo_ml * MYOCARDIAL_DENSITY,
        "max_wall_ed_mm": ed.max_wall_mm, "mean_wall_ed_mm": ed.mean_wall_mm,
        "max_wall_es_mm": es.max_wall_mm, "mean_wall_es_mm": es.mean_wall_mm,
        "rv_edv_ml": ed.rv_ml, "rv_esv_ml": es.rv_ml, "rv_ef": (ed.rv_ml - es.rv_ml) / ed.rv_ml,
    }
    return {name: float(values[name]) for name in FEATURES}


def subject_row(record: SubjectRecord, features: dict[str, float]) -> SubjectMeasures:
    """measures.csv's row: label-derived features plus what height and weight give."""
    height, weight = record.height_cm, record.weight_kg
    bsa = body_surface_area(height, weight) if height and weight else None
    return SubjectMeasures(
        subject=record.subject, centre=record.centre, label=int(record.diagnosis), **features,
        height_cm=height, weight_kg=weight, bsa_m2=bsa,
        lv_mass_index_g_m2=None if bsa is None else features["lv_mass_g"] / bsa)


def _read_stage(path: Path) -> dict[str, float] | None:
    """Cached features, or None when absent or unusable (then they are measured again)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        features = {name: float(data[name]) for name in FEATURES}
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if data.get("version") != MEASURES_VERSION or not all(map(math.isfinite,
                                                               features.values())):
        return None
    return features


def measure_subject(record: SubjectRecord, stage_file: Path,
                    native: dict[Phase, sitk.Image] | None = None
                    ) -> tuple[SubjectMeasures, bool]:
    """The subject's measures and whether they were computed now (False: from the stage
    file). `native` may hold a phase's label image already read on its native grid
    (internal numbering); a phase not in it is read with read_frame."""
    features = _read_stage(stage_file)
    if features is not None:
        return subject_row(record, features), False
    phases = {}
    for phase in PHASES:
        labels = (native or {}).get(phase)
        if labels is None:
            _, labels = read_frame(record.frames[phase], record.label_map)
        measured = measure_phase(sitk.GetArrayViewFromImage(labels), labels.GetSpacing()[:3])
        check_phase(measured, record, phase)
        phases[phase] = measured
    features = label_features(phases["ED"], phases["ES"])
    write_json(stage_file, {"version": MEASURES_VERSION, **features})
    return subject_row(record, features), True

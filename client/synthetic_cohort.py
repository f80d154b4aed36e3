"""A synthetic four-centre HCM-vs-normal cohort, written in the real M&Ms and ACDC layouts.

The real datasets need registration and cannot be downloaded here, so every loader, the
preprocessing and the federated runs are exercised on this stand-in. It is built to be a fair
one: the same folder layout, file names, label numberings, frame conventions and metadata as
the real releases; a short-axis left ventricle that contracts over a cine cycle; HCM that is
thicker than normal with overlap (so image evidence cannot be perfect); and centres that differ
like scanners do (spacing, slice thickness, matrix, vendor contrast, bias field, noise), with
ACDC furthest from the rest. docs/synthetic-cohort.md describes the model and its numbers.

Every subject is seeded from (seed, centre, pathology, index) with numpy's SeedSequence, so the
voxels do not depend on the worker count, and a smaller `scale` keeps a prefix of each class.
"""

from __future__ import annotations

import csv
import json
import math
import multiprocessing
import shutil
import time
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import SimpleITK as sitk
from pydantic import BaseModel
from tqdm import tqdm

from fedcmr.common.centres import (
    ACDC_CENTRE,
    MNMS_DEFAULT_CENTRES,
    MNMS_VENDORS,
    TABLE1_COUNTS,
)
from fedcmr.common.labels import ACDC_LABELS, MNMS_LABELS, LabelMap, Structure

Dataset = Literal["mnms", "acdc"]

#: The M&Ms metadata file name of the public release (the loader looks for it).
MNMS_CSV_NAME = "211230_M&Ms_Dataset_information_diagnosis_opendataset.csv"
MNMS_CSV_HEADER = (
    "External code", "VendorName", "Vendor", "Centre", "ED", "ES",
    "Age", "Pathology", "Sex", "Height", "Weight",
)  # fmt: skip
#: M&Ms release parts and the share of subjects each gets (about 60/15/25 as released).
MNMS_PARTS: tuple[tuple[str, float], ...] = (
    ("Training/Labeled", 0.60),
    ("Validation", 0.15),
    ("Testing", 0.25),
)
#: Real ACDC numbering: the first patient number of each group.
ACDC_FIRST_NUMBER = {"DCM": 1, "HCM": 21, "MINF": 41, "NOR": 61, "RV": 81}
PATHOLOGIES: tuple[str, ...] = ("NOR", "HCM", "DCM", "HHD")
#: Written at the output root; only folders under a marked root are ever cleared.
MARKER_NAME = ".fedcmr-synthetic.json"


# --------------------------------------------------------------------------- centre profiles


@dataclass(frozen=True)
class Scanner:
    """How one centre acquires and scales its images (Table 1 ranges plus vendor behaviour)."""

    centre: str
    dataset: Dataset
    vendor: str
    spacing_mm: tuple[float, float]  # in-plane pixel size range
    slice_mm: tuple[float, ...]  # slice spacing choices
    slice_p: tuple[float, ...]  # their probabilities
    fov_mm: tuple[float, float]  # field of view along x; y is 80-95% of it
    frames: tuple[int, int]  # cine frame count range (inclusive)
    ed_late_p: float  # chance the sequence starts after ED (then ED index > ES index)
    gamma: float  # vendor contrast curve: intensity = relative ** gamma
    myo_contrast: float  # vendor factor on myocardium brightness relative to blood
    scale: float  # int16 units of blood signal
    noise: tuple[float, float]  # noise sigma relative to blood (range)
    bias: float  # log-amplitude of the smooth multiplicative bias field
    oblique: bool  # oblique direction cosines and a scanner origin (M&Ms) or identity (ACDC)

    @property
    def vendor_letter(self) -> str:
        return next(k for k, v in MNMS_VENDORS.items() if v == self.vendor)

    @property
    def centre_number(self) -> str:
        """The M&Ms CSV centre number (from the default table in common/centres.py)."""
        return next(k for k, v in MNMS_DEFAULT_CENTRES.items() if v.name == self.centre)


SCANNERS: dict[str, Scanner] = {
    "Vall d'Hebron": Scanner(
        "Vall d'Hebron", "mnms", "Philips", (1.1516, 1.2362), (10.0,), (1.0,), (230, 280),
        (10, 13), 0.5, 0.85, 0.95, 450.0, (0.012, 0.02), 0.20, True,
    ),
    "Sagrada Familia": Scanner(
        "Sagrada Familia", "mnms", "Siemens", (0.9765, 1.6200), (8.0, 9.0, 10.0),
        (0.35, 0.15, 0.5), (230, 280), (10, 13), 0.1, 1.0, 1.0, 300.0, (0.015, 0.025), 0.15,
        True,
    ),
    "SantPau": Scanner(
        "SantPau", "mnms", "Canon", (0.7955, 1.8228), (10.0,), (1.0,), (230, 270), (10, 13),
        0.4, 1.12, 1.08, 350.0, (0.018, 0.028), 0.22, True,
    ),
    ACDC_CENTRE: Scanner(
        ACDC_CENTRE, "acdc", "Siemens", (1.3400, 1.6800), (5.0, 6.0, 7.0, 8.0, 10.0),
        (0.1, 0.1, 0.1, 0.1, 0.6), (260, 320), (10, 12), 0.0, 1.35, 1.25, 220.0,
        (0.035, 0.05), 0.45, False,
    ),
}  # fmt: skip
CENTRE_ORDER: tuple[str, ...] = tuple(TABLE1_COUNTS)


# --------------------------------------------------------------------------- subject plan


@dataclass(frozen=True)
class Heart:
    """Left/right ventricle shape and motion of one subject, in mm, at end-diastole."""

    cx: float  # LV axis position in the image (mm from the first voxel)
    cy: float
    drift_x: float  # LV axis drift from base to apex (mm): the long axis is not exactly z
    drift_y: float
    length: float  # base to cavity apex (mm)
    cap: float  # apical myocardium below the cavity apex (mm)
    taper: float  # cavity profile exponent: larger = blunter base, sharper apex
    r_cavity: float  # basal cavity radius (mm)
    ellipticity: float  # cavity elongation (relative)
    ell_angle: float
    harmonics: tuple[float, ...]  # small cavity-contour irregularity (cos/sin, k = 3..5)
    pattern: str  # wall-thickness pattern: normal, septal, concentric, apical
    t_max: float  # maximal ED wall thickness (mm)
    t_free: float  # free-wall (lateral) thickness (mm)
    bump_s: float  # long-axis position (0 base .. 1 apex) of the thickest wall
    bump_w: float
    septum: float  # direction of the septum (radians, image axes)
    kappa: float  # angular concentration of septal thickening
    ef: float  # ejection fraction
    shortening: float  # long-axis shortening fraction at ES
    rv_a: float  # RV semi-axes (tangential, radial) and reach down the LV (fraction)
    rv_b: float
    rv_reach: float
    rv_ef: float
    papillary: tuple[float, float]  # papillary muscle angles
    pap_r: float
    fat: float  # epicardial fat thickness (mm)
    fat_angle: float


@dataclass(frozen=True)
class Body:
    """Static surroundings: torso, fat, muscle, lungs, liver, spine and aorta."""

    bx: float  # body centre relative to the LV axis (mm)
    by: float
    a: float  # body semi-axes (mm) and rotation
    b: float
    angle: float
    fat: float  # subcutaneous fat (mm)
    muscle: float  # chest-wall muscle (mm)
    lungs: tuple[float, ...]  # per lung: dx, dy, semi-a, semi-b, angle (relative to LV)
    liver: tuple[float, float, float, float]  # dx, dy, semi-a, semi-b


@dataclass(frozen=True)
class Tissue:
    """Relative (blood = 1) intensities of one subject on its centre's scanner."""

    blood: float
    myo: float
    fat: float
    muscle: float
    soft: float
    liver: float
    lung: float
    gain: float  # subject-level receiver gain
    noise: float  # sigma relative to blood


@dataclass(frozen=True)
class SubjectPlan:
    """Everything needed to render and write one subject, drawn from its own seed."""

    centre: str
    pathology: str
    index: int  # within (centre, pathology)
    entropy: tuple[int, ...]  # SeedSequence entropy for the image noise and texture
    name: str  # M&Ms code or ACDC patientNNN
    part: str  # M&Ms release part folder, or "training" for ACDC
    spacing: float
    dz: float
    shape: tuple[int, int, int]  # (nz, ny, nx)
    z0: float  # position of the first slice relative to the ED base (mm)
    frames: int
    ed: int  # 0-based time indices
    es: int
    origin: tuple[float, float, float]
    direction: tuple[float, ...]  # 3x3 row-major
    heart: Heart
    body: Body
    tissue: Tissue
    age: int
    sex: str
    height: float
    weight: float

    @property
    def scanner(self) -> Scanner:
        return SCANNERS[self.centre]

    @property
    def dataset(self) -> Dataset:
        return self.scanner.dataset

    @property
    def label_map(self) -> LabelMap:
        return MNMS_LABELS if self.dataset == "mnms" else ACDC_LABELS

    @property
    def folder(self) -> Path:
        """Subject folder relative to the output root."""
        if self.dataset == "mnms":
            return Path("mnms") / self.part / self.name
        return Path("acdc") / self.part / self.name


def class_counts(scale: float) -> dict[str, dict[str, int]]:
    """Subjects per centre and pathology: Table 1 at scale 1, at least 2 per study class.

    Other pathologies (which loaders must skip): at scale 1 one DCM and one HHD per M&Ms centre
    and two DCM in ACDC; at any scale at least one HHD (first M&Ms centre) and one ACDC DCM.
    """
    if not 0 < scale <= 1:
        raise ValueError(f"scale must be in (0, 1], got {scale}")
    counts: dict[str, dict[str, int]] = {}
    for i, (centre, (nor, hcm)) in enumerate(TABLE1_COUNTS.items()):
        c = {"NOR": max(2, round(nor * scale)), "HCM": max(2, round(hcm * scale))}
        if SCANNERS[centre].dataset == "mnms":
            c["DCM"] = round(scale)
            c["HHD"] = max(1 if i == 0 else 0, round(scale))
        else:
            c["DCM"] = max(1, round(2 * scale))
            c["HHD"] = 0
        counts[centre] = c
    return counts


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(list(key)))


def _mnms_code(rng: np.random.Generator) -> str:
    """Six characters, letter-digit alternating, like real M&Ms codes (e.g. A0S9V9)."""
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    return "".join(
        letters[rng.integers(26)] if i % 2 == 0 else str(rng.integers(10)) for i in range(6)
    )


def _draw_thickness(rng: np.random.Generator, pathology: str, centre: str) -> tuple[str, float]:
    """Wall-thickness pattern and maximal ED wall thickness (mm), overlapping between classes.

    Normal hearts mostly reach 7-12 mm with a tail of thick normals to 13.5 mm. HCM is mostly
    14-30 mm, but half is borderline (10-14.5 mm: mild phenotypes, hypertrophy off the
    measured slices), more so in ACDC, whose HCM criterion is LV mass, not thickness. Image
    evidence therefore cannot separate the classes perfectly (max-thickness AUC about 0.9).
    """
    if pathology == "NOR":
        return "normal", float(np.clip(rng.normal(9.8, 1.7), 6.0, 13.5))
    if pathology == "DCM":
        return "normal", float(rng.uniform(5.5, 8.5))
    if pathology == "HHD":
        return "concentric", float(rng.uniform(11.0, 15.0))
    pattern = str(rng.choice(["septal", "concentric", "apical"], p=[0.6, 0.25, 0.15]))
    mild_p = 0.6 if centre == ACDC_CENTRE else 0.5
    if rng.random() < mild_p:
        return pattern, float(rng.uniform(10.0, 14.5))
    return pattern, float(min(30.0, 14.0 + rng.gamma(2.0, 3.0)))


def _draw_heart(rng: np.random.Generator, pathology: str, centre: str, fov: tuple[float, float]):
    pattern, t_max = _draw_thickness(rng, pathology, centre)
    hcm = pathology == "HCM"
    r_cav = {"NOR": (25.0, 2.2), "HCM": (21.5, 2.5), "DCM": (33.0, 2.5), "HHD": (24.0, 2.0)}
    ef = {"NOR": (0.55, 0.70), "HCM": (0.62, 0.80), "DCM": (0.15, 0.35), "HHD": (0.52, 0.68)}
    if pattern == "normal":
        t_free = t_max / rng.uniform(1.0, 1.25)
    elif pattern == "concentric":
        t_free = t_max * rng.uniform(0.8, 0.95)
    else:
        t_free = min(t_max, rng.uniform(7.0, 11.0))
    bump_s = rng.uniform(0.7, 0.85) if pattern == "apical" else rng.uniform(0.15, 0.5)
    septum = math.pi + rng.uniform(-0.15, 0.45)  # RV to the image left, slightly below
    pap0 = septum + math.pi + rng.uniform(-0.9, -0.5)
    return Heart(
        cx=fov[0] / 2 + rng.uniform(-15, 15),
        cy=fov[1] / 2 + rng.uniform(-15, 10),
        drift_x=rng.normal(0, 6),
        drift_y=rng.normal(0, 6),
        length=rng.uniform(70, 88) if hcm else rng.uniform(75, 92),
        cap=max(6.0, 0.8 * t_free),
        taper=rng.uniform(2.2, 3.5),
        r_cavity=float(np.clip(rng.normal(*r_cav[pathology]), 15, 40)),
        ellipticity=rng.uniform(0.0, 0.08),
        ell_angle=rng.uniform(0, math.pi),
        harmonics=tuple(rng.normal(0, 0.015, 6)),
        pattern=pattern,
        t_max=t_max,
        t_free=t_free,
        bump_s=bump_s,
        bump_w=rng.uniform(0.22, 0.35),
        septum=septum,
        kappa=rng.uniform(1.5, 4.0),
        ef=rng.uniform(*ef[pathology]),
        shortening=rng.uniform(0.05, 0.10) if hcm else rng.uniform(0.08, 0.15),
        rv_a=rng.uniform(45, 58),
        rv_b=rng.uniform(16, 24),
        rv_reach=rng.uniform(0.7, 0.9),
        rv_ef=rng.uniform(0.2, 0.32),
        papillary=(pap0, pap0 + rng.uniform(1.2, 1.8)),
        pap_r=rng.uniform(1.8, 3.0) * (1.25 if hcm else 1.0),
        fat=rng.uniform(1.0, 5.0),
        fat_angle=septum + rng.uniform(-0.5, 0.5),
    )


def _draw_body(rng: np.random.Generator) -> Body:
    return Body(
        bx=rng.uniform(-40, -20),
        by=rng.uniform(0, 20),
        a=rng.uniform(150, 185),
        b=rng.uniform(100, 125),
        angle=rng.uniform(-0.2, 0.2),
        fat=rng.uniform(6, 22),
        muscle=rng.uniform(6, 12),
        lungs=(
            rng.uniform(55, 68), rng.uniform(10, 30), rng.uniform(26, 36), rng.uniform(48, 62),
            rng.uniform(-0.5, 0.0),
            rng.uniform(-100, -85), rng.uniform(10, 30), rng.uniform(28, 38),
            rng.uniform(50, 65), rng.uniform(0.0, 0.5),
        ),
        liver=(rng.uniform(-90, -60), rng.uniform(55, 80), rng.uniform(70, 90),
               rng.uniform(50, 65)),
    )  # fmt: skip


def _draw_tissue(rng: np.random.Generator, sc: Scanner) -> Tissue:
    return Tissue(
        blood=1.0,
        myo=0.27 * sc.myo_contrast * rng.uniform(0.9, 1.1),
        fat=rng.uniform(0.75, 0.9),
        muscle=rng.uniform(0.24, 0.32),
        soft=rng.uniform(0.35, 0.45),
        liver=rng.uniform(0.33, 0.45),
        lung=rng.uniform(0.03, 0.07),
        gain=rng.uniform(0.8, 1.25),
        noise=rng.uniform(*sc.noise),
    )


def _draw_direction(rng: np.random.Generator, oblique: bool) -> tuple[float, ...]:
    """Short-axis planes are double-oblique on the scanner; ACDC files carry identity."""
    if not oblique:
        return (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    a, b, c = rng.uniform(-0.9, 0.9), rng.uniform(-0.8, 0.8), rng.uniform(-math.pi, math.pi)
    rz = np.array([[math.cos(c), -math.sin(c), 0], [math.sin(c), math.cos(c), 0], [0, 0, 1]])
    ry = np.array([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]])
    rx = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    return tuple(float(round(v, 6)) for v in (rz @ ry @ rx).ravel())


def _draw_timing(rng: np.random.Generator, sc: Scanner) -> tuple[int, int, int]:
    """Frame count and 0-based ED/ES indices; some sequences start after ED (ED > ES)."""
    frames = int(rng.integers(sc.frames[0], sc.frames[1] + 1))
    es_cycle = int(round(frames * rng.uniform(0.30, 0.42)))
    shift = int(rng.integers(1, 4)) if rng.random() < sc.ed_late_p else 0
    return frames, (-shift) % frames, (es_cycle - shift) % frames


def _spacing(rng: np.random.Generator, sc: Scanner) -> float:
    lo, hi = sc.spacing_mm
    return float(round(rng.uniform(lo + 1e-4, hi - 1e-4), 4))


def _plan_subject(seed: int, centre: str, pathology: str, index: int, attempt: int = 0):
    key = (seed, CENTRE_ORDER.index(centre), PATHOLOGIES.index(pathology), index)
    rng = _rng(*key, attempt)
    sc = SCANNERS[centre]
    spacing = _spacing(rng, sc)
    dz = float(rng.choice(sc.slice_mm, p=sc.slice_p))
    fov_x = rng.uniform(*sc.fov_mm)
    fov = (fov_x, fov_x * rng.uniform(0.8, 0.95))
    heart = _draw_heart(rng, pathology, centre, fov)
    z0 = -rng.uniform(0.5, 1.5) * dz
    nz = int((heart.length + 0.6 * heart.cap - z0) // dz) + 1
    frames, ed, es = _draw_timing(rng, sc)
    if sc.dataset == "mnms":
        name = _mnms_code(rng)
        u = rng.random()
        part = next(p for p, cum in _cumulative(MNMS_PARTS) if u < cum)
    else:
        name = f"patient{ACDC_FIRST_NUMBER[pathology] + index:03d}"
        part = "training"
    sex = "M" if rng.random() < (0.7 if pathology == "HCM" else 0.55) else "F"
    height = rng.normal(175 if sex == "M" else 162, 7)
    origin = (0.0, 0.0, 0.0)
    if sc.oblique:
        origin = tuple(float(round(v, 3)) for v in rng.uniform([-200, -200, -80], [0, 0, 80]))
    return SubjectPlan(
        centre=centre,
        pathology=pathology,
        index=index,
        entropy=(*key, attempt, 1),
        name=name,
        part=part,
        spacing=spacing,
        dz=dz,
        shape=(nz, int(round(fov[1] / spacing)), int(round(fov[0] / spacing))),
        z0=z0,
        frames=frames,
        ed=ed,
        es=es,
        origin=origin,
        direction=_draw_direction(rng, sc.oblique),
        heart=heart,
        body=_draw_body(rng),
        tissue=_draw_tissue(rng, sc),
        age=int(rng.integers(18, 81)),
        sex=sex,
        height=float(round(height, 0)),
        weight=float(round(rng.normal(24.5, 3.5) * (height / 100) ** 2, 1)),
    )


def _cumulative(parts: tuple[tuple[str, float], ...]) -> list[tuple[str, float]]:
    total, out = 0.0, []
    for name, share in parts:
        total += share
        out.append((name, total))
    out[-1] = (out[-1][0], 1.0 + 1e-9)
    return out


def plan_cohort(seed: int = 0, scale: float = 1.0) -> list[SubjectPlan]:
    """Every subject's plan, in a fixed order (centre, pathology, index); codes are unique."""
    plans: list[SubjectPlan] = []
    names: set[str] = set()
    for centre, counts in class_counts(scale).items():
        for pathology in PATHOLOGIES:
            for index in range(counts[pathology]):
                attempt = 0
                plan = _plan_subject(seed, centre, pathology, index)
                while plan.name in names:  # a repeated 6-character code: draw again
                    attempt += 1
                    plan = _plan_subject(seed, centre, pathology, index, attempt)
                names.add(plan.name)
                plans.append(plan)
    return plans


# --------------------------------------------------------------------------- rendering


def _soft(d: np.ndarray, width: float) -> np.ndarray:
    """Partial-volume coverage of a boundary at signed distance d (mm, inside > 0)."""
    return np.clip(0.5 + d / width, 0.0, 1.0)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma_px: float):
    """Unit-variance Gaussian-filtered noise in the last two axes (texture, vessels)."""
    white = rng.standard_normal(shape, dtype=np.float32)
    ky = np.fft.fftfreq(shape[-2])[:, None]
    kx = np.fft.rfftfreq(shape[-1])[None, :]
    filt = np.exp(-2 * (math.pi * sigma_px) ** 2 * (kx**2 + ky**2))
    field = np.fft.irfft2(np.fft.rfft2(white) * filt, s=shape[-2:]).astype(np.float32)
    field /= field.std() + 1e-6
    return field


def _ellipse(x: np.ndarray, y: np.ndarray, a: float, b: float, angle: float) -> np.ndarray:
    """Approximate signed distance (mm, inside > 0) to a rotated ellipse at the origin."""
    ca, sa = math.cos(angle), math.sin(angle)
    u, v = x * ca + y * sa, -x * sa + y * ca
    return (1.0 - np.sqrt((u / a) ** 2 + (v / b) ** 2)) * min(a, b)


def _contraction(t: int, plan: SubjectPlan) -> float:
    """0 at ED, 1 at ES: cosine ejection, then rapid filling and diastasis."""
    u = (t - plan.ed) % plan.frames
    systole = (plan.es - plan.ed) % plan.frames
    if u <= systole:
        return 0.5 * (1 - math.cos(math.pi * u / systole))
    v = (u - systole) / (plan.frames - systole)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, 1.6 * v)))


def _background(plan: SubjectPlan, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Static surroundings (relative intensity) and the body mask, each (nz, ny, nx)."""
    nz, ny, nx = plan.shape
    h, b, tis, sp = plan.heart, plan.body, plan.tissue, plan.spacing
    x = (np.arange(nx, dtype=np.float32) * sp - h.cx)[None, :]
    y = (np.arange(ny, dtype=np.float32) * sp - h.cy)[:, None]
    w = sp
    texture = _smooth_noise(rng, (nz, ny, nx), 3.0 / sp)
    fine = _smooth_noise(rng, (nz, ny, nx), 0.8 / sp)
    depth = _ellipse(x - b.bx, y - b.by, b.a, b.b, b.angle)
    img = np.zeros((nz, ny, nx), np.float32)
    inside = _soft(depth, w)
    fat = inside * (1 - _soft(depth - b.fat, w))
    muscle = _soft(depth - b.fat, w) * (1 - _soft(depth - b.fat - b.muscle, w))
    core = _soft(depth - b.fat - b.muscle, w)
    img += fat * tis.fat * (1 + 0.06 * texture) + muscle * tis.muscle * (1 + 0.08 * texture)
    img += core * tis.soft * (1 + 0.15 * texture)
    marbling = np.clip(1.5 * (_smooth_noise(rng, (nz, ny, nx), 4.0 / sp) - 1.0), 0, 1) * core
    img = img * (1 - marbling) + marbling * tis.fat * (1 + 0.06 * texture)
    lung = np.zeros_like(img)
    for i in range(0, len(b.lungs), 5):
        dx, dy, la, lb, ang = b.lungs[i : i + 5]
        lung = np.maximum(lung, _soft(_ellipse(x - dx, y - dy, la, lb, ang), w))
    vessels = np.clip(fine - 2.2, 0, None) * 0.6
    img = img * (1 - lung) + lung * (tis.lung + vessels) * core
    s = ((plan.z0 + plan.dz * np.arange(nz)) / h.length).astype(np.float32)[:, None, None]
    liver_scale = np.sqrt(np.clip((s - 0.3) / 0.5, 0, 1))
    ldx, ldy, la, lbb = b.liver
    liver = _soft(_ellipse(x - ldx, y - ldy, la, lbb, 0.3) - (1 - liver_scale) * lbb, w)
    img = img * (1 - liver) + liver * tis.liver * (1 + 0.1 * texture)
    aorta = _soft(11.0 - np.hypot(x - 12.0, y - 68.0), w)
    spine = _soft(17.0 - np.hypot(x + 12.0, y - 98.0), w)
    img = img * (1 - aorta) + aorta * tis.blood * 0.95
    img = img * (1 - spine) + spine * (0.45 + 0.1 * texture)
    return np.clip(img * inside, 0, None), inside


@dataclass
class _Planes:
    """Static polar geometry of the heart crop, for a set of z positions."""

    z: np.ndarray  # (P, 1, 1) mm relative to the ED base
    r: np.ndarray  # (P, hy, hx) distance from the LV axis (mm)
    shape_f: np.ndarray  # cavity contour factor (ellipticity, harmonics)
    vm: np.ndarray  # septal concentration 0..1
    fat_f: np.ndarray  # epicardial-fat angular profile 0..1
    u: np.ndarray  # coordinates in the septal frame (tangential, radial toward the RV)
    v: np.ndarray
    cos_t: np.ndarray
    sin_t: np.ndarray
    window: tuple[slice, slice]


def _planes(plan: SubjectPlan, offsets: tuple[float, ...]) -> _Planes:
    nz, ny, nx = plan.shape
    h, sp = plan.heart, plan.spacing
    half = 80.0  # mm around the LV axis: LV, RV, atrium and fat fit inside
    i0, i1 = max(0, int((h.cx - half) / sp)), min(nx, int((h.cx + half) / sp) + 1)
    j0, j1 = max(0, int((h.cy - half) / sp)), min(ny, int((h.cy + half) / sp) + 1)
    zc = plan.z0 + plan.dz * np.arange(nz, dtype=np.float32)
    z = (zc[:, None] + np.asarray(offsets, np.float32)[None, :]).ravel()[:, None, None]
    frac = z / h.length
    x = np.arange(i0, i1, dtype=np.float32)[None, None, :] * sp - h.cx - h.drift_x * frac
    y = np.arange(j0, j1, dtype=np.float32)[None, :, None] * sp - h.cy - h.drift_y * frac
    r = np.hypot(x, y)
    theta = np.arctan2(y, x)
    cos_t, sin_t = np.cos(theta), np.sin(theta)
    shape_f = 1 + h.ellipticity * np.cos(2 * (theta - h.ell_angle))
    for k, (a, b) in enumerate(zip(h.harmonics[0::2], h.harmonics[1::2], strict=True)):
        shape_f += a * np.cos((k + 3) * theta) + b * np.sin((k + 3) * theta)
    vm = np.exp(h.kappa * (np.cos(theta - h.septum) - 1))
    fat_f = np.exp(1.5 * (np.cos(theta - h.fat_angle) - 1))
    cs, ss = math.cos(h.septum), math.sin(h.septum)
    v = x * cs + y * ss
    u = -x * ss + y * cs
    return _Planes(
        z=z.astype(np.float32),
        r=r,
        shape_f=shape_f.astype(np.float32),
        vm=vm.astype(np.float32),
        fat_f=fat_f.astype(np.float32),
        u=u,
        v=v,
        cos_t=cos_t,
        sin_t=sin_t,
        window=(slice(j0, j1), slice(i0, i1)),
    )


def _wall(h: Heart, s: np.ndarray, vm: np.ndarray) -> np.ndarray:
    """ED wall thickness (mm) by long-axis position s and septal concentration vm."""
    sc = np.clip(s, 0, 1)
    bump = np.exp(-(((sc - h.bump_s) / h.bump_w) ** 2))
    if h.pattern == "normal":
        f = 1 - 0.3 * sc**2
        return (h.t_free + (h.t_max - h.t_free) * vm) * f
    if h.pattern == "concentric":
        f = 1 - 0.2 * sc**2
        return (h.t_free + (h.t_max - h.t_free) * vm) * f
    if h.pattern == "apical":
        return h.t_free + (h.t_max - h.t_free) * bump * (0.85 + 0.15 * vm)
    return h.t_free * (1 - 0.2 * sc**2) + (h.t_max - h.t_free) * bump * vm


@dataclass
class _Shape:
    """Heart boundaries at one contraction state, on a set of planes (all mm)."""

    s: np.ndarray  # long-axis position (0 base, 1 cavity apex), (P, 1, 1)
    z_base: float
    endo: np.ndarray  # cavity radius by angle
    epi: np.ndarray  # epicardial radius by angle
    rv_d: np.ndarray  # signed distance into the RV ellipse
    rv_on: np.ndarray  # planes with an RV


def _heart_shape(plan: SubjectPlan, pl: _Planes, c: float) -> _Shape:
    """Contract the ED heart to state c: apex fixed, base descends, myocardial area kept."""
    h = plan.heart
    squeeze = 1 - h.shortening * c
    length = h.length * squeeze
    z_base = h.length - length
    s = (pl.z - z_base) / length
    s_in = np.clip(s, 0, 1)
    r_cav = h.r_cavity * np.sqrt(np.clip(1 - s_in**h.taper, 0, 1)) * (s >= 0) * (s < 1)
    endo_ed = r_cav * pl.shape_f
    wall = _wall(h, s, pl.vm)
    radial = 1 - c * (1 - math.sqrt((1 - h.ef) / (1 - h.shortening)))
    endo = endo_ed * radial
    epi = np.sqrt(endo**2 + ((endo_ed + wall) ** 2 - endo_ed**2) / squeeze)
    q = np.clip((pl.z - h.length) / h.cap, 0, 1)  # apical cap below the cavity
    cap_r = _wall(h, np.ones_like(s), pl.vm) / math.sqrt(squeeze) * np.sqrt(1 - q**2)
    epi = np.where(s >= 1, cap_r * (pl.z < h.length + h.cap), epi * (s >= 0))
    rv_g = np.sqrt(np.clip(1 - (np.clip(s, 0, None) / h.rv_reach) ** 2.5, 0, 1))
    rv_g = rv_g * (s >= -0.12)
    rv_k = 1 - c * h.rv_ef
    rv_a, rv_b = h.rv_a * rv_g * rv_k + 1e-3, h.rv_b * rv_g * rv_k + 1e-3
    rv_c = (h.r_cavity + h.t_free) * 0.55 + h.rv_b * 0.6 * (1 - 0.4 * c * h.rv_ef)
    rv_q = np.sqrt((pl.u / rv_a) ** 2 + ((pl.v - rv_c) / rv_b) ** 2)
    return _Shape(s, z_base, endo, epi, (1 - rv_q) * rv_b, rv_g > 0)


def _heart_labels(pl: _Planes, sh: _Shape) -> np.ndarray:
    """Hard labels (internal numbering): myocardium always separates the two cavities."""
    rv = np.where(sh.rv_d > 0, np.uint8(Structure.RV), np.uint8(0))
    return np.where(
        pl.r < sh.endo, np.uint8(Structure.LV), np.where(pl.r < sh.epi, np.uint8(Structure.MYO), rv)
    )


def _heart_image(plan: SubjectPlan, pl: _Planes, sh: _Shape, c: float, base: np.ndarray):
    """Paint atrium, epicardial fat, RV, LV and papillary muscles over the surroundings."""
    h, tis, w = plan.heart, plan.tissue, plan.spacing
    r, s = pl.r, sh.s
    x, y = r * pl.cos_t, r * pl.sin_t
    img = base.copy()
    atrium = _soft(h.r_cavity * 0.95 - np.hypot(x + 4, y - 6), w)
    atrium *= (s < 0) & (pl.z > sh.z_base - 40)
    layers = (
        (atrium, tis.blood * 0.92),
        (_soft(sh.epi + h.fat * pl.fat_f - r, w) * (sh.epi > 0), tis.fat),
        (_soft(sh.rv_d + 2.5, w) * sh.rv_on, tis.myo),
        (_soft(sh.rv_d, w), tis.blood * 0.97),
        (_soft(sh.epi - r, w), tis.myo),
        (_soft(sh.endo - r, w), tis.blood),
    )
    for alpha, value in layers:
        img += alpha * (value - img)
    for angle in h.papillary:
        px, py = 0.7 * sh.endo * math.cos(angle), 0.7 * sh.endo * math.sin(angle)
        pap = _soft(h.pap_r * (1 + 0.3 * c) - np.hypot(x - px, y - py), w)
        pap *= (s > 0.2) & (s < 0.8)
        img += pap * (tis.myo - img)
    return img


@dataclass
class Rendered:
    """A rendered subject: int16 image and internal-numbering labels, both (t, z, y, x)."""

    image: np.ndarray
    labels: np.ndarray  # labelled at ED and ES only (internal Structure numbering)


def _bias(plan: SubjectPlan, rng: np.random.Generator) -> np.ndarray:
    """Smooth multiplicative field (coil sensitivity), 1 at the heart, (nz, ny, nx)."""
    nz, ny, nx = plan.shape
    h = plan.heart
    half = 0.5 * max(nx, ny) * plan.spacing
    x = ((np.arange(nx, dtype=np.float32) * plan.spacing - h.cx) / half)[None, None, :]
    y = ((np.arange(ny, dtype=np.float32) * plan.spacing - h.cy) / half)[None, :, None]
    z = ((plan.z0 + plan.dz * np.arange(nz, dtype=np.float32)) / 100.0)[:, None, None]
    k = rng.normal(0, 1, 7)
    k[3:6] = -np.abs(k[3:6])  # coils brighten the periphery less than the near side
    field = (k[0] * x + k[1] * y + 0.3 * k[2] * z + 0.5 * k[3] * x**2 + 0.5 * k[4] * y**2
             + 0.5 * k[5] * x * y - 0.8 * y)  # fmt: skip
    return np.exp(plan.scanner.bias * field / 2).astype(np.float32)


def render_subject(plan: SubjectPlan, frames: Iterable[int] | None = None) -> Rendered:
    """Render the cine (all frames, or those given) on the centre's scanner model."""
    times = list(range(plan.frames)) if frames is None else list(frames)
    rng = _rng(*plan.entropy)
    sc, tis = plan.scanner, plan.tissue
    offsets = (-plan.dz / 4, plan.dz / 4)  # through-slice partial volume: two sub-planes
    pl = _planes(plan, offsets)
    pl_mid = _planes(plan, (0.0,))  # labels are read at the slice centre
    background, body = _background(plan, rng)
    bias = _bias(plan, rng)
    # Air is quieter than tissue, as in real magnitude images after the vendors' background
    # filtering (the real ACDC sample: air std 1-4 units against blood 200-350).
    sigma = tis.noise * sc.scale * tis.gain * (0.15 + 0.85 * body)
    nz = plan.shape[0]
    win = (slice(None), *pl.window)
    base = np.repeat(background[win], len(offsets), axis=0)
    image = np.empty((len(times), *plan.shape), np.int16)
    labels = np.zeros((len(times), *plan.shape), np.uint8)
    gain = sc.scale * tis.gain * bias
    static = gain * np.power(background, sc.gamma)  # the surroundings do not move
    for i, t in enumerate(times):
        c = _contraction(t, plan)
        crop = _heart_image(plan, pl, _heart_shape(plan, pl, c), c, base)
        crop = crop.reshape(nz, len(offsets), *crop.shape[1:]).mean(1)
        signal = static.copy()
        signal[win] = gain[win] * np.power(np.maximum(crop, 0), sc.gamma)
        if t in (plan.ed, plan.es):
            labels[i][win] = _heart_labels(pl_mid, _heart_shape(plan, pl_mid, c))
        noisy = np.hypot(
            signal + sigma * rng.standard_normal(signal.shape, dtype=np.float32),
            sigma * rng.standard_normal(signal.shape, dtype=np.float32),
        )
        image[i] = np.clip(np.rint(noisy), 0, 32767).astype(np.int16)
    return Rendered(image=image, labels=labels)


def render_labels(plan: SubjectPlan, t: int) -> np.ndarray:
    """Label map (internal numbering, (z, y, x)) at frame t, without rendering the image."""
    pl = _planes(plan, (0.0,))
    out = np.zeros(plan.shape, np.uint8)
    out[(slice(None), *pl.window)] = _heart_labels(
        pl, _heart_shape(plan, pl, _contraction(t, plan))
    )
    return out


# --------------------------------------------------------------------------- measurement


def max_wall_thickness_mm(
    labels: np.ndarray, spacing: float, myo: int = Structure.MYO, lv: int = Structure.LV
) -> float:
    """Maximal radial myocardial thickness (mm) over slices with a cavity, from a label map.

    Rays from each slice's cavity centroid: thickness is the run of myocardium after the
    cavity. This is what a reader measures, independent of the generator's parameters.
    """
    angles = np.linspace(0, 2 * math.pi, 72, endpoint=False)
    step = 0.25
    radii = np.arange(0, 80 / spacing, step)
    best = 0.0
    for sl in labels:
        cavity = np.argwhere(sl == lv)
        if len(cavity) < 20:
            continue
        cy, cx = cavity.mean(0)
        yy = np.rint(cy + radii[None, :] * np.sin(angles)[:, None]).astype(int)
        xx = np.rint(cx + radii[None, :] * np.cos(angles)[:, None]).astype(int)
        ok = (yy >= 0) & (yy < sl.shape[0]) & (xx >= 0) & (xx < sl.shape[1])
        vals = np.where(ok, sl[np.clip(yy, 0, sl.shape[0] - 1), np.clip(xx, 0, sl.shape[1] - 1)], 0)
        is_myo = vals == myo
        start = np.argmax(is_myo, axis=1)
        for a in range(len(angles)):
            if not is_myo[a, start[a]]:
                continue
            tail = is_myo[a, start[a] :]
            run = len(tail) if tail.all() else int(np.argmin(tail))
            best = max(best, run * step * spacing)
    return best


# --------------------------------------------------------------------------- writing


def _image(array: np.ndarray, plan: SubjectPlan) -> sitk.Image:
    """A SimpleITK image with the subject's geometry (3D or 4D with a unit time step)."""
    img = sitk.GetImageFromArray(array, isVector=False)
    d3 = np.asarray(plan.direction).reshape(3, 3)
    if array.ndim == 4:
        d4 = np.eye(4)
        d4[:3, :3] = d3
        img.SetSpacing((plan.spacing, plan.spacing, plan.dz, 1.0))
        img.SetOrigin((*plan.origin, 0.0))
        img.SetDirection(tuple(d4.ravel()))
    else:
        img.SetSpacing((plan.spacing, plan.spacing, plan.dz))
        img.SetOrigin(plan.origin)
        img.SetDirection(tuple(d3.ravel()))
    return img


def _write(array: np.ndarray, plan: SubjectPlan, path: Path) -> Path:
    sitk.WriteImage(_image(array, plan), str(path), True)
    return path


def _to_source(labels: np.ndarray, label_map: LabelMap) -> np.ndarray:
    lut = np.array([0, label_map.lv, label_map.myo, label_map.rv], np.uint8)
    return lut[labels]


def acdc_info(plan: SubjectPlan) -> str:
    """Info.cfg text exactly as the real ACDC files have it (1-based ED/ES)."""
    return (
        f"ED: {plan.ed + 1}\nES: {plan.es + 1}\nGroup: {plan.pathology}\n"
        f"Height: {plan.height:.1f}\nNbFrame: {plan.frames}\nWeight: {plan.weight:.1f}\n"
    )


def mnms_row(plan: SubjectPlan) -> list[str]:
    """The subject's row in the M&Ms metadata CSV (0-based ED/ES, centre as a number)."""
    sc = plan.scanner
    return [
        plan.name, sc.vendor, sc.vendor_letter, sc.centre_number, str(plan.ed), str(plan.es),
        str(plan.age), plan.pathology, plan.sex, f"{plan.height:.0f}", f"{plan.weight:.1f}",
    ]  # fmt: skip


def write_subject(plan: SubjectPlan, out: Path) -> list[Path]:
    """Render one subject and write its files in its dataset's real layout."""
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    rendered = render_subject(plan)
    folder = out / plan.folder
    folder.mkdir(parents=True, exist_ok=True)
    labels = _to_source(rendered.labels, plan.label_map)
    if plan.dataset == "mnms":
        return [
            _write(rendered.image, plan, folder / f"{plan.name}_sa.nii.gz"),
            _write(labels, plan, folder / f"{plan.name}_sa_gt.nii.gz"),
        ]
    paths = [folder / "Info.cfg"]
    paths[0].write_text(acdc_info(plan))
    for t in sorted({plan.ed, plan.es}):
        stem = f"{plan.name}_frame{t + 1:02d}"
        paths.append(_write(rendered.image[t], plan, folder / f"{stem}.nii.gz"))
        paths.append(_write(labels[t], plan, folder / f"{stem}_gt.nii.gz"))
    paths.append(_write(rendered.image, plan, folder / f"{plan.name}_4d.nii.gz"))
    return paths


class CentreSummary(BaseModel):
    """Subjects written for one centre."""

    centre: str
    dataset: Dataset
    vendor: str
    nor: int
    hcm: int
    other: int  # pathologies outside the study (loaders must skip them)


class SynthSummary(BaseModel):
    """What `synthesize` wrote."""

    out: Path
    seed: int
    scale: float
    centres: dict[str, CentreSummary]
    mnms_dir: Path
    mnms_csv: Path
    acdc_dir: Path
    files: list[Path]
    bytes_written: int
    seconds: float

    @property
    def nor(self) -> int:
        return sum(c.nor for c in self.centres.values())

    @property
    def hcm(self) -> int:
        return sum(c.hcm for c in self.centres.values())


def _summarise(plans: list[SubjectPlan]) -> dict[str, CentreSummary]:
    out: dict[str, CentreSummary] = {}
    for centre in CENTRE_ORDER:
        mine = [p.pathology for p in plans if p.centre == centre]
        sc = SCANNERS[centre]
        out[centre] = CentreSummary(
            centre=centre,
            dataset=sc.dataset,
            vendor=sc.vendor,
            nor=mine.count("NOR"),
            hcm=mine.count("HCM"),
            other=len(mine) - mine.count("NOR") - mine.count("HCM"),
        )
    return out


def _write_csv(plans: list[SubjectPlan], path: Path) -> Path:
    rows = sorted(mnms_row(p) for p in plans if p.dataset == "mnms")
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(MNMS_CSV_HEADER)
        writer.writerows(rows)
    return path


def _prepare(out: Path) -> None:
    """Clear a previous synthetic cohort (so no stale subject survives); never foreign data."""
    used = [d for d in (out / "mnms", out / "acdc") if d.exists() and any(d.iterdir())]
    if used and not (out / MARKER_NAME).exists():
        raise FileExistsError(f"{used[0]} is not empty and was not written by fedcmr synth")
    for d in used:
        shutil.rmtree(d)
    (out / "mnms").mkdir(parents=True, exist_ok=True)
    (out / "acdc" / "training").mkdir(parents=True, exist_ok=True)


def synthesize(
    out: Path, seed: int = 0, scale: float = 1.0, workers: int = 1, progress: bool = True
) -> SynthSummary:
    """Write the synthetic cohort under `out` (mnms/ and acdc/ in the real layouts)."""
    start = time.perf_counter()
    out = Path(out)
    plans = plan_cohort(seed, scale)
    _prepare(out)
    marker = out / MARKER_NAME
    marker.write_text(json.dumps({"generator": __name__, "seed": seed, "scale": scale}) + "\n")
    bar = tqdm(total=len(plans), desc="synth", unit="subject", disable=not progress)
    files: list[Path] = []
    if workers > 1:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
            for paths in pool.map(write_subject, plans, [out] * len(plans)):
                files.extend(paths)
                bar.update()
    else:
        for plan in plans:
            files.extend(write_subject(plan, out))
            bar.update()
    bar.close()
    csv_path = _write_csv(plans, out / "mnms" / MNMS_CSV_NAME)
    files = sorted([*files, csv_path, marker])
    return SynthSummary(
        out=out,
        seed=seed,
        scale=scale,
        centres=_summarise(plans),
        mnms_dir=out / "mnms",
        mnms_csv=csv_path,
        acdc_dir=out / "acdc",
        files=files,
        bytes_written=sum(p.stat().st_size for p in files),
        seconds=round(time.perf_counter() - start, 2),
    )

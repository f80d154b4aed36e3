"""What one synthetic subject is: the parameter records passed from drawing to rendering.

`Heart`, `Body` and `Tissue` hold the anatomy, surroundings and intensities of one subject;
`SubjectPlan` bundles them with the acquisition geometry, timing and metadata. plan.py draws
these records at random from a subject's seed, render.py turns them into voxels
deterministically and layouts.py writes them out; the records themselves hold no randomness.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fedcmr.common.labels import ACDC_LABELS, MNMS_LABELS, LabelMap
from fedcmr.lab.synthetic.scanners import SCANNERS, Dataset, Scanner


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

"""The random half: draw every subject's parameters from its own seed.

`class_counts` says how many subjects each centre and pathology gets at a scale, and
`plan_cohort` draws one `SubjectPlan` per subject, seeded from (seed, centre, pathology, index)
with numpy's SeedSequence, so that a plan never depends on the worker count or on other
subjects and a smaller scale keeps a prefix of every class. Like torchio's random transforms,
this module only draws parameters; render.py applies them deterministically.
"""

from __future__ import annotations

import math

import numpy as np

from fedcmr.common.centres import ACDC_CENTRE, TABLE1_COUNTS
from fedcmr.lab.synthetic.scanners import CENTRE_ORDER, SCANNERS, Scanner
from fedcmr.lab.synthetic.subject import Body, Heart, SubjectPlan, Tissue

#: M&Ms release parts and the share of subjects each gets (about 60/15/25 as released).
MNMS_PARTS: tuple[tuple[str, float], ...] = (
    ("Training/Labeled", 0.60),
    ("Validation", 0.15),
    ("Testing", 0.25),
)
#: Real ACDC numbering: the first patient number of each group.
ACDC_FIRST_NUMBER = {"DCM": 1, "HCM": 21, "MINF": 41, "NOR": 61, "RV": 81}
PATHOLOGIES: tuple[str, ...] = ("NOR", "HCM", "DCM", "HHD")


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

"""Centre profiles: how each of the four centres acquires and scales its images.

One frozen `Scanner` per centre (in-plane spacing, slice thickness, field of view, cine frames,
vendor contrast curve, noise and bias field, oblique or identity geometry), taken from the
Table 1 ranges of Linardos et al. 2022 plus vendor behaviour, and `CENTRE_ORDER`, the fixed
order in which centres are planned and summarised. Nothing here draws random numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from fedcmr.common.centres import (
    ACDC_CENTRE,
    MNMS_DEFAULT_CENTRES,
    MNMS_VENDORS,
    TABLE1_COUNTS,
)

Dataset = Literal["mnms", "acdc"]


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

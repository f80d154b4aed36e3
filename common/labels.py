"""fedcmr's single label convention, and the mapping from each source's own numbering.

ACDC and M&Ms number the heart structures differently; a loader that forgets this silently
swaps channels of the per-structure prior. Every loader maps into this convention before any
frame leaves it, so nothing downstream ever sees a source's own numbers.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np
from pydantic import BaseModel, ConfigDict, model_validator


class Structure(IntEnum):
    """Internal label values written into every cached label map."""

    BACKGROUND = 0
    LV = 1  # left-ventricular cavity
    MYO = 2  # left-ventricular myocardium
    RV = 3  # right-ventricular cavity


class Diagnosis(IntEnum):
    """Class labels: the positive class is the disease (score = P(HCM))."""

    NOR = 0
    HCM = 1


class LabelMap(BaseModel):
    """A source's own label numbers for the three structures (background is always 0)."""

    model_config = ConfigDict(frozen=True)

    lv: int
    myo: int
    rv: int

    @model_validator(mode="after")
    def _distinct(self) -> LabelMap:
        values = (self.lv, self.myo, self.rv)
        if len(set(values)) != 3 or 0 in values:
            raise ValueError(f"label numbers must be three distinct non-zero values, got {values}")
        return self

    def unknown_values(self, labels: np.ndarray) -> list[int]:
        """Values present in `labels` that this map does not know (sorted)."""
        known = {0, self.lv, self.myo, self.rv}
        return sorted(int(v) for v in np.unique(labels) if int(v) not in known)

    def to_internal(self, labels: np.ndarray) -> np.ndarray:
        """Renumber a source label array into the internal convention (uint8)."""
        unknown = self.unknown_values(labels)
        if unknown:
            raise ValueError(f"unknown label values {unknown}")
        out = np.zeros(labels.shape, dtype=np.uint8)
        out[labels == self.lv] = Structure.LV
        out[labels == self.myo] = Structure.MYO
        out[labels == self.rv] = Structure.RV
        return out


#: ACDC: 1 = RV cavity, 2 = myocardium, 3 = LV cavity.
ACDC_LABELS = LabelMap(lv=3, myo=2, rv=1)
#: M&Ms: 1 = LV cavity, 2 = myocardium, 3 = RV cavity.
MNMS_LABELS = LabelMap(lv=1, myo=2, rv=3)


def parse_diagnosis(value: str | int) -> Diagnosis | None:
    """NOR/HCM (or 0/1) to a Diagnosis; any other pathology gives None (not in the study)."""
    text = str(value).strip().upper()
    if text in {"NOR", "0", "NORMAL"}:
        return Diagnosis.NOR
    if text in {"HCM", "1"}:
        return Diagnosis.HCM
    return None

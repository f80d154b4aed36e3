"""Where one subject's ED and ES frames live on disk, as every loader reports them."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, field_validator

from fedcmr.common.labels import Diagnosis, LabelMap

log = logging.getLogger(__name__)

Phase = Literal["ED", "ES"]
PHASES: tuple[Phase, Phase] = ("ED", "ES")
#: Plausible adult and paediatric ranges; a value outside (e.g. a height in metres) is
#: treated as unknown rather than turned into an absurd body surface area.
HEIGHT_RANGE_CM = (40.0, 250.0)
WEIGHT_RANGE_KG = (2.0, 350.0)
_BLANK = {"", "nan", "na", "n/a", "none", "-"}


class FrameSource(BaseModel):
    """One cardiac phase: an image and its label map, 3D files or a time index into 4D ones."""

    model_config = ConfigDict(frozen=True)

    image: Path
    labels: Path
    #: 0-based index into the 4th (time) axis; None when the files are 3D.
    time_index: int | None = None


class SubjectRecord(BaseModel):
    """A subject as a loader found it: enough to preprocess it without the loader."""

    model_config = ConfigDict(frozen=True)

    subject: str
    centre: str
    vendor: str
    diagnosis: Diagnosis
    label_map: LabelMap
    frames: dict[Phase, FrameSource]
    #: From the site's metadata (ACDC Info.cfg, the M&Ms CSV); None when unknown. Text is
    #: accepted; a blank, unreadable or implausible value is unknown (logged).
    height_cm: float | None = None
    weight_kg: float | None = None

    @field_validator("height_cm", "weight_kg", mode="before")
    @classmethod
    def _body_size(cls, value, info):
        if value is None or (isinstance(value, str) and value.strip().lower() in _BLANK):
            return None
        low, high = HEIGHT_RANGE_CM if info.field_name == "height_cm" else WEIGHT_RANGE_KG
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        if not low <= number <= high:  # NaN fails too
            log.warning("%s %r is not a plausible value (%g..%g); treated as unknown",
                        info.field_name, value, low, high)
            return None
        return number

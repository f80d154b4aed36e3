"""Where one subject's ED and ES frames live on disk, as every loader reports them."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from fedcmr.common.labels import Diagnosis, LabelMap

Phase = Literal["ED", "ES"]
PHASES: tuple[Phase, Phase] = ("ED", "ES")


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

"""Preprocessing parameters: stored in the cache, so a change redoes exactly what it affects."""

from __future__ import annotations

import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from fedcmr.common.digests import short_digest


class N4Params(BaseModel):
    """N4 settings; frozen and JSON-serialisable so that a cache keyed on them redoes a
    frame whenever any of them changes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = True
    #: In-plane (x, y) shrink of the image the field is fitted on; z is never shrunk.
    shrink_factor: int = Field(default=4, ge=1)
    #: Maximum iterations per fitting level; each level doubles the B-spline mesh, so the
    #: number of levels sets how fine the field may get (SimpleITK's default is 4 levels).
    #: On cine frames N4 never meets the threshold below, so every iteration runs and
    #: fewer iterations give a less sharpened field, not the same field sooner.
    iterations: tuple[int, ...] = Field(default=(50, 50, 50, 50), min_length=1)
    convergence_threshold: float = Field(default=1e-3, gt=0)
    #: "otsu": fit on the log-intensity Otsu foreground (air holds no bias information);
    #: "none": fit on every positive voxel.
    mask: Literal["otsu", "none"] = "otsu"
    #: Control points per axis at the first level (SimpleITK default 4; >= spline order + 1).
    control_points: int = Field(default=4, ge=4)
    histogram_bins: int = Field(default=200, ge=16)
    bias_field_fwhm: float = Field(default=0.15, gt=0)


#: Bump when the code of a stage changes what it writes.
N4_STAGE_VERSION = 1
GEOMETRY_STAGE_VERSION = 1


class PrepConfig(BaseModel):
    model_config = ConfigDict(frozen=True)

    n4: N4Params = Field(default_factory=N4Params)
    #: Output voxel spacing (x, y, z) in mm.
    spacing_mm: tuple[float, float, float] = (1.0, 1.0, 1.0)
    #: Crop size (z, y, x) in voxels: 10 x 150 x 150 is the paper's (a 10 mm slab at 1 mm).
    crop: tuple[int, int, int] = (10, 150, 150)

    def n4_part(self) -> str:
        return json.dumps({"v": N4_STAGE_VERSION, "n4": self.n4.model_dump(mode="json")},
                          sort_keys=True)

    def geometry_part(self) -> str:
        return json.dumps({"v": GEOMETRY_STAGE_VERSION, "spacing": self.spacing_mm,
                           "crop": self.crop}, sort_keys=True)


def digest(*parts: str) -> str:
    return short_digest("\x1f".join(parts), 20)

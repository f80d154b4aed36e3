"""Preprocessing parameters: stored in the cache, so a change redoes exactly what it affects."""

from __future__ import annotations

import hashlib
import json

from pydantic import BaseModel, ConfigDict, Field

from fedcmr.client.bias_field import N4Params

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
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:20]

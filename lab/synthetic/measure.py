"""Measurements on label maps, as a reader would take them.

`max_wall_thickness_mm` measures the maximal radial myocardial thickness from a label map alone,
independent of the generator's parameters; the tests and the figure use it to check that the
disease signal is present in the written files and overlaps between the classes.
"""

from __future__ import annotations

import numpy as np

from fedcmr.common.labels import Structure


def max_wall_thickness_mm(
    labels: np.ndarray, spacing: float, myo: int = Structure.MYO, lv: int = Structure.LV
) -> float:
    """Maximal radial myocardial thickness (mm) over slices with a cavity, from a label map.

    Rays from each slice's cavity centroid: thickness is the run of myocardium after the
    cavity. This is what a reader measures, independent of the generator's parameters.
    """
    angles = np.linspace(0, 2 * np.pi, 72, endpoint=False)
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

"""The synthetic four-centre cohort as prepared caches, one per centre: what `fedcmr demo`
federates, and what a study runs on when it is given no caches of its own. Prepared once
per folder, also when several processes ask at the same time (a file lock)."""

from __future__ import annotations

import fcntl
import json
import logging
import os
from pathlib import Path

from fedcmr.common.atomic import write_json

log = logging.getLogger("fedcmr")
READY = "ready.json"


def synthetic_caches(root: Path, scale: float, seed: int, workers: int = 2,
                     progress: bool = True) -> list[Path]:
    """Synthesise into ROOT/data, prepare ROOT/cache/<centre> (N4, 1 mm, crop); the caches.
    A finished folder is reused as it is (ROOT/cache/ready.json records its scale and seed)."""
    from fedcmr.client.data.loaders.acdc import load_acdc
    from fedcmr.client.data.loaders.mnms import load_mnms
    from fedcmr.client.data.prep_config import PrepConfig
    from fedcmr.client.data.prepare import prepare_loaded
    from fedcmr.common.centres import ACDC_CENTRE, STUDY_MNMS_CENTRES, slug
    from fedcmr.lab.synthetic import synthesize

    data, cache = root / "data", root / "cache"
    centres = [*STUDY_MNMS_CENTRES, ACDC_CENTRE]
    caches = [cache / slug(c) for c in centres]
    wanted = {"scale": scale, "seed": seed, "caches": [str(c) for c in caches]}
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / "cohort.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # a second process waits for the first one's cohort
        ready = cache / READY
        if ready.exists():
            found = json.loads(ready.read_text())
            if found == wanted:
                return caches
            raise ValueError(f"{root} holds a synthetic cohort of scale {found['scale']}, "
                             f"seed {found['seed']}, not {scale}, {seed}. Fix: use another "
                             "--out folder, or delete its data/ and cache/")
        log.info("synthesising a four-centre cohort (scale %s, seed %s) in %s", scale, seed,
                 data)
        synthesize(data, seed=seed, scale=scale, workers=workers, progress=progress)
        log.info("preparing each hospital's data (N4, 1 mm, crop)")
        for centre, out in zip(centres, caches, strict=True):
            loaded = (load_acdc(data / "acdc") if centre == ACDC_CENTRE
                      else load_mnms(data / "mnms", centres=[centre]))
            prepare_loaded(loaded, PrepConfig(), out, workers, progress)
        write_json(ready, wanted)
        return caches
    finally:
        os.close(fd)

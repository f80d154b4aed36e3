"""Prepared caches written straight in the cache format: tiny frames in which HCM has a
thicker myocardial ring, for learning and federation tests that need no preprocessing."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedcmr.client.data.prep_config import PrepConfig
from fedcmr.common import __version__
from fedcmr.common.atomic import write_json
from fedcmr.common.cache_format import (
    PREP_INFO,
    FrameEntry,
    format_info,
    save_frame,
    write_manifest,
)
from fedcmr.common.labels import Structure


def ring_frame(rng: np.random.Generator, hcm: bool, shape=(4, 24, 24), phase: str = "ED"
               ) -> tuple[np.ndarray, np.ndarray]:
    z, y, x = np.mgrid[0 : shape[0], 0 : shape[1], 0 : shape[2]]
    cy, cx = shape[1] / 2 + rng.normal(0, 0.5), shape[2] / 2 + rng.normal(0, 0.5)
    r = np.hypot(x - cx, y - cy)
    cavity = (3.5 if phase == "ED" else 2.5) + rng.normal(0, 0.3)
    wall = (3.2 if hcm else 1.6) + rng.normal(0, 0.35)
    labels = np.zeros(shape, np.uint8)
    labels[r < cavity] = Structure.LV
    labels[(r >= cavity) & (r < cavity + wall)] = Structure.MYO
    labels[(np.hypot(x - cx + cavity + wall + 2, y - cy) < 2.5) & (labels == 0)] = Structure.RV
    scale = rng.uniform(80, 120)
    image = scale * (0.3 + 1.0 * (labels == Structure.LV) + 0.8 * (labels == Structure.RV)
                     + 0.1 * (labels == Structure.MYO)) + rng.normal(0, 5, shape)
    return image.astype(np.float32), labels


def write_prep_info(cache: Path, config: PrepConfig, **info) -> Path:
    """prep.json as `fedcmr prepare` writes it, with `config`'s parameters; `info` replaces
    top-level keys (a value None removes the key: an old cache without it)."""
    record = {"fedcmr_version": __version__, **format_info(),
              "params": config.model_dump(mode="json"), **info}
    write_json(cache / PREP_INFO, {k: v for k, v in record.items() if v is not None})
    return cache


def write_site_cache(cache: Path, centre: str, n_nor: int, n_hcm: int, seed: int = 0,
                     shape=(4, 24, 24), prep: PrepConfig | None = None) -> Path:
    """A cache of ring frames, with a prep.json of `prep` (default: the defaults, cropped to
    `shape`, which the frames have)."""
    rng = np.random.default_rng(seed)
    entries = []
    for i in range(n_nor + n_hcm):
        hcm = i >= n_nor
        subject = f"{centre[:3].upper()}{i:03d}"
        for phase in ("ED", "ES"):
            image, labels = ring_frame(rng, hcm, shape, phase)
            rel = f"frames/{subject}_{phase}.npz"
            save_frame(cache / rel, image, labels, key="test")
            entries.append(FrameEntry(subject=subject, centre=centre, vendor="test",
                                      label=int(hcm), phase=phase, file=rel, key="test"))
    write_manifest(cache, entries)
    write_prep_info(cache, prep or PrepConfig(crop=shape))
    return cache


def write_cohort(root: Path, sizes: dict[str, tuple[int, int]] | None = None,
                 seed: int = 0) -> list[Path]:
    sizes = sizes or {"Alpha": (6, 6), "Bravo": (7, 6), "Charlie": (5, 6), "Delta": (6, 7)}
    return [write_site_cache(root / name.lower(), name, *counts, seed=seed + i)
            for i, (name, counts) in enumerate(sizes.items())]


#: What `plant_markers` writes into one subject: an id and values found nowhere else.
MARKER_SUBJECT = "ZQX-MARKER-SUBJECT-7731"
#: 16 float32 image values and 24 label values in a row of one slice.
MARKER_IMAGE = np.float32(1234.5) + np.arange(16, dtype=np.float32) * np.float32(0.1171875)
MARKER_LABELS = np.array([3, 1, 2, 0, 2, 3, 1, 1, 0, 3, 2, 2, 1, 0, 0, 3, 2, 1, 3, 3, 0, 1, 2,
                          0], np.uint8)


def plant_markers(cache: Path, subject: str) -> None:
    """Rename `subject` to MARKER_SUBJECT and write MARKER_IMAGE / MARKER_LABELS into a row
    of its frames (in the cache format), for a test that searches what leaves the site."""
    from fedcmr.common.cache_format import load_frame, read_manifest

    entries = read_manifest(cache)
    for i, entry in enumerate(entries):
        if entry.subject != subject:
            continue
        image, labels = load_frame(cache / entry.file, cache)
        image, labels = image.copy(), labels.copy()
        image[0, 0, :16] = MARKER_IMAGE
        labels[0, 1, :24] = MARKER_LABELS
        save_frame(cache / entry.file, image, labels, key=entry.key)
        entries[i] = entry.model_copy(update={"subject": MARKER_SUBJECT})
    write_manifest(cache, entries)


def write_measures_table(cache: Path, seed: int = 0) -> Path:
    """measures.csv for every subject of a cache written here: plausible values in which HCM
    has thicker walls and more mass (what `fedcmr prepare` measures from real label maps;
    test_measures.py tests that)."""
    from fedcmr.common.cache_format import read_manifest
    from fedcmr.common.measures import SubjectMeasures, write_measures

    rng = np.random.default_rng(seed)
    rows = []
    for entry in read_manifest(cache):
        if entry.phase != "ED":
            continue
        hcm = entry.label == 1
        edv = rng.normal(120, 20)
        esv = edv * rng.uniform(0.3, 0.45) * (0.8 if hcm else 1.0)
        wall = rng.normal(16 if hcm else 10, 2.0)
        rv_edv = rng.normal(130, 20)
        rv_esv = rv_edv * rng.uniform(0.35, 0.5)
        rows.append(SubjectMeasures(
            subject=entry.subject, centre=entry.centre, label=entry.label, lv_edv_ml=edv,
            lv_esv_ml=esv, lv_ef=1 - esv / edv, lv_mass_g=rng.normal(150 if hcm else 100, 20),
            max_wall_ed_mm=wall, mean_wall_ed_mm=wall * 0.6, max_wall_es_mm=wall * 1.4,
            mean_wall_es_mm=wall * 0.9, rv_edv_ml=rv_edv, rv_esv_ml=rv_esv,
            rv_ef=1 - rv_esv / rv_edv))
    write_measures(cache, rows)
    return cache


def write_measured_cohort(root: Path, sizes: dict[str, tuple[int, int]]) -> list[Path]:
    """`write_cohort` with a measures.csv in every cache (one measures seed per cache)."""
    made = write_cohort(root, sizes)
    for i, cache in enumerate(made):
        write_measures_table(cache, seed=i)
    return made

"""`fedcmr predict`: a trained fold's bundle (common/bundle.py) applied to new patients, the
same way its training data went through the pipeline.

Raw files are prepared with the bundle's preprocessing (the PrepConfig rebuilt from its
metadata) into OUT/cache by the code of `fedcmr prepare`; a cache given as it is must have
been prepared so (its prep.json is checked). Then each frame of the bundle's phases is
harmonised with the bundle's landmarks, turned into the network input as in training
(FrameDataset, no augmentation) and scored: P(HCM) per frame, float64, and per subject the
mean of its frames. How a frame is scored is the bundle's model's (common/models/): the CNN
reads the images; the measures model reads each subject's clinical measures from the
cache's measures.csv (which `prepare` measures from the label maps) and gives each frame its
subject's P(HCM), as in training. OUT/predictions.csv and
OUT/subjects.csv are written atomically.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fedcmr.client.data.loaders.result import LoadResult
from fedcmr.client.data.prep_config import N4Params, PrepConfig
from fedcmr.common.atomic import write_csv
from fedcmr.common.bundle import (
    METADATA,
    NO_PREPROCESSING,
    BundleError,
    BundleMetadata,
    Preprocessing,
    read_metadata,
)
from fedcmr.common.cache_format import (
    PREP_INFO,
    CacheError,
    check_cache,
    label_convention,
    load_frame,
    read_manifest,
)
from fedcmr.common.handshake import n4_differences, prepare_fix, read_cache_fields, show
from fedcmr.common.learning.data import CachedFrame
from fedcmr.common.metrics import auc
from fedcmr.common.models import registry
from fedcmr.common.models.bundles import bundle_plugin, described, load_bundle

log = logging.getLogger("fedcmr.predict")

PREDICTIONS = "predictions.csv"
SUBJECTS = "subjects.csv"
PREDICTION_COLUMNS = ("subject", "centre", "phase", "label", "score")
SUBJECT_COLUMNS = ("subject", "centre", "n_frames", "p_hcm", "label")
#: P(HCM) from which a subject is called HCM in the summary.
THRESHOLD = 0.5
#: Where predict prepares raw files, inside its --out folder.
CACHE_DIR = "cache"


@dataclass
class PredictReport:
    frames: list[dict]
    subjects: list[dict]
    #: Frames left out because the bundle was not trained on their phase: {phase: count}.
    left_out: dict[str, int] = field(default_factory=dict)

    def auc(self, rows: Sequence[dict], column: str) -> float | None:
        known = [r for r in rows if r["label"] != ""]
        if len(known) < len(rows) or not rows:
            return None
        return auc(np.array([r["label"] for r in known]), np.array([r[column] for r in known]))

    def summary(self, metadata: BundleMetadata) -> str:
        called = sum(s["p_hcm"] >= THRESHOLD for s in self.subjects)
        lines = [f"{len(self.subjects)} subject(s), {len(self.frames)} frame(s) "
                 f"({','.join(metadata.phases)}) scored with the {described(metadata)}",
                 f"{called} called HCM (mean P(HCM) >= {THRESHOLD:g}), "
                 f"{len(self.subjects) - called} NOR"]
        subject_auc, frame_auc = self.auc(self.subjects, "p_hcm"), self.auc(self.frames, "score")
        if subject_auc is not None or frame_auc is not None:
            shown = [f"{what} AUC {'n/a' if v is None else f'{v:.3f}'}"
                     for what, v in (("subject", subject_auc), ("frame", frame_auc))]
            lines.append("labels known: " + ", ".join(shown))
        for phase, n in sorted(self.left_out.items()):
            lines.append(f"left out: {n} {phase} frame(s) (the bundle was trained on "
                         f"{','.join(metadata.phases)} only)")
        return "\n".join(lines)


def prep_config(metadata: BundleMetadata, bundle: Path) -> PrepConfig:
    """The `fedcmr prepare` settings the bundle's training data were prepared with."""
    prep = metadata.preprocessing
    path = Path(bundle) / METADATA
    if prep is None:
        raise BundleError(path, "the bundle does not record how its training data were "
                          f"prepared ({NO_PREPROCESSING})", "use a bundle from a run of "
                          "`fedcmr centralized` or `fedcmr federate` on caches prepared alike")
    try:
        n4 = N4Params(**prep.n4)
    except ValueError as exc:
        raise BundleError(path, f"N4 settings this fedcmr cannot apply ({exc.__class__.__name__})",
                          f"use the fedcmr version that wrote it ({metadata.fedcmr_version})"
                          ) from None
    return PrepConfig(n4=n4, spacing_mm=prep.spacing_mm, crop=prep.crop)


def prepare_raw(loaded: LoadResult, bundle: Path, out: Path, workers: int = 1,
                progress: bool = True) -> tuple[Path, int]:
    """Prepare what a loader found with the bundle's preprocessing into OUT/cache; returns
    the cache and how many subjects were skipped."""
    from fedcmr.client.data.prepare import prepare_loaded

    metadata = read_metadata(bundle)
    cache = Path(out) / CACHE_DIR
    report = prepare_loaded(loaded, prep_config(metadata, bundle), cache, workers, progress)
    return cache, len(report.skipped)


def read_frames(caches: Sequence[Path], metadata: BundleMetadata
                ) -> tuple[list[CachedFrame], dict[str, int]]:
    """The caches' frames of the bundle's phases (checked as load_cache checks them), and
    how many of other phases were left out. A prior that needs label maps refuses a frame
    without heart labels."""
    frames, left_out = [], {}
    needs_labels = registry.get(metadata.model).needs_labels(metadata)
    for cache in map(Path, caches):
        entries = read_manifest(cache)
        for e in entries:
            if e.phase not in metadata.phases:
                left_out[e.phase] = left_out.get(e.phase, 0) + 1
        entries = [e for e in entries if e.phase in metadata.phases]
        check_cache(cache, entries)
        for entry in entries:
            image, labels = load_frame(cache / entry.file, cache)
            if needs_labels and not labels.any():
                raise CacheError(cache / entry.file, f"no heart labels in this frame, and the "
                                 f"bundle's prior {metadata.prior!r} builds its input from "
                                 "them", "prepare the subject with its LV, MYO and RV label "
                                 "maps, or use a bundle trained with --prior baseline")
            frames.append(CachedFrame(entry, image, labels))
    return frames, left_out


def check_cache_preprocessing(cache: Path, metadata: BundleMetadata) -> None:
    """Refuse a cache that was not prepared as the bundle's training data were, naming its
    prep.json and the `fedcmr prepare` options that make it fit."""
    want = metadata.preprocessing
    path = Path(cache) / PREP_INFO
    if want is None:
        raise CacheError(path, "the bundle does not record how its training data were "
                         f"prepared ({NO_PREPROCESSING}), so no cache can be checked against "
                         "it", "use a bundle from a run of `fedcmr centralized` or `fedcmr "
                         "federate` on caches prepared alike")
    redo = (f"re-run `fedcmr prepare ... --out {cache}` with the bundle's options "
            f"({prepare_options(want)}), or give `fedcmr predict` the raw data (--dataset, "
            "--root) and it prepares them so")
    if not path.is_file():
        raise CacheError(path, "missing: not a cache written by `fedcmr prepare`", redo)
    have = Preprocessing.from_fields(read_cache_fields(Path(cache)))
    if have.cache_format != want.cache_format or have.label_convention != label_convention():
        raise CacheError(path, f"cache format {have.cache_format} with labels "
                         f"{have.label_convention}; the bundle needs format "
                         f"{want.cache_format} with labels {label_convention()}", redo)
    diffs = [(f, getattr(have, f), getattr(want, f)) for f in ("spacing_mm", "crop")
             if getattr(have, f) != getattr(want, f)]
    diffs += n4_differences(have.n4_text(), want.n4_text())
    if diffs:
        listed = "; ".join(f"{f} {show(f, a)} (the bundle: {show(f, b)}, "
                           f"{prepare_fix(f, b)})" for f, a, b in diffs)
        raise CacheError(path, f"prepared differently from the bundle's training data: "
                         f"{listed}", redo)


def prepare_options(prep: Preprocessing) -> str:
    """The `fedcmr prepare` options that reproduce `prep`."""
    options = [f"--spacing {','.join(f'{v:g}' for v in prep.spacing_mm)}",
               f"--crop {','.join(str(v) for v in prep.crop)}"]
    if not prep.n4.get("enabled", True):
        options.append("--no-n4")
    return " ".join(options)


def predict_caches(bundle: Path, caches: Sequence[Path], out: Path) -> tuple[
        BundleMetadata, PredictReport]:
    """Score every frame of the caches with the bundle; writes OUT/predictions.csv and
    OUT/subjects.csv."""
    metadata, state = load_bundle(bundle)
    for cache in caches:
        check_cache_preprocessing(Path(cache), metadata)
    frames, left_out = read_frames(caches, metadata)
    if not frames:
        raise CacheError(Path(caches[0]) / "manifest.csv", f"no frame of the bundle's phases "
                         f"({','.join(metadata.phases)})", "prepare the subjects' ED and ES "
                         "frames")
    scores = bundle_plugin(bundle, metadata).predict(Path(bundle), metadata, state, frames,
                                                     caches)
    rows = [{"subject": f.subject, "centre": f.entry.centre, "phase": f.entry.phase,
             "label": _label(f.entry.label), "score": float(s)}
            for f, s in zip(frames, scores, strict=True)]
    rows.sort(key=lambda r: (r["centre"], r["subject"], r["phase"]))
    report = PredictReport(rows, subject_rows(rows), left_out)
    write_csv(Path(out) / PREDICTIONS, PREDICTION_COLUMNS, rows)
    write_csv(Path(out) / SUBJECTS, SUBJECT_COLUMNS, report.subjects)
    return metadata, report


def _label(value: int) -> int | str:
    return value if value in (0, 1) else ""


def subject_rows(frames: Sequence[dict]) -> list[dict]:
    """One row per (centre, subject): its frame count and mean P(HCM)."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in frames:
        groups.setdefault((row["centre"], row["subject"]), []).append(row)
    return [{"subject": subject, "centre": centre, "n_frames": len(rows),
             "p_hcm": float(np.mean([r["score"] for r in rows])), "label": rows[0]["label"]}
            for (centre, subject), rows in sorted(groups.items())]

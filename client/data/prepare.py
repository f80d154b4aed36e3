"""`fedcmr prepare`: every ED and ES frame of a site through N4, resampling and the crop,
and every subject's clinical measures from its native label stacks (CACHE/measures.csv).

Cached stages, each keyed by what it depends on: the N4-corrected native frame (source
files + N4 parameters), the final crop (N4 key + spacing + crop size) and the measures
(both phases' source files + label map + measuring code). A rerun with the same parameters
reads no voxel; a changed crop size skips N4. Every file is written under a
temporary name and renamed, so an interrupted run leaves nothing a rerun would trust.
"""

from __future__ import annotations

import logging
import os
import zipfile
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from fedcmr.client.data.bias_field import n4_correct
from fedcmr.client.data.errors import DataError, DatasetError
from fedcmr.client.data.frame_io import native_spacing, read_frame
from fedcmr.client.data.loaders.result import LoadResult
from fedcmr.client.data.measures import MEASURES_STAGE, measure_subject, measures_part
from fedcmr.client.data.prep_config import PrepConfig, digest
from fedcmr.client.data.preprocess import crop_frame, resample_frame
from fedcmr.common import __version__
from fedcmr.common.atomic import atomic_path, write_csv, write_json
from fedcmr.common.cache_format import (
    FRAMES_DIR,
    PREP_INFO,
    SKIPPED,
    SKIPPED_COLUMNS,
    FrameEntry,
    format_info,
    frame_key,
    save_frame,
    write_manifest,
)
from fedcmr.common.centres import slug
from fedcmr.common.frames import PHASES, FrameSource, SubjectRecord
from fedcmr.common.measures import MEASURES_CSV, SubjectMeasures, write_measures

log = logging.getLogger("fedcmr.prepare")
STAGES_DIR = ".stages"


@dataclass
class SubjectOutcome:
    subject: str
    entries: list[FrameEntry] = field(default_factory=list)
    error: DataError | None = None
    computed: int = 0
    measures: SubjectMeasures | None = None
    measured: bool = False  # measures computed in this run (not read from the stage)


@dataclass
class PrepareReport:
    cache: Path
    frames: int
    computed: int
    skipped: list[DataError]
    excluded: dict[str, int]
    #: Subjects prepared per centre and class: {centre: {"NOR": n, "HCM": n}}.
    by_centre: dict[str, dict[str, int]] = field(default_factory=dict)
    #: Subjects whose clinical measures were computed in this run (not read from the stage).
    measured: int = 0

    @property
    def subjects(self) -> int:
        return self.frames // 2


def source_identity(source: FrameSource) -> str:
    """What the source files are, without reading them: path, size, modification time."""
    parts = [str(source.time_index)]
    for path in (source.image, source.labels):
        try:
            st = path.stat()
            parts.append(f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}")
        except OSError:
            parts.append(f"{path}:missing")
    return "|".join(parts)


def _n4_stage(record: SubjectRecord, source: FrameSource, config: PrepConfig, cache: Path,
              key: str) -> tuple[sitk.Image, sitk.Image, bool]:
    """The N4-corrected native frame and its labels, from the stage cache when present."""
    path = cache / STAGES_DIR / "n4" / f"{key}.npz"
    if path.exists():
        try:
            with np.load(path) as d:
                image = sitk.GetImageFromArray(d["image"])
                labels = sitk.GetImageFromArray(d["labels"])
                for img in (image, labels):
                    img.SetSpacing(d["spacing"].tolist())
                    img.SetOrigin(d["origin"].tolist())
                    img.SetDirection(d["direction"].tolist())
                return image, labels, False
        except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):
            pass  # unreadable stage file: recompute
    image, labels = read_frame(source, record.label_map)
    corrected = n4_correct(image, config.n4)
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez_compressed(tmp, image=sitk.GetArrayFromImage(corrected),
                            labels=sitk.GetArrayFromImage(labels),
                            spacing=np.array(corrected.GetSpacing()),
                            origin=np.array(corrected.GetOrigin()),
                            direction=np.array(corrected.GetDirection()))
    return corrected, labels, True


def measures_stage_file(record: SubjectRecord, cache: Path) -> Path:
    """Where one subject's measures are cached, keyed by what they are computed from."""
    key = digest(*(source_identity(record.frames[p]) for p in PHASES),
                 record.label_map.model_dump_json(), measures_part())
    return cache / STAGES_DIR / MEASURES_STAGE / f"{key}.json"


def prepare_subject(record: SubjectRecord, config: PrepConfig, cache: Path) -> SubjectOutcome:
    """Both phases and the measures of one subject, or an error that skips the subject."""
    outcome = SubjectOutcome(subject=record.subject)
    native: dict = {}  # native label maps read in this run, reused by the measures
    try:
        for phase in PHASES:
            source = record.frames[phase]
            n4_key = digest(source_identity(source), record.label_map.model_dump_json(),
                            config.n4_part())
            key = digest(n4_key, config.geometry_part())
            rel = Path(FRAMES_DIR) / slug(record.centre) / f"{record.subject}_{phase}.npz"
            if frame_key(cache / rel) != key:
                image, labels, ran_n4 = _n4_stage(record, source, config, cache, n4_key)
                native[phase] = labels
                image, labels = resample_frame(image, labels, config.spacing_mm)
                image_arr, label_arr = crop_frame(image, labels, config.crop)
                save_frame(cache / rel, image_arr, label_arr, key)
                outcome.computed += 1
            spacing = "x".join(f"{s:.4g}" for s in _native_spacing(source))
            outcome.entries.append(FrameEntry(
                subject=record.subject, centre=record.centre, vendor=record.vendor,
                label=int(record.diagnosis), phase=phase, file=rel.as_posix(), key=key,
                source=str(source.image), native_spacing=spacing,
                time_index="" if source.time_index is None else str(source.time_index)))
        outcome.measures, outcome.measured = measure_subject(
            record, measures_stage_file(record, cache), native)
    except DataError as err:
        outcome.entries.clear()
        outcome.error = err.for_subject(record.subject)
    return outcome


def _native_spacing(source: FrameSource) -> tuple[float, ...]:
    return native_spacing(source.image)


def _init_worker(threads: int) -> None:
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)


def check_out_not_in_root(out: Path, roots: list[Path]) -> None:
    """Nothing under the input root is ever written."""
    out_r = out.resolve()
    for root in roots:
        root_r = root.resolve()
        if out_r == root_r or root_r in out_r.parents:
            raise DatasetError(f"{out}: the cache is inside the input root {root}. Fix: choose "
                               "an --out folder outside the data folder (inputs stay read-only)")


def run_prepare(loaded: LoadResult, config: PrepConfig, cache: Path, workers: int = 1,
                progress: bool = True) -> PrepareReport:
    cache.mkdir(parents=True, exist_ok=True)
    threads = max(1, (os.cpu_count() or 1) // max(1, workers))
    outcomes: list[SubjectOutcome] = []
    bar = tqdm(total=len(loaded.subjects), unit="subject", desc="prepare", disable=not progress)
    if workers <= 1:
        _init_worker(threads)
        for record in loaded.subjects:
            outcomes.append(prepare_subject(record, config, cache))
            bar.update()
    else:
        with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(threads,)) as pool:
            futures = [pool.submit(prepare_subject, r, config, cache) for r in loaded.subjects]
            try:
                for future in as_completed(futures):
                    outcomes.append(future.result())
                    bar.update()
            except BaseException:
                pool.shutdown(wait=False, cancel_futures=True)
                raise
    bar.close()
    return _write_outputs(loaded, outcomes, config, cache)


def _write_outputs(loaded: LoadResult, outcomes: list[SubjectOutcome], config: PrepConfig,
                   cache: Path) -> PrepareReport:
    entries = [e for o in outcomes for e in o.entries]
    skipped = loaded.skipped + [o.error for o in outcomes if o.error is not None]
    write_manifest(cache, entries)
    write_measures(cache, [o.measures for o in outcomes if o.entries and o.measures])
    write_csv(cache / SKIPPED, SKIPPED_COLUMNS,
                     [{"subject": e.subject or "", "file": e.file, "problem": e.problem,
                       "fix": e.fix} for e in skipped])
    counts: dict[str, dict[str, int]] = {}
    for e in entries:
        if e.phase == "ED":
            by_label = counts.setdefault(e.centre, {"NOR": 0, "HCM": 0})
            by_label["HCM" if e.label else "NOR"] += 1
    info = {"fedcmr_version": __version__, **format_info(),
            "params": config.model_dump(mode="json"),
            "subjects_by_centre": counts, "frames": len(entries), "skipped": len(skipped),
            "excluded": dict(loaded.excluded)}
    write_json(cache / PREP_INFO, info)
    return PrepareReport(cache=cache, frames=len(entries),
                         computed=sum(o.computed for o in outcomes), skipped=skipped,
                         excluded=dict(loaded.excluded), by_centre=counts,
                         measured=sum(o.measured for o in outcomes if o.entries))


def one_class_warning(centre: str, counts: dict[str, int], skipped: int) -> str | None:
    """A line when a centre's cache holds one class only: it can still train (the others'
    frames hold the other class) but cannot be validated or tested alone (no AUC)."""
    missing = [label for label in ("NOR", "HCM") if not counts.get(label)]
    if len(missing) != 1:
        return None
    after = f" after {skipped} skipped subject(s)" if skipped else ""
    return (f"centre {centre} holds no {missing[0]} subject{after}: its own validation and "
            "test give no AUC, and a fold's splits of it hold one class. Fix: prepare the "
            f"centre's {missing[0]} subjects too (see skipped.csv for why any were skipped)")


def prepare_loaded(loaded: LoadResult, config: PrepConfig, out: Path, workers: int,
                   progress: bool = True):
    """Prepare what a loader found into the cache `out`, saying what was done; returns the
    PrepareReport (its `skipped` lists the subjects that could not be prepared)."""
    for reason, n in sorted(loaded.excluded.items()):
        log.info("not in the study: %d subject(s) with %s", n, reason)
    log.info("%d subjects to prepare into %s", len(loaded.subjects), out)
    report = run_prepare(loaded, config, out, workers=workers, progress=progress)
    for err in report.skipped:
        log.warning("skipped %s", err.line())
    log.info("%d frames of %d subjects ready in %s (%d computed, %d reused); clinical "
             "measures in %s (%d subjects measured now, the others reused)", report.frames,
             report.subjects, out, report.computed, report.frames - report.computed,
             out / MEASURES_CSV, report.measured)
    for centre, counts in sorted(report.by_centre.items()):
        log.info("  %-16s NOR %3d  HCM %3d", centre, counts["NOR"], counts["HCM"])
        if one_class := one_class_warning(centre, counts, len(report.skipped)):
            log.warning("%s", one_class)
    if report.skipped:
        log.warning("%d subject(s) skipped; see %s", len(report.skipped), out / "skipped.csv")
    return report

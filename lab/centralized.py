"""The centralised baseline (CDS): all training data pooled, one model, the same splits,
harmonisation and outputs as the federation. Resumable: a finished fold is not redone.

It needs pooled data, which never sits at a hospital or at the coordinator, so it runs on
a researcher's machine (lab/). What a fold trains is the run's model's pooled fit
(common/models/, `fit_pooled`); this module keeps the folds, resume, and the outputs every
model shares (predictions.csv, metrics.json, config.json)."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

from fedcmr.common import __version__
from fedcmr.common.atomic import write_json
from fedcmr.common.bundle import Preprocessing
from fedcmr.common.device import placement
from fedcmr.common.digests import DIGEST_LENGTH, short_digest
from fedcmr.common.learning.data import CachedFrame
from fedcmr.common.measures import SubjectMeasures
from fedcmr.common.models import registry
from fedcmr.common.models.base import PooledRun
from fedcmr.common.results import metrics_from_predictions, write_predictions
from fedcmr.common.run_config import RunConfig

log = logging.getLogger("fedcmr.centralized")


def data_digest(frames: Sequence[CachedFrame]) -> str:
    """What the frames are: every frame's identity, label and voxels. A rerun on re-prepared
    or different caches must not keep folds trained on the old data."""
    h = hashlib.sha256()
    for f in sorted(frames, key=lambda f: (f.entry.centre, f.subject, f.entry.phase)):
        h.update(f"{f.entry.centre}|{f.subject}|{f.entry.phase}|{f.entry.label}|".encode())
        h.update(f.image.tobytes())
        h.update(f.labels.tobytes())
    return h.hexdigest()[:DIGEST_LENGTH]


def config_digest(config: RunConfig, data: str = "") -> str:
    """The run's settings, the profile's values included (a profile is looked up by name,
    so a changed profile must not let a rerun keep folds trained under the old one), and
    the data's digest."""
    return short_digest(config.model_dump_json() + config.hyper.model_dump_json() + data)


def run_centralized(frames: Sequence[CachedFrame], config: RunConfig, out: Path,
                    progress: bool = True, preprocessing: Preprocessing | None = None,
                    measures: Mapping[str, SubjectMeasures] | None = None) -> dict:
    """Every fold of the protocol (skipping finished ones), then pooled metrics. Only the
    frames of the run's phases take part. `preprocessing` (the caches' prep.json:
    common/bundle.preprocessing_of_caches) goes into each fold's bundle. A model that reads
    the clinical measures needs the subjects' `measures` (common/measures.py)."""
    model = registry.get(config.model)
    frames = [f for f in frames if f.entry.phase in config.phases]
    if model.needs_measures and measures is None:
        raise ValueError(f"the {model.name} model needs the caches' clinical measures. Fix: "
                         "pass caches prepared by this fedcmr version (they hold "
                         "measures.csv)")
    out.mkdir(parents=True, exist_ok=True)
    where = placement()
    pooled = PooledRun(frames=frames, config=config, where=where, progress=progress,
                       preprocessing=preprocessing, measures=measures)
    data = model.data_digest(data_digest(frames), pooled)
    digest = config_digest(config, data)
    write_json(out / "config.json", {"mode": "centralized", "config": config.model_dump(),
                                     "profile": config.hyper.model_dump(), "data": data,
                                     "digest": digest, "fedcmr_version": __version__})
    rows: list[dict] = []
    inits: dict[int, dict] = {}
    for fold in config.fold_list():
        fold_dir = out / f"fold_{fold}"
        fold_dir.mkdir(exist_ok=True)
        done = fold_dir / "done.json"
        if done.exists() and json.loads(done.read_text()).get("digest") == digest:
            log.info("fold %d already finished; skipping (delete %s to redo)", fold, done)
            finished = json.loads(done.read_text())
        else:
            result = model.fit_pooled(pooled, fold, fold_dir)
            finished = {"digest": digest, "predictions": result.rows,
                        "init": result.init.model_dump()}
            write_json(done, finished)
        rows.extend(finished["predictions"])
        inits[fold] = finished["init"]
    metrics = metrics_from_predictions(rows)
    metrics["config"] = config.model_dump()
    metrics["init"] = inits
    metrics["device"] = str(where.device)
    write_predictions(out / "predictions.csv", rows)
    write_json(out / "metrics.json", metrics)
    return metrics

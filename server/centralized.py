"""The centralised baseline (CDS): all training data pooled, one model, the same splits,
harmonisation and outputs as the federation. Resumable: a finished fold is not redone."""

from __future__ import annotations

import copy
import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from tqdm import tqdm

from fedcmr.common import __version__, nyul
from fedcmr.common.atomic import atomic_path, write_csv, write_json
from fedcmr.common.bundle import (
    BUNDLE_DIR,
    Metrics,
    Preprocessing,
    SplitMetric,
    cnn_metadata,
    write_bundle,
)
from fedcmr.common.device import Placement, placement
from fedcmr.common.learning.data import CachedFrame, FrameDataset
from fedcmr.common.learning.early_stopping import EarlyStopping
from fedcmr.common.learning.harmonise import Harmoniser
from fedcmr.common.learning.split import split_frames
from fedcmr.common.learning.training import (
    Scores,
    make_optimizer,
    score,
    train_loader,
    train_steps,
)
from fedcmr.common.measures import SubjectMeasures
from fedcmr.common.model import InitInfo, build_model
from fedcmr.common.results import metrics_from_predictions, prediction_rows, write_predictions
from fedcmr.common.run_config import RunConfig
from fedcmr.common.seeds import seed_run
from fedcmr.server.centralized_measures import train_measures_fold

log = logging.getLogger("fedcmr.centralized")


def data_digest(frames: Sequence[CachedFrame]) -> str:
    """What the frames are: every frame's identity, label and voxels. A rerun on re-prepared
    or different caches must not keep folds trained on the old data."""
    h = hashlib.sha256()
    for f in sorted(frames, key=lambda f: (f.entry.centre, f.subject, f.entry.phase)):
        h.update(f"{f.entry.centre}|{f.subject}|{f.entry.phase}|{f.entry.label}|".encode())
        h.update(f.image.tobytes())
        h.update(f.labels.tobytes())
    return h.hexdigest()[:16]


def config_digest(config: RunConfig, data: str = "") -> str:
    """The run's settings, the profile's values included (a profile is looked up by name,
    so a changed profile must not let a rerun keep folds trained under the old one), and
    the data's digest."""
    text = config.model_dump_json() + config.hyper.model_dump_json() + data
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def harmonisation_record(summaries: Mapping[str, nyul.NyulSummary | dict],
                         reference_landmarks: Sequence[float] | None) -> dict:
    """The per-site intensity aggregates of one fold, as the federation and the baseline
    record them (FL: fold_K/summary.json; CDS: fold_K/harmonisation.json): each site's
    released sums turned into means (landmarks = landmark_sum / n_images; the histogram
    stays the sum over images of each image's normalised histogram), the reference
    landmarks every image is standardised to, and the combined histogram."""
    parsed = {site: s if isinstance(s, nyul.NyulSummary) else nyul.NyulSummary(**s)
              for site, s in summaries.items()}
    out: dict = {"percentiles": list(nyul.PERCENTILES),
                 "reference_landmarks": None if reference_landmarks is None
                 else [float(x) for x in reference_landmarks],
                 "site_summaries": {
                     site: {"n_images": s.n_images, "n_subjects": s.n_subjects,
                            "histogram": s.histogram,
                            "landmarks": [x / s.n_images for x in s.landmark_sum]}
                     for site, s in sorted(parsed.items())}}
    if parsed:
        values = list(parsed.values())
        out["reference_histogram"] = nyul.combine_histograms(values).tolist()
        out["bin_edges"] = list(values[0].bin_edges)
    return out


def centre_summaries(harmoniser: Harmoniser, frames: Sequence[CachedFrame]
                     ) -> dict[str, nyul.NyulSummary]:
    """Each centre's summary of these (training) frames, as a site would release it."""
    centres = sorted({f.entry.centre for f in frames})
    return {c: harmoniser.summary([f for f in frames if f.entry.centre == c], min_subjects=1)
            for c in centres}


def train_fold(frames: Sequence[CachedFrame], config: RunConfig, fold: int, fold_dir: Path,
               where: Placement, progress: bool = True,
               preprocessing: Preprocessing | None = None) -> tuple[list[dict], InitInfo]:
    """One fold: train, keep the best model on validation, score the test split; writes
    fold_dir/best_model.pt, history.csv, harmonisation.json and the bundle (fold_dir/bundle:
    common/bundle.py; `preprocessing`: the caches' prep.json, None where unknown)."""
    parts = split_frames(frames, config, fold)
    if not parts["train"] or not parts["test"]:
        raise ValueError(f"fold {fold}: empty train or test split; the cohort is too small")
    hyper = config.hyper
    # Pooled landmarks: equal to combining per-centre summaries with weights N_k / N
    # (tested in test_nyul), which is what the federation does.
    harmoniser = Harmoniser(config.prior).fit(parts["train"])
    write_json(fold_dir / "harmonisation.json", harmonisation_record(
        centre_summaries(harmoniser, parts["train"]), harmoniser.landmarks))
    seed = config.fold_seed(fold)
    generator = seed_run(seed)
    datasets = {name: FrameDataset(part, harmoniser, hyper.input_size,
                                   config.augment if name == "train" else "none", seed)
                for name, part in parts.items()}
    model, init = build_model(config.pretrained, seed)
    model = model.to(where.device, memory_format=where.memory_format)
    optimizer = make_optimizer(model, hyper, init)
    stopper = EarlyStopping(hyper.patience)
    best_state = copy.deepcopy(model.state_dict())
    history = []
    bar = tqdm(range(hyper.max_epochs), desc=f"fold {fold}", unit="epoch", disable=not progress)
    for epoch in bar:
        datasets["train"].set_epoch(epoch)
        stats = train_steps(model, optimizer, iter(train_loader(
            datasets["train"], hyper.batch_size, generator)), where)
        val = score(model, datasets["val"], where)
        improved = stopper.update(val.auc, val.loss, epoch)
        if improved:
            best_state = copy.deepcopy(model.state_dict())
        history.append({"epoch": epoch, "train_loss": stats.loss, "val_loss": val.loss,
                        "val_auc": val.auc, "best": improved})
        bar.set_postfix(train=f"{stats.loss:.3f}", val=f"{val.loss:.3f}",
                        auc="n/a" if val.auc is None else f"{val.auc:.2f}")
        if stopper.should_stop:
            break
    with atomic_path(fold_dir / "best_model.pt") as tmp:
        torch.save(best_state, tmp)
    model.load_state_dict(best_state)
    write_csv(fold_dir / "history.csv", list(history[0]), history)
    test = score(model, datasets["test"], where)
    best_val = next((h["val_auc"] for h in reversed(history) if h["best"]), None)
    metrics = Metrics(validation=SplitMetric(auc=best_val, n=len(parts["val"])),
                      test=_split_metric(test))
    write_bundle(fold_dir / BUNDLE_DIR, cnn_metadata(
        config, fold, "cds", harmoniser.landmarks, preprocessing, init.source, metrics),
        fold_dir / "best_model.pt")
    return prediction_rows(parts["test"], test.scores, fold), init


def _split_metric(scores: Scores) -> SplitMetric:
    return SplitMetric(auc=scores.auc, n=len(scores.scores))


def run_centralized(frames: Sequence[CachedFrame], config: RunConfig, out: Path,
                    progress: bool = True, preprocessing: Preprocessing | None = None,
                    measures: Mapping[str, SubjectMeasures] | None = None) -> dict:
    """Every fold of the protocol (skipping finished ones), then pooled metrics. Only the
    frames of the run's phases take part. `preprocessing` (the caches' prep.json:
    common/bundle.preprocessing_of_caches) goes into each fold's bundle. The measures model
    (config.model "measures") needs the subjects' `measures` (common/measures.py)."""
    frames = [f for f in frames if f.entry.phase in config.phases]
    if config.model == "measures" and measures is None:
        raise ValueError("the measures model needs the caches' clinical measures. Fix: pass "
                         "caches prepared by this fedcmr version (they hold measures.csv)")
    out.mkdir(parents=True, exist_ok=True)
    where = placement()
    data = data_digest(frames)
    if config.model == "measures":  # the model's input is the table, not the voxels
        data = hashlib.sha256((data + json.dumps(
            [measures[s].model_dump() for s in sorted({f.subject for f in frames})]
        )).encode()).hexdigest()[:16]
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
            if config.model == "measures":
                fold_rows, _ = train_measures_fold(frames, config, fold, fold_dir, measures,
                                                   preprocessing)
                init = InitInfo(source="zeros", seed=0)
            else:
                fold_rows, init = train_fold(frames, config, fold, fold_dir, where, progress,
                                             preprocessing)
            finished = {"digest": digest, "predictions": fold_rows, "init": init.model_dump()}
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

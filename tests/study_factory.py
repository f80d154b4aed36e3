"""A finished study folder written straight in the study layout (lab/study/layout.py), for
report tests: cell.json, result.json, and each cell's run folder as the centralised trainer
and the federation leave it (predictions.csv, history.csv, rounds.csv, summary.json,
harmonisation.json), with fake but plausible predictions carrying a known signal:

- the same subjects' latent hearts in every cell (paired comparisons are meaningful);
- the signal grows with the prior (baseline < masked < structures) and shrinks under LCO;
- ACDC is nearly unlearnable when unseen (LCO), so it is the hardest unseen centre;
- CDS varies much more over seeds than FL;
- equal vote sharpens the smallest centre (SantPau).
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fedcmr.common import nyul
from fedcmr.common.atomic import write_csv, write_json
from fedcmr.common.cache_format import FrameEntry, write_manifest
from fedcmr.common.learning.harmonise import harmonisation_record
from fedcmr.common.results import metrics_from_predictions, write_predictions
from fedcmr.common.seeds import derive_seed
from fedcmr.lab.study import layout
from fedcmr.server.fl_outputs import ROUND_COLUMNS

#: centre -> (NOR, HCM) subjects
COHORT = {"Vall d'Hebron": (5, 6), "Sagrada Familia": (7, 8), "SantPau": (3, 3),
          "ACDC": (5, 5)}
CENTRES = tuple(sorted(COHORT))
PRIOR_SIGNAL = {"baseline": 0.9, "masked": 1.3, "structures": 1.7}
SEEDS = (0, 1)


@dataclass(frozen=True)
class Spec:
    framework: str
    prior: str
    augment: str
    protocol: str
    phases: tuple[str, ...] = ("ED", "ES")
    vote_alpha: float | None = None
    #: Out of the repr, so that the CNN cells' drawn predictions stay as they were.
    model: str = field(default="cnn", repr=False)


def small_grid() -> list[Spec]:
    """cds + fedavg + equal-vote; 3 priors (CCV, no augmentation); 2 augmentations (CCV and
    LCO, per-structure prior); an ED-only FL LCO cell."""
    specs = [Spec(f, p, "none", "ccv") for f in ("cds", "fedavg", "equal-vote")
             for p in ("baseline", "masked")]
    specs += [Spec(f, "structures", a, pr) for f, a, pr in itertools.product(
        ("cds", "fedavg", "equal-vote"), ("none", "shape-intensity"), ("ccv", "lco"))]
    return specs + [Spec("fedavg", "structures", "none", "lco", ("ED",))]


def subjects() -> list[tuple[str, str, int, float]]:
    """(centre, subject, label, latent heart) of the whole cohort."""
    rng = np.random.default_rng(7)
    out = []
    for centre in CENTRES:
        n_nor, n_hcm = COHORT[centre]
        for i in range(n_nor + n_hcm):
            label = int(i >= n_nor)
            out.append((centre, f"{centre[:3].upper()}{i:03d}", label,
                        float(rng.normal(label, 0.6))))
    return out


def fold_of(protocol: str, centre: str, index: int) -> int:
    return index % 5 if protocol == "ccv" else CENTRES.index(centre)


def predictions(spec: Spec, seed: int) -> list[dict]:
    """Every test frame of the spec's protocol: a logit of the subject's heart times the
    set-up's signal, plus noise shared by every cell, and noise of the configuration: for
    CDS drawn anew for each seed, for FL mostly the same for every seed (so FL and CDS are
    on par, and CDS varies far more over seeds)."""
    shared = np.random.default_rng(11)
    ident = (spec,) if spec.model == "cnn" else (spec, spec.model)
    fixed = np.random.default_rng(derive_seed("factory", *ident))
    own = np.random.default_rng(derive_seed("factory", *ident, seed))
    cds = spec.framework == "cds"
    rows = []
    for i, (centre, subject, label, heart) in enumerate(subjects()):
        strength = PRIOR_SIGNAL[spec.prior]
        if spec.protocol == "lco":
            strength *= 0.05 if centre == "ACDC" else 0.6
        if spec.framework == "equal-vote" and centre == "SantPau":
            strength += 1.0
        for phase in ("ED", "ES"):
            noise = (own.normal(0, 1.0) if cds
                     else fixed.normal(0, 1.0) + own.normal(0, 0.15))
            logit = strength * (heart - 0.5) + shared.normal(0, 0.6) + noise
            if phase in spec.phases:
                rows.append({"subject": subject, "centre": centre, "phase": phase,
                             "fold": fold_of(spec.protocol, centre, i), "label": label,
                             "score": float(1 / (1 + np.exp(-logit)))})
    return rows


@functools.cache
def centre_summaries(prior: str) -> dict[str, nyul.NyulSummary]:
    """Each centre's released Nyul summary: its own intensity distortion (a gamma)."""
    out = {}
    for k, centre in enumerate(CENTRES):
        rng = np.random.default_rng(k)
        images = [rng.gamma(2.0 + k, 1.0, (4, 12, 12)) ** (0.7 + 0.3 * k) for _ in range(6)]
        masks = None if prior == "baseline" else [np.ones((4, 12, 12))] * len(images)
        out[centre] = nyul.site_summary(images, masks, [f"s{i // 2}" for i in range(6)],
                                        min_subjects=1)
    return out


def write_run(run: Path, spec: Spec, cell_folds: tuple[int, ...], rows: list[dict]) -> None:
    write_predictions(run / "predictions.csv", rows)
    write_json(run / "metrics.json", metrics_from_predictions(rows))
    summaries = centre_summaries(spec.prior)
    rounds = []
    for fold in cell_folds:
        training = {c: s for c, s in summaries.items()
                    if spec.protocol == "ccv" or CENTRES.index(c) != fold}
        record = harmonisation_record(training, nyul.combine(list(training.values())))
        if spec.framework == "cds":
            history = [{"epoch": e, "train_loss": 0.7 - 0.05 * e, "val_loss": 0.7 - 0.04 * e,
                        "val_auc": 0.6 + 0.05 * e, "best": True} for e in range(4)]
            write_csv(run / f"fold_{fold}" / "history.csv", list(history[0]), history)
            write_json(run / f"fold_{fold}" / "harmonisation.json", record)
            continue
        n_k = {c: 2 * sum(COHORT[c]) for c in training}
        alpha = {"fedavg": 1.0, "equal-vote": 0.0}.get(spec.framework, spec.vote_alpha)
        total = sum(n ** alpha for n in n_k.values())
        for rnd, centre in itertools.product(range(1, 5), sorted(training)):
            rounds.append({"fold": fold, "round": rnd, "site": centre, "n_k": n_k[centre],
                           "weight": round(n_k[centre] ** alpha / total, 6),
                           "train_loss": 0.7 - 0.05 * rnd, "batch_size": 2,
                           "val_loss_received": 0.69, "val_auc_received": 0.6,
                           "pooled_val_loss_received": 0.7 - 0.03 * rnd,
                           "pooled_val_auc_received": 0.5 + 0.08 * (rnd - 1)})
        write_json(run / f"fold_{fold}" / "summary.json", {
            "best_round": 3, "refused_histogram": [], "rejected_updates": [],
            "test": {}, **record})
    if spec.framework != "cds":
        write_csv(run / "rounds.csv", ROUND_COLUMNS, rounds)


def write_study(root: Path, specs: list[Spec] | None = None, seeds=SEEDS,
                unfinished: int = 1) -> Path:
    """The study folder; CCV cells split into two fold cells per seed (folds 0-2 and 3-4),
    LCO cells hold every fold. The last `unfinished` cells have no result.json."""
    specs = small_grid() if specs is None else specs
    cache = root / "cache"
    write_manifest(cache, [FrameEntry(subject=s, centre=c, vendor="x", label=lab, phase=ph,
                                      file=f"{s}_{ph}.npz", key="k")
                           for c, s, lab, _ in subjects() for ph in ("ED", "ES")])
    keys = []
    for spec, seed in itertools.product(specs, seeds):
        rows = predictions(spec, seed)
        splits = [(0, 1, 2), (3, 4)] if spec.protocol == "ccv" else [tuple(range(4))]
        for folds in splits:
            model = "measures-" if spec.model == "measures" else ""
            key = (f"{model}{spec.framework}_{spec.prior}_{spec.augment}_{spec.protocol}_f"
                   f"{'-'.join(map(str, folds))}_s{seed}_{'-'.join(spec.phases).lower()}")
            cell = layout.cell_dir(root, key)
            mine = [r for r in rows if r["fold"] in folds]
            write_json(cell / layout.CELL_JSON, {
                "model": spec.model, "framework": spec.framework, "vote_alpha": spec.vote_alpha,
                "prior": spec.prior, "augment": spec.augment, "protocol": spec.protocol,
                "folds": list(folds), "seed": seed, "phases": list(spec.phases),
                "profile": "smoke", "epochs": 0, "pretrained": "none", "split_seed": 0,
                "sites": list(CENTRES), "centres": list(CENTRES), "data": "d0", "key": key,
                "strategy": "" if spec.framework == "cds" else spec.framework})
            write_run(cell / layout.RUN_DIR, spec, folds, mine)
            keys.append(key)
    for key in keys[:len(keys) - unfinished]:
        write_json(layout.cell_dir(root, key) / layout.RESULT_JSON,
                   {"key": key, "wall_s": 12.5, "rows": []})
    write_json(root / layout.STUDY_JSON, {
        "name": "factory", "description": "a synthetic study folder for tests",
        "profile": "smoke", "runtime": "simulation", "caches": [str(cache)],
        "sites": [{"name": c, "centres": [c]} for c in CENTRES], "centres": list(CENTRES),
        "cells": keys, "config": {"bootstrap": 200}})
    return root

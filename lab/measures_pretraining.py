"""Experiment (#14): measures-supervised pretraining of the r3d_18 body, then the usual
classification training from that body, on the centralised baseline's folds.

No Kinetics weights can be had offline, so the body starts random. Here, before a fold's
classification training, the body learns to regress the standardised clinical measures
(common/measures.py FEATURES: volumes, mass, wall thickness) of the fold's TRAINING
subjects from their images: a dense, continuous target where the diagnosis gives one bit
per subject. The body is then loaded as a pretrained file (`--pretrained FILE`), so the
classification stage runs exactly as with any pretrained body (head 1e-2, body 1e-5).

Run: python -m fedcmr.lab.measures_pretraining --cache C [C ...] --seed S --out DIR
It writes DIR/fold_K/ (the baseline's outputs), DIR/predictions.csv and DIR/metrics.json.
Centralised only: if it does not raise the pooled AUC centrally, a federated version
(FedAvg of the regression rounds) would not either, and is not built.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedcmr.common.atomic import atomic_path, write_json
from fedcmr.common.device import placement
from fedcmr.common.learning.data import FrameDataset, load_cache
from fedcmr.common.learning.harmonise import Harmoniser
from fedcmr.common.learning.split import split_frames
from fedcmr.common.learning.training import restart_batchnorm_statistics, train_loader
from fedcmr.common.measures import FEATURES, read_all_measures
from fedcmr.common.metrics import auc_text
from fedcmr.common.model import HEAD, build_model
from fedcmr.common.results import (
    PREDICTIONS_CSV,
    metrics_from_predictions,
    read_predictions,
    write_predictions,
)
from fedcmr.common.run_config import RunConfig
from fedcmr.common.seeds import derive_seed, seed_run
from fedcmr.lab.centralized import run_centralized

log = logging.getLogger("fedcmr.pretraining")
#: Regression epochs over the fold's training frames, and the rate of body and head.
EPOCHS = 8
LR = 1e-3


def pretrain_body(frames, measures, config: RunConfig, fold: int, file: Path,
                  epochs: int | None = None) -> float:
    """Train r3d_18 with a len(FEATURES)-output head to regress the standardised measures
    of the fold's training subjects; save the body (the head is dropped on loading).
    Returns the last epoch's mean squared error (in SDs^2)."""
    train = split_frames(frames, config, fold)["train"]
    table = np.array([measures[f.subject].features() for f in train])
    mean, std = table.mean(axis=0), np.maximum(table.std(axis=0), 1e-8)
    seed = derive_seed("measures-pretraining", config.fold_seed(fold))
    generator = seed_run(seed)
    data = FrameDataset(train, Harmoniser(config.prior).fit(train), config.hyper.input_size,
                        "none", seed)
    data.targets = torch.tensor((table - mean) / std, dtype=torch.float32)
    where = placement()
    model, _ = build_model("none", seed, quiet=True)
    model.fc = nn.Linear(model.fc.in_features, len(FEATURES))
    model = model.to(where.device, memory_format=where.memory_format)
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    mse = float("nan")
    for _ in range(EPOCHS if epochs is None else epochs):
        model.train()
        restart_batchnorm_statistics(model)
        total, n = 0.0, 0
        for x, y in train_loader(data, config.hyper.batch_size, generator):
            x, y = where.to_device(x), y.to(where.device)
            optimizer.zero_grad(set_to_none=True)
            with where.autocast():
                out = model(x)
            loss = F.mse_loss(out.float(), y)
            loss.backward()
            optimizer.step()
            total, n = total + loss.item() * len(y), n + len(y)
        mse = total / max(n, 1)
    body = {k: v.detach().cpu() for k, v in model.state_dict().items()
            if not k.startswith(HEAD + ".")}
    with atomic_path(file) as tmp:
        torch.save(body, tmp)
    return mse


def run(caches: list[Path], config: RunConfig, out: Path) -> dict:
    frames = [f for f in load_cache(caches) if f.entry.phase in config.phases]
    measures = read_all_measures(caches)
    rows: list[dict] = []
    record: dict = {"epochs": EPOCHS, "lr": LR, "folds": {}}
    for fold in config.fold_list():
        started = time.monotonic()
        file = out / f"fold_{fold}" / "pretrained_body.pt"
        mse = pretrain_body(frames, measures, config, fold, file)
        fold_config = config.model_copy(update={"folds": (fold,), "pretrained": str(file)})
        metrics = run_centralized(frames, fold_config, out / f"fold_{fold}" / "run",
                                  progress=False)
        rows += read_predictions(out / f"fold_{fold}" / "run" / PREDICTIONS_CSV)
        record["folds"][fold] = {"pretrain_mse": mse, "auc": metrics["auc"]["total"],
                                 "wall_s": round(time.monotonic() - started, 1)}
        log.info("fold %d: regression MSE %.3f, test AUC %s", fold, mse,
                 auc_text(metrics["auc"]["total"]))
    write_predictions(out / PREDICTIONS_CSV, rows)
    metrics = {**metrics_from_predictions(rows), "pretraining": record}
    write_json(out / "metrics.json", metrics)
    return metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", nargs="+", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    config = RunConfig(seed=args.seed, profile=args.profile)
    metrics = run(args.cache, config, args.out)
    print(f"pooled test AUC {metrics['auc']['total']}")


if __name__ == "__main__":
    main()

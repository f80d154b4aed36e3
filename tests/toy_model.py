"""A third model, defined here and nowhere in fedcmr: the proof that a model is a plug-in
(tests/test_model_plugin.py runs it through a CDS run, a local federation and `fedcmr
predict`).

Logistic regression on two numbers per frame that any prepared frame has: the mean
intensity inside the heart's labels (scaled by the frame's 99th percentile) and the
labelled fraction of the crop. It starts from zeros at the coordinator (no start
exchange), trains by full-batch gradient steps, and keeps its three numbers in a state
dict, so it travels, aggregates and is bundled like any other model.

Registered by name "toy" through $FEDCMR_MODELS=toy=toy_model:Toy (with tests/ on
PYTHONPATH), which every process of a local federation inherits. `HarmonisedToy` ("toy-nyul")
is the same model whose fold starts as the CNN's does, with the histogram round: the fault
tests that need every site to have answered once before training starts use it.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import numpy as np
import torch

from fedcmr.common.atomic import atomic_path, write_csv
from fedcmr.common.bundle import (
    BUNDLE_DIR,
    BundleError,
    Harmonisation,
    Metrics,
    SplitMetric,
    base_metadata,
    write_bundle,
)
from fedcmr.common.digests import short_digest
from fedcmr.common.learning.split import split_frames
from fedcmr.common.learning.training import Scores
from fedcmr.common.metrics import auc
from fedcmr.common.model import InitInfo
from fedcmr.common.models.base import (
    FoldBegin,
    LocalUpdate,
    ModelPlugin,
    PooledFold,
)
from fedcmr.common.models.cnn import CNN
from fedcmr.common.protocol import Kind
from fedcmr.common.results import prediction_rows

FEATURES = ("heart_intensity", "heart_fraction")
LR, STEPS_POOLED = 0.5, 40


def features(frames) -> np.ndarray:
    rows = []
    for f in frames:
        image, heart = np.asarray(f.image, np.float64), np.asarray(f.labels) > 0
        scale = float(np.percentile(image, 99)) or 1.0
        inside = float(image[heart].mean()) / scale if heart.any() else 0.0
        rows.append([inside, float(heart.mean()) * 10.0])
    return np.asarray(rows, dtype=np.float64).reshape(len(rows), len(FEATURES))


def labels(frames) -> np.ndarray:
    return np.asarray([f.entry.label for f in frames], dtype=np.float64)


def probabilities(state, x: np.ndarray) -> np.ndarray:
    w = state["w"].double().numpy()
    b = float(state["b"].double().numpy()[0])
    return 1.0 / (1.0 + np.exp(-(x @ w + b)))


def loss(state, x, y) -> float:
    if not len(y):
        return 0.0
    p = np.clip(probabilities(state, x), 1e-12, 1 - 1e-12)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def steps(state, x, y, n: int) -> dict[str, torch.Tensor]:
    w = state["w"].double().numpy().copy()
    b = float(state["b"].double().numpy()[0])
    for _ in range(n):
        residual = 1.0 / (1.0 + np.exp(-(x @ w + b))) - y
        w -= LR * x.T @ residual / max(len(y), 1)
        b -= LR * float(residual.mean()) if len(y) else 0.0
    return {"w": torch.as_tensor(w), "b": torch.as_tensor([b], dtype=torch.float64)}


def zeros() -> dict[str, torch.Tensor]:
    return {"w": torch.zeros(len(FEATURES), dtype=torch.float64),
            "b": torch.zeros(1, dtype=torch.float64)}


class Toy(ModelPlugin):
    name = "toy"
    summary = "a test's model: logistic regression on two numbers per frame"
    inputs = ("images",)
    start = None

    def begin_fold(self, run, fold, replies) -> FoldBegin:
        return FoldBegin(state=zeros(), init_source="zeros")

    def local_train(self, site, order, state) -> LocalUpdate:
        frames = site.parts(order)["train"]
        x, y = features(frames), labels(frames)
        n = order.run.hyper.local_iterations
        return LocalUpdate(weights=steps(state, x, y, n), num_examples=len(frames),
                           loss=loss(state, x, y), batches=n, batch_size=len(frames))

    def score(self, site, order, part, state) -> Scores:
        frames = site.parts(order)[part]
        x, y = features(frames), labels(frames)
        return Scores(loss=loss(state, x, y), labels=y, scores=probabilities(state, x))

    def fit_pooled(self, run, fold, fold_dir: Path) -> PooledFold:
        parts = split_frames(run.frames, run.config, fold)
        x, y = features(parts["train"]), labels(parts["train"])
        state = steps(zeros(), x, y, STEPS_POOLED)
        with atomic_path(fold_dir / "best_model.pt") as tmp:
            torch.save(state, tmp)
        val, test = parts["val"], parts["test"]
        val_p, test_p = probabilities(state, features(val)), probabilities(state, features(test))
        write_csv(fold_dir / "history.csv", ["epoch", "train_loss", "best"],
                  [{"epoch": 0, "train_loss": loss(state, x, y), "best": True}])
        metrics = Metrics(validation=SplitMetric(auc=auc(labels(val), val_p), n=len(val)),
                          test=SplitMetric(auc=auc(labels(test), test_p), n=len(test)))
        write_bundle(fold_dir / BUNDLE_DIR, self.bundle_metadata(
            run.config, fold, "cds", metrics, run.preprocessing), fold_dir / "best_model.pt")
        return PooledFold(prediction_rows(test, test_p, fold), InitInfo(source="zeros", seed=0))

    def digest(self) -> str:
        return short_digest("toy\n" + ",".join(FEATURES))

    def bundle_metadata(self, config, fold, framework, metrics, preprocessing,
                        landmarks=None, init_source="zeros", strategy=None,
                        vote_alpha=None):
        return base_metadata(self.name, self.digest(), config, fold, framework, metrics,
                             preprocessing, init_source, strategy=strategy,
                             vote_alpha=vote_alpha, input=None, features=FEATURES,
                             harmonisation=Harmonisation(landmarks=None))

    def check_metadata(self, metadata, path) -> None:
        if tuple(metadata.features or ()) != FEATURES:
            raise BundleError(path, "not the toy model's features", "retrain it")

    def needs_labels(self, metadata) -> bool:
        return True

    def predict(self, folder, metadata, state, frames, caches) -> np.ndarray:
        return probabilities(state, features(frames))


class HarmonisedToy(Toy):
    """The toy, its fold begun by the CNN's histogram round (each site's Nyul summary, the
    same refusals); the global model still starts from zeros. The coordinator waits
    $TOY_BEGIN_PAUSE_S (default 0) after the round before it sends round 1, as the CNN's
    slower start would: a window in which a test sets up its faults."""

    name = "toy-nyul"
    summary = "a test's model: the toy, begun by the histogram round"
    start = Kind.NYUL

    def site_start(self, site, order, floor):
        return CNN.site_start(self, site, order, floor)

    def begin_fold(self, run, fold, replies) -> FoldBegin:
        begun = CNN.begin_fold(self, run, fold, replies)
        time.sleep(float(os.environ.get("TOY_BEGIN_PAUSE_S", "0")))
        return dataclasses.replace(begun, state=zeros(), init_source="zeros")

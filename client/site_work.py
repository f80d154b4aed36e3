"""What a hospital does for each message, as plain functions of its own data and an Order.

The Flower layer (client_app.py) only converts records; everything here is testable
without a federation. Nothing returned here is per subject: per-subject predictions go to
the site's own output folder.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fedcmr.client.dataset import CachedFrame, FrameDataset, load_cache, nyul_summary
from fedcmr.client.site_split import split_frames
from fedcmr.client.training import (
    Scores,
    federated_batch_size,
    make_optimizer,
    score,
    train_loader,
    train_steps,
)
from fedcmr.common.device import placement, seed_run
from fedcmr.common.metrics import binned_counts
from fedcmr.common.model import InitInfo, build_model
from fedcmr.common.nyul import PrivacyError
from fedcmr.common.protocol import NUM_EXAMPLES, Order
from fedcmr.common.results import read_predictions, write_predictions

StateDict = dict[str, torch.Tensor]


@dataclass
class Site:
    name: str
    frames: list[CachedFrame]
    out_dir: Path

    @classmethod
    def open(cls, name: str, caches: list[Path], out_dir: Path) -> Site:
        return cls(name=name, frames=load_cache(caches), out_dir=out_dir)

    @property
    def centres(self) -> list[str]:
        return sorted({f.entry.centre for f in self.frames})

    def parts(self, order: Order) -> dict[str, list[CachedFrame]]:
        frames = [f for f in self.frames if f.entry.phase in order.run.phases]
        return split_frames(frames, order.run, order.fold)

    def is_training(self, order: Order) -> bool:
        """Under leave-centre-out the held-out centre only scores the final model."""
        return order.run.test_centre(order.fold) not in self.centres


def describe(site: Site) -> dict:
    return {"name": site.name, "centres": ",".join(site.centres), "frames": len(site.frames),
            "subjects": len({f.subject for f in site.frames})}


def histogram_summary(site: Site, order: Order) -> dict:
    """The Nyul summary of the training frames, or a refusal the server can log."""
    try:
        summary = nyul_summary(site.parts(order)["train"], order.run.prior,
                               order.run.min_subjects)
    except PrivacyError as err:
        return {"refused": str(err)}
    return summary.to_record_dict()


def _dataset(site: Site, order: Order, part: str, seed: int = 0) -> FrameDataset:
    run = order.run
    landmarks = None if order.landmarks is None else np.asarray(order.landmarks)
    augment = run.augment if part == "train" else "none"
    return FrameDataset(site.parts(order)[part], run.prior, landmarks, run.hyper.input_size,
                        augment, seed)


def _model(state: StateDict):
    """The received model, built without a random initialisation it would overwrite."""
    with torch.device("meta"):
        model, _ = build_model("none", quiet=True)
    # assign=True adopts the tensors themselves: clone, or training would change the caller's
    model.load_state_dict({k: v.clone() for k, v in state.items()}, assign=True)
    where = placement()
    return model.to(where.device, memory_format=where.memory_format), where


def _counts(prefix: str, scores: Scores) -> dict:
    neg, pos = binned_counts(scores.labels, scores.scores)
    return {f"{prefix}-loss": float(scores.loss) if len(scores.labels) else 0.0,
            f"{prefix}-examples": int(len(scores.labels)),
            f"{prefix}-neg": neg.tolist(), f"{prefix}-pos": pos.tolist()}


def round_seed(order: Order, site: Site) -> int:
    return zlib.crc32(f"{order.run.seed}:{order.fold}:{order.server_round}:{site.name}".encode())


def train(site: Site, order: Order, state: StateDict) -> tuple[StateDict, dict]:
    """Validate the received global model, then the paper's local step: `local_iterations`
    batches sized so that they cover the site's training frames once."""
    model, where = _model(state)
    metrics = _counts("val", score(model, _dataset(site, order, "val"), where))
    seed = round_seed(order, site)
    generator = seed_run(seed)
    data = _dataset(site, order, "train", seed)
    data.set_epoch(order.server_round)
    hyper = order.run.hyper
    batch = federated_batch_size(len(data), hyper.local_iterations)
    optimizer = make_optimizer(model, hyper, InitInfo(source=order.init_source, seed=0))
    stats = train_steps(model, optimizer, iter(train_loader(data, batch, generator)), where,
                        max_steps=hyper.local_iterations)
    metrics.update({NUM_EXAMPLES: len(data), "train-loss": stats.loss,
                    "train-batches": stats.n_batches, "batch-size": batch})
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}, metrics


def validate(site: Site, order: Order, state: StateDict) -> dict:
    model, where = _model(state)
    return _counts("val", score(model, _dataset(site, order, "val"), where))


def test(site: Site, order: Order, state: StateDict) -> dict:
    """Score the test split; per-frame scores stay in the site's own folder."""
    model, where = _model(state)
    frames = site.parts(order)["test"]
    scores = score(model, _dataset(site, order, "test"), where)
    rows = [{"subject": f.subject, "centre": f.entry.centre, "phase": f.entry.phase,
             "fold": order.fold, "label": f.entry.label, "score": float(s)}
            for f, s in zip(frames, scores.scores, strict=True)]
    fold_dir = site.out_dir / f"fold_{order.fold}"
    fold_dir.mkdir(parents=True, exist_ok=True)
    write_predictions(fold_dir / "predictions.csv", rows)
    return _counts("test", scores)


def read_site_predictions(out_dir: Path) -> list[dict]:
    """Every fold's predictions a site wrote (for the local launcher, which runs all sites
    on one machine and may gather them; a real deployment never does)."""
    return [row for path in sorted(out_dir.glob("fold_*/predictions.csv"))
            for row in read_predictions(path)]

"""What a hospital does for each message, as plain functions of its own data and an Order.

The Flower layer (client_app.py) only converts messages; everything here is testable
without a federation. Every reply is a typed model of common/replies.py, and nothing in one
is per subject: per-subject predictions go to the site's own output folder.

Before anything leaves, the site's own policy (client/site_policy.py) admits the request,
and every aggregate passes `Site.release`: enough subjects behind it, and a subject set the
differencing guard (client/release_ledger.py) allows. A training aggregate that may not
leave refuses the request; validation or test counts that may not leave are withheld (the
reply says why) and the rest of the reply goes.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from fedcmr.client import site_measures
from fedcmr.client.release_ledger import ReleaseLedger
from fedcmr.client.site_policy import PolicyRefusal, SitePolicy
from fedcmr.common.cache_format import CacheError, read_manifest
from fedcmr.common.device import placement
from fedcmr.common.handshake import site_fingerprint
from fedcmr.common.learning.data import CachedFrame, FrameDataset, load_cache
from fedcmr.common.learning.harmonise import Harmoniser
from fedcmr.common.learning.privacy import clip_update
from fedcmr.common.learning.split import split_frames
from fedcmr.common.learning.training import (
    Scores,
    federated_batch_size,
    make_optimizer,
    score,
    train_loader,
    train_steps,
)
from fedcmr.common.measures import SubjectMeasures, read_all_measures
from fedcmr.common.model import InitInfo, build_model
from fedcmr.common.nyul import PrivacyError
from fedcmr.common.protocol import Order
from fedcmr.common.replies import (
    DescribeReply,
    NyulReply,
    ScoreCounts,
    TestReply,
    TrainReply,
    ValidateReply,
)
from fedcmr.common.results import prediction_rows, read_predictions, write_predictions
from fedcmr.common.seeds import derive_seed, seed_run
from fedcmr.common.update_codec import encode

StateDict = dict[str, torch.Tensor]
log = logging.getLogger("fedcmr.client")


@dataclass
class Site:
    name: str
    frames: list[CachedFrame]
    out_dir: Path
    #: The prepared caches the frames come from (their prep.json make the fingerprint).
    caches: tuple[Path, ...] = ()
    #: The hospital's release policy (its defaults where the site set none).
    policy: SitePolicy = SitePolicy()
    _measures: dict[str, SubjectMeasures] | None = field(default=None, repr=False)

    @classmethod
    def open(cls, name: str, caches: list[Path], out_dir: Path,
             policy: SitePolicy | None = None, centres: Sequence[str] = ()) -> Site:
        """The site serving `caches`, only the frames of `centres` where given (a site
        holding one centre of a shared multi-centre cache)."""
        return cls(name=name, frames=load_site_frames(caches, centres), out_dir=out_dir,
                   caches=tuple(Path(c) for c in caches), policy=policy or SitePolicy())

    def measures(self) -> dict[str, SubjectMeasures]:
        """Its subjects' clinical measures (the caches' measures.csv), read once."""
        if self._measures is None:
            self._measures = read_all_measures(self.caches)
        return self._measures

    @property
    def ledger(self) -> ReleaseLedger:
        return ReleaseLedger(self.policy.ledger_path(self.out_dir), self.policy)

    def release(self, kind: str, frames: list[CachedFrame], floor: int, what: str) -> None:
        """Admit an aggregate over `frames` (kind "train" or "scores") or raise
        PolicyRefusal naming the rule."""
        subjects = {f.subject for f in frames}
        if not subjects and kind == "scores":
            return  # counts of nothing (a training centre's empty LCO test split)
        if len(subjects) < floor:
            rule = "min_subjects" if kind == "train" else "min_eval_subjects"
            raise PolicyRefusal(rule, f"{what} would come from {len(subjects)} subject(s); "
                                f"the minimum is {floor}")
        self.ledger.release(kind, subjects, what)

    def release_scores(self, frames: list[CachedFrame], what: str) -> str | None:
        """None when scores of `frames` may leave; else why they are withheld."""
        try:
            self.release("scores", frames, self.policy.min_eval_subjects, what)
        except PolicyRefusal as refusal:
            return str(refusal)
        return None

    @property
    def centres(self) -> list[str]:
        return sorted({f.entry.centre for f in self.frames})

    def parts(self, order: Order) -> dict[str, list[CachedFrame]]:
        frames = [f for f in self.frames if f.entry.phase in order.run.phases]
        return split_frames(frames, order.run, order.fold)


def load_site_frames(caches: Sequence[Path], centres: Sequence[str] = ()
                     ) -> list[CachedFrame]:
    """The caches' frames (load_cache), only those of `centres` where given: the other
    centres' frames are neither checked nor read. A centre none of the caches holds is a
    CacheError naming the caches, the centres they hold and the fix."""
    if centres:
        held = {e.centre for cache in caches for e in read_manifest(Path(cache))}
        missing = sorted(set(centres) - held)
        if missing:
            raise CacheError(", ".join(map(str, caches)), f"no frames of centre(s) {missing}; "
                             f"the cache(s) hold {sorted(held)}", "serve a centre the caches "
                             "hold, or prepare the missing centre's data into one of them")
    return load_cache(caches, centres=centres)


def describe(site: Site) -> DescribeReply:
    """Who the site is, with its fingerprint; FingerprintError when its caches disagree."""
    return DescribeReply(site=site.name, centres=tuple(site.centres), frames=len(site.frames),
                         subjects=len({f.subject for f in site.frames}),
                         fingerprint=site_fingerprint(site.caches))


def histogram_summary(site: Site, order: Order) -> NyulReply:
    """The Nyul summary of the training frames, or a refusal the server can log."""
    train = site.parts(order)["train"]
    floor = site.policy.histogram_floor(order.run)
    try:
        site.policy.admit(order.run)
        site.release("train", train, floor, f"fold {order.fold} histogram summary")
        summary = Harmoniser(order.run.prior).summary(train, floor)
    except (PrivacyError, PolicyRefusal) as err:
        return NyulReply(site=site.name, refused=str(err))
    return NyulReply(site=site.name, summary=summary)


def _dataset(site: Site, order: Order, part: str, seed: int = 0) -> FrameDataset:
    run = order.run
    augment = run.augment if part == "train" else "none"
    return FrameDataset(site.parts(order)[part], Harmoniser(run.prior, order.landmarks),
                        run.hyper.input_size, augment, seed)


def _model(state: StateDict):
    """The received model, built without a random initialisation it would overwrite."""
    with torch.device("meta"):
        model, _ = build_model("none", quiet=True)
    # assign=True adopts the tensors themselves: clone, or training would change the caller's
    model.load_state_dict({k: v.clone() for k, v in state.items()}, assign=True)
    where = placement()
    return model.to(where.device, memory_format=where.memory_format), where


def _counts(scores: Scores) -> ScoreCounts:
    return ScoreCounts.of(scores.labels, scores.scores, scores.loss)


def _val_counts(site: Site, order: Order, model, where) -> tuple[ScoreCounts, str | None]:
    """The validation counts of `model`, or counts of nothing and why the real ones are
    withheld (a train reply keeps its metric keys: Flower aggregates them)."""
    frames = site.parts(order)["val"]
    withheld = site.release_scores(frames, f"fold {order.fold} validation counts")
    if withheld:
        return ScoreCounts.of(np.zeros(0), np.zeros(0), 0.0), withheld
    return _counts(score(model, _dataset(site, order, "val"), where)), None


def round_seed(order: Order, site: Site) -> int:
    return derive_seed(order.run.seed, order.fold, order.server_round, site.name)


def train(site: Site, order: Order, state: StateDict) -> TrainReply:
    """Validate the received global model, then the paper's local step: `local_iterations`
    batches sized so that they cover the site's training frames once. (The measures model:
    client/site_measures.py.)"""
    if order.run.model == "measures":
        return site_measures.train(site, order, state)
    site.policy.admit(order.run)
    site.release("train", site.parts(order)["train"], site.policy.min_subjects,
                 f"fold {order.fold} model update")
    model, where = _model(state)
    val, withheld = _val_counts(site, order, model, where)
    seed = round_seed(order, site)
    generator = seed_run(seed)
    data = _dataset(site, order, "train", seed)
    data.set_epoch(order.server_round)
    hyper = order.run.hyper
    batch = federated_batch_size(len(data), hyper.local_iterations)
    optimizer = make_optimizer(model, hyper, InitInfo(source=order.init_source, seed=0))
    stats = train_steps(model, optimizer, iter(train_loader(data, batch, generator)), where,
                        max_steps=hyper.local_iterations, frozen_batchnorm=order.run.private)
    weights = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if order.run.private:  # the update clipped here, at the site (privacy.py)
        weights, norm = clip_update(weights, state, order.run.dp_clip)
        log.info("fold %d round %d: update norm %.4g clipped to %.4g", order.fold,
                 order.server_round, norm, min(norm, order.run.dp_clip))
    arrays = encode(weights, state, order.run.update_encoding)  # fp32, or fp16 deltas
    return TrainReply(site=site.name, arrays=arrays, num_examples=len(data),
                      train_loss=stats.loss, train_batches=stats.n_batches, batch_size=batch,
                      server_round=order.server_round, val=val, withheld=withheld)


def validate(site: Site, order: Order, state: StateDict) -> ValidateReply:
    if order.run.model == "measures":
        return site_measures.validate(site, order, state)
    site.policy.admit(order.run)
    model, where = _model(state)
    val, withheld = _val_counts(site, order, model, where)
    return ValidateReply(site=site.name, val=val, withheld=withheld)


def test(site: Site, order: Order, state: StateDict) -> TestReply:
    """Score the test split; per-frame scores stay in the site's own folder, and the
    counts leave where the policy allows."""
    if order.run.model == "measures":
        return site_measures.test(site, order, state)
    site.policy.admit(order.run)
    model, where = _model(state)
    frames = site.parts(order)["test"]
    scores = score(model, _dataset(site, order, "test"), where)
    write_predictions(site.out_dir / f"fold_{order.fold}" / "predictions.csv",
                      prediction_rows(frames, scores.scores, order.fold))
    withheld = site.release_scores(frames, f"fold {order.fold} test counts")
    return TestReply(site=site.name, test=None if withheld else _counts(scores),
                     withheld=withheld)


def read_site_predictions(out_dir: Path) -> list[dict]:
    """Every fold's predictions a site wrote (for the local launcher, which runs all sites
    on one machine and may gather them; a real deployment never does)."""
    return [row for path in sorted(out_dir.glob("fold_*/predictions.csv"))
            for row in read_predictions(path)]

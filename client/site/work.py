"""What a hospital does for each message, as plain functions of its own data and an Order:
the one dispatcher every request goes through (`answer`), so that the site's own release
policy is applied in one place, before any model sees the request.

The Flower layer (client_app.py) only converts messages; everything here is testable
without a federation. The model's own steps come from its plug-in (common/models/); what
they may send back is typed in common/replies.py, and nothing in a reply is per subject:
per-subject predictions go to the site's own output folder.

The policy, per message (`Gate`): the run's settings must be ones the site allows
(SitePolicy.admit); a training aggregate (the start's summary, a model update) needs enough
subjects and a subject set the differencing guard (client/site/ledger.py) allows, or the
request is refused; validation and test counts that may not leave are withheld (the reply
says why, as a typed Refusal) and the rest of the reply goes.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from fedcmr.client.site import release
from fedcmr.client.site.ledger import ReleaseLedger
from fedcmr.client.site.policy import PolicyRefusal, SitePolicy
from fedcmr.client.site.secret import load_secret, secret_rng
from fedcmr.common.cache_format import CacheError, read_manifest
from fedcmr.common.digests import short_digest, state_digest
from fedcmr.common.handshake import site_fingerprint
from fedcmr.common.learning.data import CachedFrame, load_cache
from fedcmr.common.learning.privacy import add_noise, clip_update, privacy_spent
from fedcmr.common.learning.split import split_frames
from fedcmr.common.learning.training import Scores
from fedcmr.common.measures import SubjectMeasures, read_all_measures
from fedcmr.common.models import registry
from fedcmr.common.models.base import ModelPlugin
from fedcmr.common.nyul import PrivacyError
from fedcmr.common.protocol import Kind, Order, Refusal, RefusalRule
from fedcmr.common.replies import (
    START_REPLIES,
    DescribeReply,
    Reply,
    ScoreCounts,
    TestReply,
    TrainReply,
    ValidateReply,
)
from fedcmr.common.results import prediction_rows, read_predictions, write_predictions
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
    #: The site's own state folder (the release ledger), which does not change with the
    #: out-dir (`fedcmr client --state`); None: the out-dir (one-machine launchers, tests).
    state_dir: Path | None = None
    _measures: dict[str, SubjectMeasures] | None = field(default=None, repr=False)
    _secret: bytes | None = field(default=None, repr=False)

    @classmethod
    def open(cls, name: str, caches: list[Path], out_dir: Path,
             policy: SitePolicy | None = None, centres: Sequence[str] = (),
             state_dir: Path | None = None) -> Site:
        """The site serving `caches`, only the frames of `centres` where given (a site
        holding one centre of a shared multi-centre cache)."""
        return cls(name=name, frames=load_site_frames(caches, centres), out_dir=out_dir,
                   caches=tuple(Path(c) for c in caches), policy=policy or SitePolicy(),
                   state_dir=state_dir)

    def measures(self) -> Mapping[str, SubjectMeasures]:
        """Its subjects' clinical measures (the caches' measures.csv), read once, as the
        site's policy lets a model see them: each perturbed by its fixed secret draw of
        `measures_resolution` site SDs (client/site/release.py)."""
        if self._measures is None:
            self._measures = release.perturbed_measures(
                read_all_measures(self.caches), self.policy.measures_resolution, self.secret)
        return self._measures

    @property
    def secret(self) -> bytes:
        """The site's secret (client/site/secret.py), in its state folder."""
        if self._secret is None:
            self._secret = load_secret(self.state_dir or self.out_dir)
        return self._secret

    @property
    def ledger(self) -> ReleaseLedger:
        return ReleaseLedger(self.policy.ledger_path(self.state_dir or self.out_dir),
                             self.policy)

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


# -- the site's policy, applied in one place --------------------------------------------
@dataclass(frozen=True)
class Gate:
    """The site's policy for one request: built only after the run's settings are
    admitted; every aggregate that leaves passes through it."""

    site: Site
    order: Order

    @classmethod
    def admit(cls, site: Site, order: Order) -> Gate:
        site.policy.admit(order.run)
        return cls(site, order)

    def training_aggregate(self, floor: int, what: str) -> list[CachedFrame]:
        """The training frames, when an aggregate over their subjects may leave (at least
        `floor` subjects, a set the differencing guard allows); else PolicyRefusal."""
        frames = self.site.parts(self.order)["train"]
        subjects = {f.subject for f in frames}
        what = f"fold {self.order.fold} {what}"
        if len(subjects) < floor:
            raise PolicyRefusal(RefusalRule.MIN_SUBJECTS, f"{what} would come from "
                                f"{len(subjects)} subject(s); the minimum is {floor}")
        self.site.ledger.release("train", subjects, what)
        return frames

    def withheld(self, part: str, model: str) -> Refusal | None:
        """None when the counts of split `part` under the received model (its digest
        `model`) may leave; else why they are withheld."""
        subjects = {f.subject for f in self.site.parts(self.order)[part]}
        if not subjects:
            return None  # counts of nothing (a training centre's empty LCO test split)
        what = f"fold {self.order.fold} {'validation' if part == 'val' else part} counts"
        try:
            if len(subjects) < self.site.policy.min_eval_subjects:
                raise PolicyRefusal(RefusalRule.MIN_EVAL_SUBJECTS, f"{what} would come from "
                                    f"{len(subjects)} subject(s); the minimum is "
                                    f"{self.site.policy.min_eval_subjects}")
            self.site.ledger.release("scores", subjects, what, model=model)
        except PolicyRefusal as refusal:
            return refusal.refusal
        return None


# -- the dispatcher ---------------------------------------------------------------------
def describe(site: Site) -> DescribeReply:
    """Who the site is, with its fingerprint; FingerprintError when its caches disagree."""
    return DescribeReply(site=site.name, centres=tuple(site.centres), frames=len(site.frames),
                         subjects=len({f.subject for f in site.frames}),
                         fingerprint=site_fingerprint(site.caches))


def answer(site: Site, kind: Kind, order: Order, state: StateDict | None = None) -> Reply:
    """The site's reply to a request of `kind` under the run's model, its policy applied
    first. A refused training request raises PolicyRefusal (the ClientApp sends it as a
    typed error); a refused start is a reply whose `refused` says why."""
    model = registry.get(order.run.model)
    if kind in START_REPLIES:
        return _start(site, kind, order, model)
    gate = Gate.admit(site, order)
    digest = state_digest(state)
    if kind == Kind.TRAIN:
        return _train(gate, model, state, digest)
    if kind == Kind.VALIDATE:
        val, withheld = _val_counts(gate, model, state, digest)
        return ValidateReply(site=site.name, val=val, withheld=withheld)
    if kind == Kind.TEST:
        return _test(gate, model, state, digest)
    raise ValueError(f"no site work for message kind {kind}")


def _start(site: Site, kind: Kind, order: Order, model: ModelPlugin) -> Reply:
    """The fold's start (the histogram summary, the measures sums): refused in the reply,
    so that the coordinator goes on with the sites that released theirs."""
    if model.start != kind:
        raise ValueError(f"the run's model {model.name!r} starts a fold with "
                         f"{model.start}, not {kind}")
    reply_type, what = START_REPLIES[kind]
    floor = site.policy.histogram_floor(order.run)
    try:
        gate = Gate.admit(site, order)
        gate.training_aggregate(floor, what)
        return model.site_start(site, order, floor)
    except PolicyRefusal as refusal:
        return reply_type(site=site.name, refused=refusal.refusal)
    except PrivacyError as err:
        return reply_type(site=site.name, refused=Refusal(rule=RefusalRule.MIN_SUBJECTS,
                                                          text=str(err)))


def _counts(gate: Gate, scores: Scores) -> ScoreCounts:
    """The counts as the site's policy releases them (its score bins)."""
    return release.score_counts(scores.labels, scores.scores, scores.loss,
                                gate.site.policy.score_bin_width)


def _val_counts(gate: Gate, model: ModelPlugin, state: StateDict, digest: str
                ) -> tuple[ScoreCounts, Refusal | None]:
    """The validation counts of the received model, or counts of nothing and why the real
    ones are withheld (a train reply keeps its metric keys: Flower aggregates them)."""
    withheld = gate.withheld("val", digest)
    if withheld:
        return ScoreCounts.of(np.zeros(0), np.zeros(0), 0.0), withheld
    return _counts(gate, model.score(gate.site, gate.order, "val", state)), None


def _train(gate: Gate, model: ModelPlugin, state: StateDict, digest: str) -> TrainReply:
    """Validate the received global model, then the model's local step; under differential
    privacy the update is clipped and noised here, at the site (`_private`), and encoded as
    the run asks (fp32, or fp16 deltas)."""
    order, site = gate.order, gate.site
    gate.training_aggregate(site.policy.min_subjects, "model update")
    val, withheld = _val_counts(gate, model, state, digest)
    update = model.local_train(site, order, state)
    weights, epsilon = update.weights, None
    if order.run.private:
        weights, epsilon = _private(gate, model, weights, state, digest)
    arrays = encode(weights, state, order.run.update_encoding)
    return TrainReply(site=site.name, arrays=arrays, num_examples=update.num_examples,
                      train_loss=update.loss, train_batches=update.batches,
                      batch_size=update.batch_size, server_round=order.server_round,
                      val=val, withheld=withheld, dp_epsilon=epsilon)


def _private(gate: Gate, model: ModelPlugin, weights: StateDict, received: StateDict,
             digest: str) -> tuple[StateDict, float | None]:
    """The update clipped to dp-clip and noised with N(0, (dp-noise x dp-clip)^2) from the
    site's secret (common/learning/privacy.py), and the site's epsilon over the updates it
    released in this run (counted in its ledger: the same request answered again is the
    same release)."""
    order, run = gate.order, gate.order.run
    keys = model.trained_keys(received)
    weights, norm = clip_update(weights, received, run.dp_clip, keys)
    context = (short_digest(run.model_dump_json()), order.fold, order.server_round, digest)
    rng = secret_rng(gate.site.secret, "dp", *context)
    weights = add_noise(weights, keys, run.dp_noise * run.dp_clip, rng)
    releases = gate.site.ledger.private_release(context[0], ":".join(map(str, context[1:])))
    epsilon = privacy_spent(run.dp_noise, releases, run.dp_delta, 1)
    if not np.isfinite(epsilon):  # clipping alone (dp-noise 0) guarantees nothing
        log.info("fold %d round %d: update norm %.4g clipped to %.4g; no noise (dp-noise 0)",
                 order.fold, order.server_round, norm, min(norm, run.dp_clip))
        return weights, None
    log.info("fold %d round %d: update norm %.4g clipped to %.4g, noise %.4g added at the "
             "site; the site's epsilon in this run: %.4g at delta %g", order.fold,
             order.server_round, norm, min(norm, run.dp_clip), run.dp_noise * run.dp_clip,
             epsilon, run.dp_delta)
    return weights, epsilon


def _test(gate: Gate, model: ModelPlugin, state: StateDict, digest: str) -> TestReply:
    """Score the test split; per-frame scores stay in the site's own folder, and the
    counts leave where the policy allows."""
    order, site = gate.order, gate.site
    frames = site.parts(order)["test"]
    scores = model.score(site, order, "test", state)
    write_predictions(site.out_dir / f"fold_{order.fold}" / "predictions.csv",
                      prediction_rows(frames, scores.scores, order.fold))
    withheld = gate.withheld("test", digest)
    return TestReply(site=site.name, test=None if withheld else _counts(gate, scores),
                     withheld=withheld)


def read_site_predictions(out_dir: Path) -> list[dict]:
    """Every fold's predictions a site wrote (for the local launcher, which runs all sites
    on one machine and may gather them; a real deployment never does)."""
    return [row for path in sorted(out_dir.glob("fold_*/predictions.csv"))
            for row in read_predictions(path)]


# -- each message kind by name (the ClientApp, tests and benchmarks call these) ----------
def histogram_summary(site: Site, order: Order) -> Reply:
    """The CNN's start: the Nyul summary of the training frames, or why it is refused."""
    return answer(site, Kind.NYUL, order)


def measure_sums(site: Site, order: Order) -> Reply:
    """The measures model's start: the training subjects' measure sums, or a refusal."""
    return answer(site, Kind.MEASURE_STATS, order)


def train(site: Site, order: Order, state: StateDict) -> TrainReply:
    return answer(site, Kind.TRAIN, order, state)


def validate(site: Site, order: Order, state: StateDict) -> ValidateReply:
    return answer(site, Kind.VALIDATE, order, state)


def test(site: Site, order: Order, state: StateDict) -> TestReply:
    return answer(site, Kind.TEST, order, state)

"""The CNN: r3d_18 (common/model.py) on the prepared images, Nyul-harmonised.

Its fold starts with the histogram round: each training site releases the Nyul summary of
its training frames, the coordinator combines them N_k / N into the reference landmarks
and initialises the network from the run's fold seed (pretrained body where available).
A site's step: `local_iterations` batches sized to cover its training frames once; its
updates may be clipped for differential privacy and sent as fp16 deltas.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from fedcmr.common import nyul
from fedcmr.common.atomic import atomic_path, write_csv, write_json
from fedcmr.common.bundle import (
    BUNDLE_DIR,
    PRIORS_NEEDING_LABELS,
    BundleError,
    BundleMetadata,
    Harmonisation,
    InputLayout,
    Metrics,
    SplitMetric,
    base_metadata,
    prior_channel_count,
    write_bundle,
)
from fedcmr.common.device import placement
from fedcmr.common.handshake import model_digest
from fedcmr.common.learning.data import FrameDataset, part_augmentation
from fedcmr.common.learning.early_stopping import EarlyStopping
from fedcmr.common.learning.harmonise import Harmoniser, centre_summaries, harmonisation_record
from fedcmr.common.learning.split import split_frames
from fedcmr.common.learning.training import (
    Scores,
    federated_batch_size,
    make_optimizer,
    score,
    train_loader,
    train_steps,
)
from fedcmr.common.model import InitInfo, build_model
from fedcmr.common.models.base import (
    FoldBegin,
    LocalUpdate,
    ModelPlugin,
    PooledFold,
    PooledRun,
    SiteData,
    StartError,
    StateDict,
)
from fedcmr.common.protocol import Kind, Order
from fedcmr.common.replies import NyulReply
from fedcmr.common.results import prediction_rows
from fedcmr.common.run_config import RunConfig
from fedcmr.common.seeds import derive_seed, seed_run


def _received(state: StateDict):
    """The received model, built without a random initialisation it would overwrite."""
    with torch.device("meta"):
        model, _ = build_model("none", quiet=True)
    # assign=True adopts the tensors themselves: clone, or training would change the caller's
    model.load_state_dict({k: v.clone() for k, v in state.items()}, assign=True)
    where = placement()
    return model.to(where.device, memory_format=where.memory_format), where


def _dataset(site: SiteData, order: Order, part: str, seed: int = 0) -> FrameDataset:
    run = order.run
    return FrameDataset(site.parts(order)[part], Harmoniser(run.prior, order.landmarks),
                        run.hyper.input_size, part_augmentation(part, run.augment), seed)


def round_seed(order: Order, site: SiteData) -> int:
    return derive_seed(order.run.seed, order.fold, order.server_round, site.name)


class CNN(ModelPlugin):
    name = "cnn"
    summary = "r3d_18 on the prepared images (Nyul-harmonised, the prior's channels)"
    inputs = ("images",)
    start = Kind.NYUL
    supports_dp = True
    supports_fp16_delta = True

    # -- a fold's start ------------------------------------------------------------------
    def site_start(self, site: SiteData, order: Order, floor: int) -> NyulReply:
        train = site.parts(order)["train"]
        return NyulReply(site=site.name,
                         summary=Harmoniser(order.run.prior).summary(train, floor))

    def begin_fold(self, run: RunConfig, fold: int, replies: Sequence[NyulReply]
                   ) -> FoldBegin:
        refused: dict[str, str] = {}
        summaries, by_site = [], {}
        for reply in replies:
            if reply.summary is None:
                refused[reply.site] = f"sent no histogram summary: {reply.refused or 'none'}"
            elif reply.summary.n_subjects < run.min_subjects:  # should have refused
                refused[reply.site] = (f"histogram summary of {reply.summary.n_subjects} "
                                       "subjects, fewer than min-subjects")
            else:
                summaries.append(reply.summary)
                by_site[reply.site] = reply.summary.model_dump()
        if not summaries:
            raise StartError("no site released a histogram summary; lower min-subjects "
                             "only if every site agrees")
        harmoniser = Harmoniser(run.prior).with_summaries(summaries)
        model, init = build_model(run.pretrained, run.fold_seed(fold))
        from flwr.app import ArrayRecord  # the same tensors as a message would carry

        state = ArrayRecord(model.state_dict()).to_torch_state_dict()
        return FoldBegin(state=state, init_source=init.source,
                         landmarks=harmoniser.landmarks, refused=refused,
                         histogram=nyul.combine_histograms(summaries).tolist(),
                         bin_edges=list(summaries[0].bin_edges), site_summaries=by_site)

    # -- at a site -----------------------------------------------------------------------
    def score(self, site: SiteData, order: Order, part: str, state: StateDict
              ) -> Scores:
        model, where = _received(state)
        return score(model, _dataset(site, order, part), where)

    def local_train(self, site: SiteData, order: Order, state: StateDict) -> LocalUpdate:
        """The paper's local step: `local_iterations` batches sized so that they cover the
        site's training frames once (BatchNorm frozen under differential privacy)."""
        model, where = _received(state)
        seed = round_seed(order, site)
        generator = seed_run(seed)
        data = _dataset(site, order, "train", seed)
        data.set_epoch(order.server_round)
        hyper = order.run.hyper
        batch = federated_batch_size(len(data), hyper.local_iterations)
        optimizer = make_optimizer(model, hyper, InitInfo(source=order.init_source, seed=0))
        stats = train_steps(model, optimizer, iter(train_loader(data, batch, generator)),
                            where, max_steps=hyper.local_iterations,
                            frozen_batchnorm=order.run.private)
        weights = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        return LocalUpdate(weights=weights, num_examples=len(data), loss=stats.loss,
                           batches=stats.n_batches, batch_size=batch)

    # -- the pooled baseline -------------------------------------------------------------
    def fit_pooled(self, run: PooledRun, fold: int, fold_dir: Path) -> PooledFold:
        """Train, keep the best model on validation, score the test split; also writes
        fold_dir/harmonisation.json."""
        config, where = run.config, run.where
        parts = split_frames(run.frames, config, fold)
        if not parts["train"] or not parts["test"]:
            raise ValueError(f"fold {fold}: empty train or test split; the cohort is too "
                             "small")
        hyper = config.hyper
        # Pooled landmarks: equal to combining per-centre summaries with weights N_k / N
        # (tested in test_nyul), which is what the federation does.
        harmoniser = Harmoniser(config.prior).fit(parts["train"])
        write_json(fold_dir / "harmonisation.json", harmonisation_record(
            centre_summaries(harmoniser, parts["train"]), harmoniser.landmarks))
        seed = config.fold_seed(fold)
        generator = seed_run(seed)
        datasets = {name: FrameDataset(part, harmoniser, hyper.input_size,
                                       part_augmentation(name, config.augment), seed)
                    for name, part in parts.items()}
        model, init = build_model(config.pretrained, seed)
        model = model.to(where.device, memory_format=where.memory_format)
        optimizer = make_optimizer(model, hyper, init)
        stopper = EarlyStopping(hyper.patience)
        best_state = copy.deepcopy(model.state_dict())
        history = []
        bar = tqdm(range(hyper.max_epochs), desc=f"fold {fold}", unit="epoch",
                   disable=not run.progress)
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
                          test=SplitMetric(auc=test.auc, n=len(test.scores)))
        write_bundle(fold_dir / BUNDLE_DIR, self.bundle_metadata(
            config, fold, "cds", metrics, run.preprocessing, harmoniser.landmarks,
            init.source), fold_dir / "best_model.pt")
        return PooledFold(prediction_rows(parts["test"], test.scores, fold), init)

    # -- the bundle ----------------------------------------------------------------------
    def digest(self) -> str:
        return model_digest()

    def bundle_metadata(self, config, fold, framework, metrics, preprocessing,
                        landmarks=None, init_source="random", strategy=None,
                        vote_alpha=None) -> BundleMetadata:
        """`input` is the network input of a frame, `harmonisation` the Nyul landmarks its
        images are scaled with."""
        depth, height, width = config.hyper.input_size
        return base_metadata(
            self.name, self.digest(), config, fold, framework, metrics, preprocessing,
            init_source, strategy=strategy, vote_alpha=vote_alpha,
            input=InputLayout(channels=prior_channel_count(config.prior), depth=depth,
                              height=height, width=width),
            harmonisation=Harmonisation(landmarks=None if landmarks is None
                                        else tuple(float(x) for x in landmarks)))

    def check_metadata(self, metadata: BundleMetadata, path: Path) -> None:
        from fedcmr.common import __version__

        if metadata.input is None or metadata.features is not None:
            raise BundleError(path, "a cnn bundle has an input layout and no features",
                              f"use the fedcmr version that wrote it "
                              f"({metadata.fedcmr_version})")
        want = prior_channel_count(metadata.prior)
        if metadata.input.channels != want:
            raise BundleError(path, f"input has {metadata.input.channels} channels, but prior "
                              f"{metadata.prior!r} gives {want} in fedcmr {__version__}",
                              f"use the fedcmr version that wrote it "
                              f"({metadata.fedcmr_version})")

    def described(self, metadata: BundleMetadata) -> str:
        return f"{metadata.prior} CNN"

    def needs_labels(self, metadata: BundleMetadata) -> bool:
        return metadata.prior in PRIORS_NEEDING_LABELS

    def network(self, folder: Path, metadata: BundleMetadata, state: StateDict):
        """The network with the bundle's weights (every entry must fit, strictly)."""
        model, _ = build_model("none", quiet=True)
        try:
            model.load_state_dict(dict(state), strict=True)
        except RuntimeError as exc:
            first = str(exc).splitlines()[0][:200]
            raise BundleError(Path(folder) / "model.pt", f"the weights do not fit the model "
                              f"({first})", f"use the fedcmr version that wrote it "
                              f"({metadata.fedcmr_version})") from None
        return model

    def predict(self, folder, metadata, state, frames, caches) -> np.ndarray:
        where = placement()
        model = self.network(folder, metadata, state).to(where.device,
                                                         memory_format=where.memory_format)
        harmoniser = Harmoniser(metadata.prior, metadata.harmonisation.landmarks)
        input_size = (metadata.input.depth, metadata.input.height, metadata.input.width)
        return score(model, FrameDataset(frames, harmoniser, input_size, "none"),
                     where).scores


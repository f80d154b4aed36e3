"""The measures model: logistic regression on the subjects' clinical measures
(common/learning/measures_model.py; `fedcmr prepare` writes them to CACHE/measures.csv).

Its fold starts with the measures sums (each training site's subject count, per-measure sum
and sum of squares), combined into the pooled standardisation with zero coefficients. A
site's step: `local_iterations` full-batch gradient steps. The pooled baseline fits it
exactly. Its bundle holds the four arrays and names the measures it reads (`features`); it
takes no image. What leaves a site: the sums once per fold, the four arrays, n_k and binned
score counts; the per-subject measures and scores stay.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from fedcmr.common.atomic import atomic_path, write_csv
from fedcmr.common.bundle import (
    BUNDLE_DIR,
    WEIGHTS,
    BundleError,
    BundleMetadata,
    Harmonisation,
    Metrics,
    SplitMetric,
    base_metadata,
    read_checked_weights,
    write_bundle,
)
from fedcmr.common.cache_format import CacheError, read_manifest
from fedcmr.common.digests import short_digest
from fedcmr.common.learning import measures_model as mm
from fedcmr.common.learning.split import split_frames
from fedcmr.common.learning.training import Scores
from fedcmr.common.measures import (
    FEATURES,
    MEASURES_CSV,
    SubjectMeasures,
    read_measures,
)
from fedcmr.common.metrics import auc
from fedcmr.common.model import InitInfo
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
from fedcmr.common.replies import MeasureStatsReply
from fedcmr.common.results import prediction_rows
from fedcmr.common.run_config import RunConfig


class Measures(ModelPlugin):
    name = "measures"
    summary = "logistic regression on the clinical measures `fedcmr prepare` writes"
    inputs = ("measures",)
    start = Kind.MEASURE_STATS
    #: A private run clips and noises its coefficients and intercept (its standardisation
    #: is fixed for the fold).
    supports_dp = True

    def trained_keys(self, state: StateDict) -> list[str]:
        return ["coef", "intercept"]

    # -- a fold's start ------------------------------------------------------------------
    def site_start(self, site: SiteData, order: Order, floor: int) -> MeasureStatsReply:
        _, x, _ = mm.subject_table(site.parts(order)["train"], site.measures())
        return MeasureStatsReply(site=site.name, sums=mm.sums(x))

    def begin_fold(self, run: RunConfig, fold: int, replies: Sequence[MeasureStatsReply]
                   ) -> FoldBegin:
        """Its standardisation from the training sites' released sums (pooled mean and
        SD), zero coefficients."""
        refused: dict[str, str] = {}
        parts = []
        for reply in replies:
            if reply.sums is None or reply.sums.n < run.min_subjects:
                why = reply.refused or f"{reply.sums.n if reply.sums else 0} subjects"
                refused[reply.site] = f"sent no measure sums: {why}"
                continue
            parts.append(reply.sums)
        if not parts:
            raise StartError("no site released its measure sums; lower min-subjects only "
                             "if every site agrees")
        mean, std = mm.combine_sums(parts)
        return FoldBegin(state=mm.initial_state(mean, std), init_source="zeros",
                         refused=refused)

    # -- at a site -----------------------------------------------------------------------
    def score(self, site: SiteData, order: Order, part: str, state: StateDict
              ) -> Scores:
        labels, scores, loss = mm.frame_scores(site.parts(order)[part], site.measures(),
                                               state)
        return Scores(loss=loss, labels=labels, scores=scores)

    def local_train(self, site: SiteData, order: Order, state: StateDict) -> LocalUpdate:
        """`local_iterations` full-batch gradient steps on the site's training subjects
        (n_k: its training frames, as for the CNN)."""
        frames = site.parts(order)["train"]
        _, x, y = mm.subject_table(frames, site.measures())
        steps = order.run.hyper.local_iterations
        new_state, start_loss = mm.local_steps(state, x, y, steps)
        return LocalUpdate(weights=new_state, num_examples=len(frames), loss=start_loss,
                           batches=steps, batch_size=len(x))

    # -- the pooled baseline -------------------------------------------------------------
    def data_digest(self, frames_digest: str, run: PooledRun) -> str:
        """The model's input is the table, not the voxels: the frames' digest and every
        subject's measures."""
        if run.measures is None:
            raise ValueError("the measures model needs the caches' clinical measures. Fix: "
                             "pass caches prepared by this fedcmr version (they hold "
                             "measures.csv)")
        subjects = sorted({f.subject for f in run.frames})
        return short_digest(frames_digest + json.dumps(
            [run.measures[s].model_dump() for s in subjects]))

    def fit_pooled(self, run: PooledRun, fold: int, fold_dir: Path) -> PooledFold:
        """The pooled training subjects' measures, standardised and fitted exactly."""
        config, measures = run.config, run.measures
        parts = split_frames(run.frames, config, fold)
        if not parts["train"] or not parts["test"]:
            raise ValueError(f"fold {fold}: empty train or test split; the cohort is too "
                             "small")
        _, x, y = mm.subject_table(parts["train"], measures)
        if len(set(y.tolist())) < 2:
            raise ValueError(f"fold {fold}: the training subjects are all of one class")
        state = mm.fit_central(x, y)
        with atomic_path(fold_dir / "best_model.pt") as tmp:
            torch.save(state, tmp)
        val_labels, val_scores, val_loss = mm.frame_scores(parts["val"], measures, state)
        val_auc = auc(val_labels, val_scores) if len(val_labels) else None
        write_csv(fold_dir / "history.csv", ["epoch", "train_loss", "val_loss", "val_auc",
                                             "best"],
                  [{"epoch": 0, "train_loss": mm.loss(state, x, y),
                    "val_loss": val_loss, "val_auc": val_auc, "best": True}])
        test_labels, test_scores, _ = mm.frame_scores(parts["test"], measures, state)
        metrics = Metrics(validation=SplitMetric(auc=val_auc, n=len(val_labels)),
                          test=SplitMetric(auc=auc(test_labels, test_scores)
                                           if len(test_labels) else None,
                                           n=len(test_labels)))
        write_bundle(fold_dir / BUNDLE_DIR, self.bundle_metadata(
            config, fold, "cds", metrics, run.preprocessing), fold_dir / "best_model.pt")
        return PooledFold(prediction_rows(parts["test"], test_scores, fold),
                          InitInfo(source="zeros", seed=0))

    # -- the bundle ----------------------------------------------------------------------
    def digest(self) -> str:
        """Its features and arrays, in order."""
        text = "logistic\n" + ",".join(FEATURES) + "\n" + ",".join(mm.STATE_KEYS)
        return short_digest(text)

    def bundle_metadata(self, config, fold, framework, metrics, preprocessing,
                        landmarks=None, init_source="zeros", strategy=None,
                        vote_alpha=None) -> BundleMetadata:
        """No image input, no landmarks, a zero start."""
        return base_metadata(self.name, self.digest(), config, fold, framework, metrics,
                             preprocessing, "zeros", strategy=strategy,
                             vote_alpha=vote_alpha, input=None, features=FEATURES,
                             harmonisation=Harmonisation(landmarks=None))

    def check_metadata(self, metadata: BundleMetadata, path: Path) -> None:
        if metadata.input is not None or not metadata.features:
            raise BundleError(path, "a measures bundle has features and no input layout",
                              f"use the fedcmr version that wrote it "
                              f"({metadata.fedcmr_version})")

    def read_weights(self, folder: Path, metadata: BundleMetadata) -> StateDict:
        """The four arrays, each of the length its features say (checked here, so that
        predict never meets a mismatched state)."""
        fix = f"use the fedcmr version that wrote it ({metadata.fedcmr_version})"
        if tuple(metadata.features or ()) != FEATURES:
            raise BundleError(folder / "metadata.json", f"the bundle reads the measures "
                              f"{list(metadata.features or ())}, this fedcmr measures "
                              f"{list(FEATURES)}", fix)
        state = read_checked_weights(folder, metadata, self.digest())
        sizes = {"mean": len(FEATURES), "std": len(FEATURES), "coef": len(FEATURES),
                 "intercept": 1}
        wrong = [k for k in mm.STATE_KEYS if k not in state or state[k].numel() != sizes[k]]
        if wrong or set(state) != set(mm.STATE_KEYS):
            raise BundleError(folder / WEIGHTS, f"not a measures model's arrays (expected "
                              f"{sizes}, found {({k: v.numel() for k, v in state.items()})})",
                              fix)
        return state

    def described(self, metadata: BundleMetadata) -> str:
        return "measures model"

    def predict(self, folder, metadata, state, frames, caches) -> np.ndarray:
        """Each frame's P(HCM) from its subject's measures (the caches' measures.csv). A
        subject the caches hold no measures for is a CacheError naming the file and the
        fix."""
        table: dict[str, SubjectMeasures] = {}
        for cache in map(Path, caches):
            try:
                found = read_measures(cache)
            except (OSError, ValueError) as exc:
                raise CacheError(cache / MEASURES_CSV, str(exc).split(": ", 1)[-1].split(
                    ". Fix: ")[0], f"re-run `fedcmr prepare ... --out {cache}` with this "
                    "fedcmr version (it measures every subject from its label maps)"
                ) from None
            subjects = {e.subject for e in read_manifest(cache)} & {f.subject for f in frames}
            missing = sorted(subjects - set(found))
            if missing:
                raise CacheError(cache / MEASURES_CSV, f"no clinical measures for subject(s) "
                                 f"{missing[:5]} (of {len(missing)}); the measures model "
                                 "reads them instead of the images", "prepare the subjects "
                                 "with their LV, MYO and RV label maps at ED and ES (`fedcmr "
                                 "prepare` measures them), or use a CNN bundle")
            table.update({s: found[s] for s in subjects})
        x = np.array([table[f.subject].features() for f in frames], dtype=np.float64)
        return mm.predict(state, x.reshape(len(frames), -1))

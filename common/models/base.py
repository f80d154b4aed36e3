"""What a model provides, wherever it runs: the contract between a model and the rest of
fedcmr, in the manner of FLamby's per-dataset interface (one small class per model) and
Flower's strategies (a variant overrides a step).

fedcmr's federation, pooled baseline, bundles and `fedcmr predict` call a model only through
these methods, found by name in common/models/registry.py; nothing else branches on a
model's name. What a model does at each place:

- a fold's start: the contract's exchange it begins with (`start`: the histogram round,
  the measures sums, or none), each site's answer (`site_start`) and the coordinator's
  combination of the answers into the global model the fold starts from (`begin_fold`);
- at a site: a local training step from the global model (`local_train`) and the scores of
  one split (`score`). The site's release policy is applied around these by the site's one
  dispatcher (client/site/work.py); a model never sees it and cannot bypass it;
- neither side: the pooled fit of one fold (`fit_pooled`, the centralised baseline);
- its bundle: metadata (`bundle_metadata`), checks (`check_metadata`), weights
  (`read_weights`) and scoring new patients (`predict`).

What leaves a site is fixed by the contract (common/replies.py, enforced by the audit
gate), not by a model: a model's weights travel as an ArrayRecord, its scores as binned
counts, its start as one of the contract's start replies.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal, Protocol

import numpy as np

from fedcmr.common.protocol import Kind

if TYPE_CHECKING:
    import torch

    from fedcmr.common.bundle import BundleMetadata, Metrics, Preprocessing
    from fedcmr.common.device import Placement
    from fedcmr.common.learning.data import CachedFrame
    from fedcmr.common.learning.training import Scores
    from fedcmr.common.measures import SubjectMeasures
    from fedcmr.common.model import InitInfo
    from fedcmr.common.protocol import Order
    from fedcmr.common.replies import Reply
    from fedcmr.common.run_config import RunConfig

StateDict = dict[str, "torch.Tensor"]
Framework = Literal["cds", "fl"]
#: What a model may read of a subject.
Input = Literal["images", "measures"]


class SiteData(Protocol):
    """What a site shows its model: its name, its own output folder, its frames split as
    the order says, and its subjects' clinical measures (client/site/work.py `Site`)."""

    name: str
    out_dir: Path

    def parts(self, order: Order) -> dict[str, list[CachedFrame]]: ...

    def measures(self) -> Mapping[str, SubjectMeasures]: ...


@dataclass(frozen=True)
class LocalUpdate:
    """A site's trained model and what the coordinator weighs and logs it by."""

    weights: Mapping[str, torch.Tensor]
    num_examples: int  # n_k: the site's training frames
    loss: float
    batches: int
    batch_size: int


@dataclass
class FoldBegin:
    """The coordinator's start of a fold: the global model and what the start released."""

    state: StateDict
    #: Where the initial weights came from (common/model.InitInfo.source, "zeros", ...).
    init_source: str
    #: The reference landmarks every site standardises its images to (None: none).
    landmarks: tuple[float, ...] | None = None
    #: Sites that released nothing usable for the start, with why.
    refused: dict[str, str] = field(default_factory=dict)
    #: The histogram round's record (fold_K/summary.json): combined histogram and bins,
    #: each site's released summary.
    histogram: list[float] | None = None
    bin_edges: list[float] | None = None
    site_summaries: dict[str, dict] = field(default_factory=dict)


class StartError(RuntimeError):
    """No site released what a fold starts from: the coordinator stops with this text."""


@dataclass(frozen=True)
class PooledRun:
    """What the centralised baseline hands a model for one run (lab/centralized.py)."""

    frames: Sequence[CachedFrame]
    config: RunConfig
    where: Placement
    progress: bool = True
    #: The caches' prep.json (None where unknown), for the bundle.
    preprocessing: Preprocessing | None = None
    #: The subjects' clinical measures, where the model reads them (`inputs`).
    measures: Mapping[str, SubjectMeasures] | None = None


@dataclass(frozen=True)
class PooledFold:
    """One pooled fold's test predictions (common/results.prediction_rows) and init."""

    rows: list[dict]
    init: InitInfo


class ModelPlugin:
    """Base of every model. Subclasses set `name` and the class attributes below and
    override the steps they take part in; a step a model does not take raises
    NotImplementedError naming the model."""

    #: The model's name (RunConfig.model, BundleMetadata.model, `--model`).
    name: ClassVar[str]
    #: One line for `--help` and the docs.
    summary: ClassVar[str] = ""
    #: What it reads of a subject: the prepared images and/or the clinical measures.
    inputs: ClassVar[tuple[Input, ...]] = ("images",)
    #: The contract's exchange that starts a federated fold (Kind.NYUL: the histogram
    #: round; Kind.MEASURE_STATS: the measures sums), or None: the coordinator starts it.
    start: ClassVar[Kind | None] = None
    #: Whether its updates may be clipped and noised (--dp-clip) and sent as fp16 deltas.
    supports_dp: ClassVar[bool] = False
    supports_fp16_delta: ClassVar[bool] = False

    def __repr__(self) -> str:
        return f"<model {self.name}>"

    def _missing(self, step: str) -> NotImplementedError:
        return NotImplementedError(f"model {self.name!r} does not implement {step}")

    @property
    def needs_measures(self) -> bool:
        return "measures" in self.inputs

    # -- settings ------------------------------------------------------------------------
    def check_run(self, run: RunConfig) -> None:
        """Raise ValueError for settings this model cannot run with."""
        if run.dp_clip > 0 and not self.supports_dp:
            raise ValueError(f"differential privacy (dp-clip) is not implemented for the "
                             f"{self.name} model's updates; run it with dp-clip 0")
        if run.update_encoding != "fp32" and (not self.supports_fp16_delta
                                              or run.dp_clip > 0):
            # dp: rounding a clipped update may lift its norm above dp-clip, the noise's scale
            raise ValueError(f"update-encoding {run.update_encoding} is for the CNN's "
                             "updates without dp-clip; use update-encoding fp32")

    def trained_keys(self, state: StateDict) -> list[str]:
        """The entries of its state that training changes: what a private run clips and
        noises (default: all but BatchNorm's running statistics)."""
        from fedcmr.common.learning.privacy import parameter_keys

        return parameter_keys(state)

    # -- a fold's start ------------------------------------------------------------------
    def site_start(self, site: SiteData, order: Order, floor: int) -> Reply:
        """A site's answer to the start exchange, over its training frames (at least
        `floor` subjects, the site's policy having admitted them)."""
        raise self._missing("a start exchange")

    def begin_fold(self, run: RunConfig, fold: int, replies: Sequence[Reply]) -> FoldBegin:
        """The global model of `fold` from the training sites' start replies (none when
        `start` is None); StartError when none is usable."""
        raise self._missing("the fold's start")

    # -- at a site -----------------------------------------------------------------------
    def local_train(self, site: SiteData, order: Order, state: StateDict) -> LocalUpdate:
        """The local training step from the received global model `state`."""
        raise self._missing("local training")

    def score(self, site: SiteData, order: Order, part: str, state: StateDict
              ) -> Scores:
        """The scores of the site's split `part` ("val", "test") under `state`: labels,
        P(HCM) per frame in the split's frame order, mean loss."""
        raise self._missing("scoring")

    # -- neither side: the pooled baseline -----------------------------------------------
    def data_digest(self, frames_digest: str, run: PooledRun) -> str:
        """What the model's input data are (a rerun on other data redoes every fold):
        the frames' digest, and whatever else the model reads."""
        return frames_digest

    def fit_pooled(self, run: PooledRun, fold: int, fold_dir: Path) -> PooledFold:
        """Train fold `fold` on the pooled training frames; writes fold_dir/best_model.pt,
        history.csv and the bundle (fold_dir/bundle)."""
        raise self._missing("the pooled fit")

    # -- the bundle ----------------------------------------------------------------------
    def digest(self) -> str:
        """A short digest of the model's definition: a bundle trained with another is
        refused."""
        raise self._missing("a definition digest")

    def bundle_metadata(self, config: RunConfig, fold: int, framework: Framework,
                        metrics: Metrics, preprocessing: Preprocessing | None,
                        landmarks: Sequence[float] | None = None,
                        init_source: str = "random", strategy: str | None = None,
                        vote_alpha: float | None = None) -> BundleMetadata:
        raise self._missing("bundle metadata")

    def check_metadata(self, metadata: BundleMetadata, path: Path) -> None:
        """Raise BundleError when the metadata does not fit this fedcmr's model."""

    def read_weights(self, folder: Path, metadata: BundleMetadata) -> StateDict:
        """The bundle's weights, checked against the model's definition."""
        from fedcmr.common.bundle import read_checked_weights

        return read_checked_weights(folder, metadata, self.digest())

    def described(self, metadata: BundleMetadata) -> str:
        """The bundle's model in a few words, for the console."""
        return f"{self.name} model"

    def needs_labels(self, metadata: BundleMetadata) -> bool:
        """Whether scoring a frame needs its label maps."""
        return False

    def predict(self, folder: Path, metadata: BundleMetadata, state: StateDict,
                frames: Sequence[CachedFrame], caches: Sequence[Path]) -> np.ndarray:
        """P(HCM) of each of `frames` (read from `caches`) under the bundle's weights."""
        raise self._missing("prediction")


"""A trained fold as a self-contained model bundle, in the manner of MONAI bundles: what a
hospital needs to apply the model to new patients exactly as it was trained.

RUN/fold_K/bundle/model.pt        the weights (a torch state dict)
RUN/fold_K/bundle/metadata.json   BundleMetadata: versions, input layout, preprocessing,
                                  harmonisation landmarks, training set-up, metrics

`write_bundle` writes model.pt first and metadata.json last (each atomically; an earlier
metadata.json is removed first), so a folder with a metadata.json is a whole bundle, and
metadata.json records model.pt's SHA-256, so a damaged or swapped weights file is refused.
`load_bundle` checks everything it can before the model runs and raises `BundleError`, one
line naming the file, the problem and the fix. The `model` field says what kind of model the
bundle holds, and loading dispatches on it (`WEIGHT_READERS`):
- "cnn": r3d_18's state dict; `input` is the network input of a frame, `harmonisation` the
  Nyul landmarks its images are scaled with;
- "measures": the measures model's four arrays (common/learning/measures_model.py);
  `features` names the clinical measures (the cache's measures.csv columns) it reads, in
  order; it takes no image, so `input` is None.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator
from torch import nn

from fedcmr.common import __version__, nyul
from fedcmr.common.atomic import atomic_path, write_json
from fedcmr.common.frames import Phase
from fedcmr.common.handshake import (
    model_digest,
    site_fingerprint,
)
from fedcmr.common.run_config import Prior, RunConfig

#: Bump when what metadata.json holds changes incompatibly.
BUNDLE_FORMAT = 1
BUNDLE_DIR = "bundle"
METADATA = "metadata.json"
WEIGHTS = "model.pt"
#: The priors whose input channels are cut out of the label maps.
PRIORS_NEEDING_LABELS: frozenset[str] = frozenset({"masked", "structures"})
BUNDLE_FIX = "point --model at a finished run's fold_K/bundle folder"
#: Why a bundle may lack its preprocessing.
NO_PREPROCESSING = ("its run was not given its caches' prep.json, or the caches were "
                    "prepared differently")


class BundleError(ValueError):
    """A bundle that cannot be used: one line naming the file, the problem and the fix (a
    ValueError, so that every command reports it as bad input, exit code 2)."""

    def __init__(self, file: Path | str, problem: str, fix: str):
        self.file, self.problem, self.fix = str(file), problem, fix
        super().__init__(f"{file}: {problem}. Fix: {fix}")

    def __reduce__(self):
        return (BundleError, (self.file, self.problem, self.fix))


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class InputLayout(_Strict):
    """The network input of one frame: (channels, depth, height, width) = (C, z, y, x)."""

    channels: int
    depth: int
    height: int
    width: int


class Preprocessing(_Strict):
    """How the training frames were prepared (`fedcmr prepare`; a cache's prep.json), as
    plain JSON, so that common/ needs nothing from client/ to record or compare it."""

    cache_format: int
    label_convention: str | None
    spacing_mm: tuple[float, float, float]
    crop: tuple[int, int, int]
    #: client/prep_config.N4Params as a dict.
    n4: dict[str, Any]

    @classmethod
    def from_fields(cls, fields: Mapping[str, Any]) -> Preprocessing:
        """From common/handshake's cache fields (read_cache_fields, a SiteFingerprint)."""
        n4 = fields["n4"]
        return cls(cache_format=fields["cache_format"],
                   label_convention=fields["label_convention"],
                   spacing_mm=fields["spacing_mm"], crop=fields["crop"],
                   n4=json.loads(n4) if isinstance(n4, str) else dict(n4))

    def n4_text(self) -> str:
        """The N4 settings as canonical JSON (as common/handshake compares them)."""
        return json.dumps(self.n4, sort_keys=True, separators=(",", ":"))


class Harmonisation(_Strict):
    """The Nyul reference every image is standardised to (common/learning/harmonise.py)."""

    percentiles: tuple[float, ...] = nyul.PERCENTILES
    #: None: each image scaled by its own p1 / p99 (a harmoniser without landmarks).
    landmarks: tuple[float, ...] | None


class Training(_Strict):
    config: dict[str, Any]  # RunConfig.model_dump(mode="json")
    profile: dict[str, Any]  # the profile's values (a profile is looked up by name)
    fold_seed: int


class SplitMetric(_Strict):
    auc: float | None = None
    #: Frames scored; None where the framework does not know it (FL validation).
    n: int | None = None


class Metrics(_Strict):
    validation: SplitMetric
    test: SplitMetric


class Init(_Strict):
    source: str  # common/model.InitInfo.source: "kinetics400", "file:<path>" or "random"
    pretrained: bool
    seed: int


class BundleMetadata(_Strict):
    bundle_format: int = BUNDLE_FORMAT
    model: Literal["cnn", "measures"] = "cnn"
    fedcmr_version: str = __version__
    model_digest: str
    #: SHA-256 of model.pt (write_bundle fills it in).
    weights_sha256: str = ""
    #: The CNN's input per frame (None for the measures model, which takes no image).
    input: InputLayout | None
    #: The measures model's inputs: measures.csv columns, in the order of its coefficients.
    features: tuple[str, ...] | None = None
    prior: Prior
    phases: tuple[Phase, ...]
    #: None: the training data's preprocessing is not known (caches that disagreed).
    preprocessing: Preprocessing | None
    harmonisation: Harmonisation
    training: Training
    framework: Literal["cds", "fl"]
    strategy: str | None = None
    vote_alpha: float | None = None
    fold: int
    metrics: Metrics
    init: Init

    @property
    def input_size(self) -> tuple[int, int, int]:
        return (self.input.depth, self.input.height, self.input.width)

    @property
    def needs_labels(self) -> bool:
        return self.model == "cnn" and self.prior in PRIORS_NEEDING_LABELS

    @property
    def described(self) -> str:
        """The model in a few words, for the console."""
        what = "measures model" if self.model == "measures" else f"{self.prior} CNN"
        return f"{self.framework.upper()} fold-{self.fold} {what}"

    @model_validator(mode="after")
    def _inputs_fit_the_model(self) -> BundleMetadata:
        if self.model == "cnn" and (self.input is None or self.features is not None):
            raise ValueError("a cnn bundle has an input layout and no features")
        if self.model == "measures" and (self.input is not None or not self.features):
            raise ValueError("a measures bundle has features and no input layout")
        return self


def prior_channel_count(prior: Prior) -> int:
    """How many input channels the dataset builds for `prior` (from prior_channels)."""
    from fedcmr.common.learning.data import prior_channels

    one = torch.zeros((1, 1, 1))
    return int(prior_channels(one, one.to(torch.uint8), prior).shape[0])


def cnn_metadata(config: RunConfig, fold: int, framework: Literal["cds", "fl"],
                 landmarks: Sequence[float] | None, preprocessing: Preprocessing | None,
                 init_source: str, metrics: Metrics, strategy: str | None = None,
                 vote_alpha: float | None = None) -> BundleMetadata:
    """The metadata of one fold's r3d_18, from the run's settings and what the fold found."""
    depth, height, width = config.hyper.input_size
    return BundleMetadata(
        model_digest=model_digest(),
        input=InputLayout(channels=prior_channel_count(config.prior), depth=depth,
                          height=height, width=width),
        prior=config.prior, phases=config.phases, preprocessing=preprocessing,
        harmonisation=Harmonisation(landmarks=None if landmarks is None
                                    else tuple(float(x) for x in landmarks)),
        training=Training(config=config.model_dump(mode="json"),
                          profile=config.hyper.model_dump(mode="json"),
                          fold_seed=config.fold_seed(fold)),
        framework=framework, strategy=strategy, vote_alpha=vote_alpha, fold=fold,
        metrics=metrics, init=Init(source=init_source, pretrained=init_source != "random",
                                   seed=config.fold_seed(fold)))


def measures_digest() -> str:
    """A digest of the measures model's definition: its features and arrays, in order."""
    from fedcmr.common.learning.measures_model import STATE_KEYS
    from fedcmr.common.measures import FEATURES

    text = "logistic\n" + ",".join(FEATURES) + "\n" + ",".join(STATE_KEYS)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def measures_metadata(config: RunConfig, fold: int, framework: Literal["cds", "fl"],
                      preprocessing: Preprocessing | None, metrics: Metrics,
                      strategy: str | None = None, vote_alpha: float | None = None
                      ) -> BundleMetadata:
    """The metadata of one fold's measures model (no image input, no landmarks, a zero
    start: common/learning/measures_model.py)."""
    from fedcmr.common.measures import FEATURES

    return BundleMetadata(
        model="measures", model_digest=measures_digest(), input=None, features=FEATURES,
        prior=config.prior, phases=config.phases, preprocessing=preprocessing,
        harmonisation=Harmonisation(landmarks=None),
        training=Training(config=config.model_dump(mode="json"),
                          profile=config.hyper.model_dump(mode="json"),
                          fold_seed=config.fold_seed(fold)),
        framework=framework, strategy=strategy, vote_alpha=vote_alpha, fold=fold,
        metrics=metrics, init=Init(source="zeros", pretrained=False,
                                   seed=config.fold_seed(fold)))


def preprocessing_of_caches(caches: Sequence[Path]) -> Preprocessing:
    """The preprocessing the caches share (their prep.json); common/handshake's
    FingerprintError (a ValueError) when one is unreadable or they disagree."""
    fingerprint = site_fingerprint(caches)
    return Preprocessing.from_fields(fingerprint.model_dump())


# -- write -----------------------------------------------------------------------------
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_bundle(folder: Path, metadata: BundleMetadata,
                 weights: Mapping[str, torch.Tensor] | Path) -> Path:
    """Write the bundle into `folder`: model.pt (a state dict, or a state-dict file that is
    hard-linked where it can be, else copied), then metadata.json with model.pt's SHA-256.
    Returns the metadata file."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / METADATA).unlink(missing_ok=True)  # no moment with new weights, old metadata
    with atomic_path(folder / WEIGHTS) as tmp:
        if isinstance(weights, Path):
            try:
                os.link(weights, tmp)
            except OSError:
                shutil.copyfile(weights, tmp)
        else:
            torch.save(dict(weights), tmp)
    final = metadata.model_copy(update={"weights_sha256": _sha256(folder / WEIGHTS)})
    write_json(folder / METADATA, final.model_dump(mode="json"))
    return folder / METADATA


# -- read ------------------------------------------------------------------------------
def read_metadata(folder: Path) -> BundleMetadata:
    """metadata.json, checked: present, JSON, this bundle format, every field as expected."""
    folder = Path(folder)
    path = folder / METADATA
    if not folder.is_dir():
        raise BundleError(folder, "no such bundle folder", BUNDLE_FIX)
    if not path.is_file():
        raise BundleError(path, "missing: this folder is not a model bundle (or its writing "
                          "was interrupted)", BUNDLE_FIX + ", or re-run the training command "
                          "that writes it")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise BundleError(path, f"damaged (not readable JSON: {exc})",
                          "copy the bundle again from the run that wrote it") from None
    if not isinstance(raw, dict):
        raise BundleError(path, "damaged (not a JSON object)",
                          "copy the bundle again from the run that wrote it")
    version = raw.get("fedcmr_version", "unknown")
    if raw.get("bundle_format") != BUNDLE_FORMAT:
        raise BundleError(path, f"bundle format {raw.get('bundle_format')!r}, this fedcmr "
                          f"({__version__}) reads format {BUNDLE_FORMAT}",
                          f"use the fedcmr version that wrote it ({version})")
    try:
        metadata = BundleMetadata.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise BundleError(path, f"field {where}: {first['msg']} (input {first.get('input')!r})",
                          f"use the fedcmr version that wrote it ({version}), or copy the "
                          "bundle again from the run that wrote it") from None
    _check_input(metadata, path)
    return metadata


def _check_input(metadata: BundleMetadata, path: Path) -> None:
    if metadata.input is None:  # the measures model: its features are checked on loading
        return
    want = prior_channel_count(metadata.prior)
    if metadata.input.channels != want:
        raise BundleError(path, f"input has {metadata.input.channels} channels, but prior "
                          f"{metadata.prior!r} gives {want} in fedcmr {__version__}",
                          f"use the fedcmr version that wrote it ({metadata.fedcmr_version})")


def _read_weights(folder: Path, metadata: BundleMetadata, digest: str
                  ) -> dict[str, torch.Tensor]:
    """model.pt, checked against the model definition's digest and metadata.json's SHA-256."""
    if metadata.model_digest != digest:
        raise BundleError(folder / METADATA, f"this bundle was trained with another model "
                          f"definition ({metadata.model} digest {metadata.model_digest}, this "
                          f"fedcmr's {digest})",
                          f"use the fedcmr version that wrote it ({metadata.fedcmr_version})")
    path = folder / WEIGHTS
    if not path.is_file():
        raise BundleError(path, "missing (the bundle has metadata but no weights)",
                          "copy the whole bundle folder again from the run that wrote it")
    if metadata.weights_sha256 and _sha256(path) != metadata.weights_sha256:
        raise BundleError(path, "damaged or replaced (its SHA-256 differs from the one "
                          f"{METADATA} records)", "copy the whole bundle folder again from "
                          "the run that wrote it")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file
        raise BundleError(path, f"damaged (torch cannot read it: {type(exc).__name__})",
                          "copy the whole bundle folder again from the run that wrote it"
                          ) from None


def _read_cnn_weights(folder: Path, metadata: BundleMetadata) -> dict[str, torch.Tensor]:
    return _read_weights(folder, metadata, model_digest())


def _read_measures_weights(folder: Path, metadata: BundleMetadata
                           ) -> dict[str, torch.Tensor]:
    """The four arrays, each of the length its features say (checked here, so that predict
    never meets a mismatched state)."""
    from fedcmr.common.learning.measures_model import STATE_KEYS
    from fedcmr.common.measures import FEATURES

    fix = f"use the fedcmr version that wrote it ({metadata.fedcmr_version})"
    if tuple(metadata.features or ()) != FEATURES:
        raise BundleError(folder / METADATA, f"the bundle reads the measures "
                          f"{list(metadata.features or ())}, this fedcmr measures "
                          f"{list(FEATURES)}", fix)
    state = _read_weights(folder, metadata, measures_digest())
    sizes = {"mean": len(FEATURES), "std": len(FEATURES), "coef": len(FEATURES), "intercept": 1}
    wrong = [k for k in STATE_KEYS if k not in state or state[k].numel() != sizes[k]]
    if wrong or set(state) != set(STATE_KEYS):
        raise BundleError(folder / WEIGHTS, f"not a measures model's arrays (expected "
                          f"{sizes}, found {({k: v.numel() for k, v in state.items()})})", fix)
    return state


#: How each kind of model's weights are read (BundleMetadata.model).
WEIGHT_READERS = {"cnn": _read_cnn_weights, "measures": _read_measures_weights}


def load_bundle(folder: Path) -> tuple[BundleMetadata, dict[str, torch.Tensor]]:
    """The checked metadata and the state dict of the bundle in `folder`."""
    metadata = read_metadata(folder)
    return metadata, WEIGHT_READERS[metadata.model](Path(folder), metadata)


def bundle_model(folder: Path, metadata: BundleMetadata,
                 state: Mapping[str, torch.Tensor]) -> nn.Module:
    """The network with the bundle's weights (every entry must fit, strictly)."""
    from fedcmr.common.model import build_model

    model, _ = build_model("none", quiet=True)
    try:
        model.load_state_dict(dict(state), strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0][:200]
        raise BundleError(Path(folder) / WEIGHTS, f"the weights do not fit the model ({first})",
                          f"use the fedcmr version that wrote it ({metadata.fedcmr_version})"
                          ) from None
    return model

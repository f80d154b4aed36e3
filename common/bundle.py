"""A trained fold as a self-contained model bundle, in the manner of MONAI bundles: what a
hospital needs to apply the model to new patients exactly as it was trained.

RUN/fold_K/bundle/model.pt        the weights (a torch state dict)
RUN/fold_K/bundle/metadata.json   BundleMetadata: versions, input layout, preprocessing,
                                  harmonisation landmarks, training set-up, metrics

`write_bundle` writes model.pt first and metadata.json last (each atomically; an earlier
metadata.json is removed first), so a folder with a metadata.json is a whole bundle, and
metadata.json records model.pt's SHA-256, so a damaged or swapped weights file is refused.
`read_metadata` checks the format and every field; the model named in `model` (a plug-in of
common/models/) checks what is its own and reads its weights (common/models/bundles.py
`load_bundle`). Anything wrong is a `BundleError`, one line naming the file, the problem and
the fix. `input` is the network input of a frame for a model that reads images (None
otherwise); `features` names the per-subject inputs of a model that reads them, in order.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, ValidationError

from fedcmr.common import __version__, nyul
from fedcmr.common.atomic import atomic_path, write_json
from fedcmr.common.digests import file_sha256
from fedcmr.common.frames import Phase
from fedcmr.common.handshake import site_fingerprint
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
    #: The model's name (common/models/registry.py), which reads and checks the rest.
    model: str = "cnn"
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


def prior_channel_count(prior: Prior) -> int:
    """How many input channels the dataset builds for `prior` (from prior_channels)."""
    from fedcmr.common.learning.data import prior_channels

    one = torch.zeros((1, 1, 1))
    return int(prior_channels(one, one.to(torch.uint8), prior).shape[0])


def base_metadata(model: str, digest: str, config: RunConfig, fold: int,
                  framework: Literal["cds", "fl"], metrics: Metrics,
                  preprocessing: Preprocessing | None, init_source: str, *,
                  harmonisation: Harmonisation, input: InputLayout | None = None,
                  features: Sequence[str] | None = None, strategy: str | None = None,
                  vote_alpha: float | None = None) -> BundleMetadata:
    """The metadata of one fold's model: the run's settings, what the fold found, and what
    the model says of its inputs (a model plug-in's `bundle_metadata` calls this)."""
    return BundleMetadata(
        model=model, model_digest=digest, input=input,
        features=None if features is None else tuple(features),
        prior=config.prior, phases=config.phases, preprocessing=preprocessing,
        harmonisation=harmonisation,
        training=Training(config=config.model_dump(mode="json"),
                          profile=config.hyper.model_dump(mode="json"),
                          fold_seed=config.fold_seed(fold)),
        framework=framework, strategy=strategy, vote_alpha=vote_alpha, fold=fold,
        metrics=metrics, init=Init(source=init_source,
                                   pretrained=init_source not in ("random", "zeros"),
                                   seed=config.fold_seed(fold)))


def preprocessing_of_caches(caches: Sequence[Path]) -> Preprocessing:
    """The preprocessing the caches share (their prep.json); common/handshake's
    FingerprintError (a ValueError) when one is unreadable or they disagree."""
    fingerprint = site_fingerprint(caches)
    return Preprocessing.from_fields(fingerprint.model_dump())


# -- write -----------------------------------------------------------------------------
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
    final = metadata.model_copy(update={"weights_sha256": file_sha256(folder / WEIGHTS)})
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
    return metadata


def read_checked_weights(folder: Path, metadata: BundleMetadata, digest: str
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
    if metadata.weights_sha256 and file_sha256(path) != metadata.weights_sha256:
        raise BundleError(path, "damaged or replaced (its SHA-256 differs from the one "
                          f"{METADATA} records)", "copy the whole bundle folder again from "
                          "the run that wrote it")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file
        raise BundleError(path, f"damaged (torch cannot read it: {type(exc).__name__})",
                          "copy the whole bundle folder again from the run that wrote it"
                          ) from None

"""A bundle read through its model: the metadata checked by common/bundle.py, then by the
plug-in its `model` field names, which reads the weights (a MONAI bundle's
metadata.json says how to feed the model; the plug-in knows how)."""

from __future__ import annotations

from pathlib import Path

import torch

from fedcmr.common.bundle import METADATA, BundleError, BundleMetadata, read_metadata
from fedcmr.common.models import registry
from fedcmr.common.models.base import ModelPlugin


def bundle_plugin(folder: Path, metadata: BundleMetadata) -> ModelPlugin:
    """The plug-in of the bundle's model, its metadata checked; BundleError when this
    fedcmr has no such model or the metadata do not fit it."""
    try:
        plugin = registry.get(metadata.model)
    except ValueError as err:
        raise BundleError(Path(folder) / METADATA, f"model {metadata.model!r} is not known "
                          f"here ({err})", f"install the model's plug-in, or use the "
                          f"fedcmr version that wrote it ({metadata.fedcmr_version})"
                          ) from None
    plugin.check_metadata(metadata, Path(folder) / METADATA)
    return plugin


def load_bundle(folder: Path) -> tuple[BundleMetadata, dict[str, torch.Tensor]]:
    """The checked metadata and the state dict of the bundle in `folder`."""
    metadata = read_metadata(folder)
    plugin = bundle_plugin(folder, metadata)
    return metadata, plugin.read_weights(Path(folder), metadata)


def described(metadata: BundleMetadata) -> str:
    """The bundle's model in a few words, for the console ("FL fold-0 structures CNN")."""
    what = registry.get(metadata.model).described(metadata)
    return f"{metadata.framework.upper()} fold-{metadata.fold} {what}"

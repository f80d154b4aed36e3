"""Cached frames -> network inputs: harmonisation, [0, 1] scaling, resize, augmentation and
the induced prior, in that order."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from fedcmr.common import nyul
from fedcmr.common.cache_format import FrameEntry, load_frame, read_manifest
from fedcmr.common.labels import Structure
from fedcmr.common.run_config import Augment, Prior


@dataclass(frozen=True)
class CachedFrame:
    entry: FrameEntry
    image: np.ndarray  # (z, y, x) float32
    labels: np.ndarray  # (z, y, x) uint8, internal convention

    @property
    def subject(self) -> str:
        return self.entry.subject


def load_cache(caches: Sequence[Path], phases: Sequence[str] = ("ED", "ES")) -> list[CachedFrame]:
    """Every frame of the given caches (the phases asked for), read once into memory."""
    frames = []
    for cache in caches:
        for entry in read_manifest(Path(cache)):
            if entry.phase in phases:
                image, labels = load_frame(Path(cache) / entry.file)
                frames.append(CachedFrame(entry, image, labels))
    return frames


def nyul_mask(labels: np.ndarray, prior: Prior) -> np.ndarray | None:
    """Masked inputs count only heart voxels; the baseline uses torchio's default mask."""
    return None if prior == "baseline" else labels > 0


def harmonise(image: np.ndarray, labels: np.ndarray, landmarks: np.ndarray | None,
              prior: Prior) -> np.ndarray:
    """Nyul-standardise, then map the landmark scale (p1 -> 0, p99 -> 100) onto [0, 1].

    A fixed division rather than a per-image min-max: the latter would undo the
    harmonisation. Without landmarks, each image is scaled by its own p1/p99.
    """
    mask = nyul_mask(labels, prior)
    if landmarks is not None:
        scaled = nyul.standardize(image, landmarks, mask) / 100.0
    else:
        region = image[mask] if mask is not None and mask.any() else image
        lo, hi = np.percentile(region, [1, 99])
        scaled = (image - lo) / max(hi - lo, 1e-6)
    return np.clip(scaled, 0.0, 1.0).astype(np.float32)


def prior_channels(image: torch.Tensor, labels: torch.Tensor, prior: Prior) -> torch.Tensor:
    """(3, z, y, x): the MRI three times, masked by the heart, or split LV / RV / MYO."""
    if prior == "baseline":
        return image.expand(3, *image.shape).clone()
    if prior == "masked":
        return (image * (labels > 0)).expand(3, *image.shape).clone()
    return torch.stack([image * (labels == s) for s in (Structure.LV, Structure.RV,
                                                        Structure.MYO)])


def _resize(image: torch.Tensor, labels: torch.Tensor, size: tuple[int, int, int]
            ) -> tuple[torch.Tensor, torch.Tensor]:
    if tuple(image.shape) == tuple(size):
        return image, labels
    image = F.interpolate(image[None, None], size=size, mode="trilinear", align_corners=False)
    labels = F.interpolate(labels[None, None].float(), size=size, mode="nearest")
    return image[0, 0], labels[0, 0].to(torch.uint8)


class FrameDataset(Dataset):
    """Network inputs for a list of frames. The deterministic part is computed once; the
    augmentation is drawn per (seed, epoch, index) so that an epoch replays exactly."""

    def __init__(self, frames: Sequence[CachedFrame], prior: Prior,
                 landmarks: np.ndarray | None, input_size: tuple[int, int, int],
                 augmentation: Augment = "none", seed: int = 0):
        self.frames = list(frames)
        self.prior = prior
        self.seed = seed
        self.epoch = 0
        self.transform = None
        if augmentation != "none":  # torchio is slow to import; load it only when used
            from fedcmr.client.augment import build_augmentation

            self.transform = build_augmentation(augmentation)
        self._ready = [
            _resize(torch.from_numpy(harmonise(f.image, f.labels, landmarks, prior)),
                    torch.from_numpy(f.labels), input_size) for f in self.frames]
        self.targets = torch.tensor([float(f.entry.label) for f in self.frames])

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.frames)

    def sample_seed(self, index: int) -> int:
        return zlib.crc32(f"{self.seed}:{self.epoch}:{index}".encode())

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, labels = self._ready[index]
        if self.transform is not None:
            from fedcmr.client.augment import augment

            image, labels = augment(self.transform, image, labels, self.sample_seed(index))
        return prior_channels(image, labels, self.prior), self.targets[index]


def nyul_summary(frames: Sequence[CachedFrame], prior: Prior, min_subjects: int
                 ) -> nyul.NyulSummary:
    """The site's releasable histogram summary of its TRAINING frames."""
    return nyul.site_summary([f.image for f in frames],
                             [nyul_mask(f.labels, prior) for f in frames],
                             [f.subject for f in frames], min_subjects=min_subjects)

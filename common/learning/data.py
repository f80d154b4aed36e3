"""Cached frames -> network inputs: harmonisation (and [0, 1] scaling), resize, augmentation
and the induced prior, in that order."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from fedcmr.common.cache_format import FrameEntry, check_cache, load_frame, read_manifest
from fedcmr.common.labels import Structure
from fedcmr.common.learning.harmonise import Harmoniser
from fedcmr.common.run_config import Augment, Prior
from fedcmr.common.seeds import derive_seed


@dataclass(frozen=True)
class CachedFrame:
    entry: FrameEntry
    image: np.ndarray  # (z, y, x) float32
    labels: np.ndarray  # (z, y, x) uint8, internal convention

    @property
    def subject(self) -> str:
        return self.entry.subject


def load_cache(caches: Sequence[Path], phases: Sequence[str] = ("ED", "ES"),
               centres: Sequence[str] = ()) -> list[CachedFrame]:
    """Every frame of the given caches (the phases asked for; only `centres`' where given:
    the other centres' frames are neither checked nor read), read once into memory. Each
    cache is checked as a whole (manifest rows, every frame file's zip directory) before a
    voxel is read, so a damaged cache is refused when it is opened, with a CacheError naming
    the file and the fix; damage inside a file's data is a CacheError when it is read."""
    listed = []
    for cache in map(Path, caches):
        entries = [e for e in read_manifest(cache) if e.phase in phases
                   and (not centres or e.centre in centres)]
        check_cache(cache, entries)
        listed.extend((cache, e) for e in entries)
    return [CachedFrame(entry, *load_frame(cache / entry.file, cache))
            for cache, entry in listed]


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


def part_augmentation(part: str, augment: Augment) -> Augment:
    """The augmentation a split's frames get: the run's for training, none for validation
    and test (their scores choose and judge the model)."""
    return augment if part == "train" else "none"


class FrameDataset(Dataset):
    """Network inputs for a list of frames. The deterministic part is computed once; the
    augmentation is drawn per (seed, epoch, index) so that an epoch replays exactly."""

    def __init__(self, frames: Sequence[CachedFrame], harmoniser: Harmoniser,
                 input_size: tuple[int, int, int], augmentation: Augment = "none",
                 seed: int = 0):
        self.frames = list(frames)
        self.prior: Prior = harmoniser.prior
        self.seed = seed
        self.epoch = 0
        self.transform = None
        if augmentation != "none":  # torchio is slow to import; load it only when used
            from fedcmr.common.learning.augment import build_augmentation

            self.transform = build_augmentation(augmentation)
        self._ready = [
            _resize(torch.from_numpy(harmoniser.transform(f.image, f.labels)),
                    torch.from_numpy(f.labels), input_size) for f in self.frames]
        self.targets = torch.tensor([float(f.entry.label) for f in self.frames])

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.frames)

    def sample_seed(self, index: int) -> int:
        return derive_seed(self.seed, self.epoch, index)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, labels = self._ready[index]
        if self.transform is not None:
            from fedcmr.common.learning.augment import augment

            image, labels = augment(self.transform, image, labels, self.sample_seed(index))
        return prior_channels(image, labels, self.prior), self.targets[index]

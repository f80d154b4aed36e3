"""The four augmentation set-ups of the study, built from torchio's random transforms.

Each random transform fires with probability 0.5 on training samples only. Axes are the
cache's (z, y, x): in-plane is torchio's axes 1 and 2, and rotation is about axis 0 (the
short-axis slice normal), so slices never tilt into each other. Randomness comes from a
seed per (run, epoch, sample), drawn by the dataset, so a run replays exactly.
"""

from __future__ import annotations

import torch
import torchio as tio

from fedcmr.common.run_config import Augment

P = 0.5


def _basic() -> list[tio.Transform]:
    return [tio.RandomAffine(scales=0, degrees=(15, 0, 0), translation=0, p=P),
            tio.RandomFlip(axes=(1,), flip_probability=1.0, p=P),
            tio.RandomFlip(axes=(2,), flip_probability=1.0, p=P)]


def _shape() -> list[tio.Transform]:
    # Mild: a few mm in-plane, none through-plane (a slab is only ~10 voxels deep).
    return [*_basic(), tio.RandomElasticDeformation(num_control_points=(5, 7, 7),
                                                    max_displacement=(0, 4, 4),
                                                    locked_borders=2, p=P)]


def _shape_intensity() -> list[tio.Transform]:
    return [*_shape(),
            tio.RandomSpike(num_spikes=1, intensity=(0.1, 0.3), p=P),
            tio.RandomBiasField(coefficients=0.3, p=P),
            tio.RandomNoise(mean=0, std=(0, 0.25), p=P),
            tio.RandomGamma(log_gamma=(-0.3, 0.3), p=P)]


BUILDERS = {"none": list, "basic": _basic, "shape": _shape, "shape-intensity": _shape_intensity}


def build_augmentation(name: Augment) -> tio.Compose | None:
    transforms = BUILDERS[name]()
    return tio.Compose(transforms) if transforms else None


def augment(transform: tio.Compose, image: torch.Tensor, labels: torch.Tensor,
            seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply to a (z, y, x) image and its labels together (labels: nearest, no intensity
    change), with torch's RNG forked so the caller's random state is untouched."""
    subject = tio.Subject(mri=tio.ScalarImage(tensor=image[None]),
                          labels=tio.LabelMap(tensor=labels[None].to(torch.int16)))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        out = transform(subject)
    return out["mri"].data[0].float(), out["labels"].data[0].to(torch.uint8)

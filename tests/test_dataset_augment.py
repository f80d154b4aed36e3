"""Inputs at load time: the induced priors, harmonisation to [0, 1], and the augmentation
set-ups (p = 0.5 each, training only, replayable per seed)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchio as tio
from test_site_work import site  # noqa: F401 (the fixture: one small site)

from fedcmr.common.cache_format import FrameEntry
from fedcmr.common.labels import Structure
from fedcmr.common.learning.augment import build_augmentation
from fedcmr.common.learning.data import CachedFrame, FrameDataset, prior_channels
from fedcmr.common.learning.harmonise import Harmoniser


def frame(seed: int = 0, label: int = 1) -> CachedFrame:
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[0:6, 0:32, 0:32]
    r = np.hypot(x - 16, y - 16)
    labels = np.zeros(r.shape, np.uint8)
    labels[r < 5] = Structure.LV
    labels[(r >= 5) & (r < 8)] = Structure.MYO
    labels[(np.hypot(x - 6, y - 16) < 3) & (labels == 0)] = Structure.RV
    image = (50 + 150 * (labels == Structure.LV) + rng.normal(0, 5, r.shape)).astype(np.float32)
    entry = FrameEntry(subject=f"s{seed}", centre="A", vendor="v", label=label, phase="ED",
                       file="x", key="k")
    return CachedFrame(entry, image, labels)


def test_structure_prior_splits_lv_rv_myo_into_three_channels():
    f = frame()
    image = torch.rand(6, 32, 32) + 0.1
    labels = torch.from_numpy(f.labels)
    x = prior_channels(image, labels, "structures")
    assert x.shape == (3, 6, 32, 32)
    for channel, structure in enumerate((Structure.LV, Structure.RV, Structure.MYO)):
        assert torch.equal(x[channel] != 0, labels == structure)
    masked = prior_channels(image, labels, "masked")
    assert torch.equal(masked[0], masked[2]) and torch.equal(masked[0] != 0, labels > 0)
    base = prior_channels(image, labels, "baseline")
    assert torch.equal(base[1], image)


@pytest.mark.parametrize("prior", ["baseline", "masked", "structures"])
def test_harmonised_inputs_lie_in_unit_range(prior):
    f = frame()
    harmoniser = Harmoniser(prior, tuple(np.linspace(0, 100, 13)))
    out = harmoniser.transform(f.image * 7 + 300, f.labels)
    assert out.dtype == np.float32 and out.min() >= 0 and out.max() <= 1
    assert out.max() > 0.5


def test_every_random_transform_fires_with_probability_one_half():
    expected = {"none": 0, "basic": 3, "shape": 4, "shape-intensity": 8}
    for name, count in expected.items():
        compose = build_augmentation(name)
        transforms = [] if compose is None else list(compose.transforms)
        assert len(transforms) == count
        assert all(t.probability == 0.5 for t in transforms)
    kinds = {type(t) for t in build_augmentation("shape-intensity").transforms}
    assert {tio.RandomAffine, tio.RandomFlip, tio.RandomElasticDeformation, tio.RandomSpike,
            tio.RandomBiasField, tio.RandomNoise, tio.RandomGamma} <= kinds
    noise = next(t for t in build_augmentation("shape-intensity").transforms
                 if isinstance(t, tio.RandomNoise))
    assert noise.mean_range == (0, 0) and noise.std_range == (0, 0.25)


@pytest.mark.parametrize("setup", ["basic", "shape", "shape-intensity"])
def test_augmentation_replays_per_seed_and_varies_across_epochs_and_seeds(setup):
    frames = [frame(i) for i in range(6)]
    a = FrameDataset(frames, Harmoniser("structures"), (6, 32, 32), setup, seed=1)
    b = FrameDataset(frames, Harmoniser("structures"), (6, 32, 32), setup, seed=1)
    other = FrameDataset(frames, Harmoniser("structures"), (6, 32, 32), setup, seed=2)
    plain = FrameDataset(frames, Harmoniser("structures"), (6, 32, 32), "none", seed=1)
    epochs: list[list[torch.Tensor]] = []
    changed = 0
    for epoch in range(4):
        for ds in (a, b, other):
            ds.set_epoch(epoch)
        drawn = [a[i][0] for i in range(len(frames))]
        for i, xa in enumerate(drawn):
            assert torch.equal(xa, b[i][0])  # same seed, epoch, index: the same draw
            changed += not torch.equal(xa, plain[i][0])
        # another run seed draws differently in the same epoch
        assert any(not torch.equal(xa, other[i][0]) for i, xa in enumerate(drawn))
        epochs.append(drawn)
    assert changed > 12  # most samples changed
    if setup == "basic":  # 3 transforms at p = 0.5: 1 in 8 samples untouched on average
        assert changed < 24
    # each epoch draws anew: no two epochs give the same augmented samples
    for e in range(len(epochs)):
        for f in range(e + 1, len(epochs)):
            assert any(not torch.equal(x, y) for x, y in zip(epochs[e], epochs[f], strict=True))
    # a replay of an earlier epoch is identical
    a.set_epoch(1)
    assert all(torch.equal(a[i][0], epochs[1][i]) for i in range(len(frames)))
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a[0]
    assert torch.equal(torch.rand(1), before)  # the caller's RNG is left alone


def test_no_augmentation_is_identity_and_resize_reaches_the_input_size():
    frames = [frame(0)]
    ds = FrameDataset(frames, Harmoniser("masked"), (4, 16, 16), "none")
    x0, y0 = ds[0]
    ds.set_epoch(5)
    assert torch.equal(ds[0][0], x0) and x0.shape == (3, 4, 16, 16) and float(y0) == 1.0


def test_only_training_frames_are_augmented(site):  # noqa: F811
    """The federated step's datasets (and the pooled baseline's, which picks by the same
    `part_augmentation`): under augment="basic" the training frames change from epoch to
    epoch; the validation and test frames are the unaugmented ones in every epoch."""
    from fedcmr.common.models.cnn import _dataset
    from fedcmr.common.protocol import Order
    from fedcmr.common.run_config import RunConfig

    run = RunConfig(profile="smoke", centres=("Alpha", "Bravo"), augment="basic")
    order = Order(run=run, fold=0, landmarks=tuple(np.linspace(0, 100, 13)))
    plain = Order(run=run.model_copy(update={"augment": "none"}), fold=0,
                  landmarks=order.landmarks)
    for part in ("train", "val", "test"):
        ds, reference = _dataset(site, order, part, seed=3), _dataset(site, plain, part, seed=3)
        assert len(ds) > 0
        changed = 0
        for epoch in range(4):
            ds.set_epoch(epoch)
            changed += sum(not torch.equal(ds[i][0], reference[i][0]) for i in range(len(ds)))
        assert (changed > 0) == (part == "train"), part


def stack(shape=(6, 40, 40)) -> tuple[torch.Tensor, torch.Tensor]:
    """A stack of centred discs whose radius grows by 2 voxels per slice (6 to 16): each
    slice's label area tells which slice it came from."""
    z, y, x = np.mgrid[0:shape[0], 0:shape[1], 0:shape[2]]
    r = np.hypot(y - shape[1] / 2 + 0.5, x - shape[2] / 2 + 0.5)
    labels = (r < 6 + 2 * z).astype(np.uint8) * Structure.MYO
    image = 100.0 * labels + 10.0
    return torch.from_numpy(image.astype(np.float32)), torch.from_numpy(labels)


@pytest.mark.parametrize("setup", ["basic", "shape"])
def test_augmentation_moves_voxels_within_their_slice_only(setup):
    """Rotation about the slice normal, in-plane flips and an in-plane elastic displacement
    keep every slice's content in its slice: the label area of each slice stays within a
    third of its own (the neighbouring slices' areas differ by 27% to 80%, the first and
    last by 7x). A tilt, a through-plane flip or a through-plane displacement moves content
    between slices."""
    from fedcmr.common.learning.augment import augment

    image, labels = stack()
    area = (labels > 0).sum(dim=(1, 2)).double()
    transform = build_augmentation(setup)
    for seed in range(24):
        _, out = augment(transform, image, labels, seed)
        ratio = (out > 0).sum(dim=(1, 2)).double() / area
        assert ((ratio > 0.75) & (ratio < 1.33)).all(), (seed, ratio.tolist())


def test_the_set_ups_have_the_documented_settings():
    """docs/learning.md states each transform's settings; the built transforms have them."""
    found = {type(t).__name__: t for t in build_augmentation("shape-intensity").transforms}
    affine = found["RandomAffine"]
    assert affine.degrees == (-15.0, 15.0, 0.0, 0.0, 0.0, 0.0)
    assert affine.scales == (1.0,) * 6 and affine.translation == (0.0,) * 6
    flips = [t.axes for t in build_augmentation("basic").transforms
             if isinstance(t, tio.RandomFlip)]
    assert flips == [(1,), (2,)]
    assert all(t.flip_probability == 1.0 for t in build_augmentation("basic").transforms
               if isinstance(t, tio.RandomFlip))  # once it fires (p = 0.5), it flips
    elastic = found["RandomElasticDeformation"]
    assert elastic.num_control_points == (5, 7, 7) and elastic.max_displacement == (0, 4, 4)
    assert elastic.num_locked_borders == 2
    assert found["RandomSpike"].intensity_range == (0.1, 0.3)
    assert found["RandomSpike"].num_spikes_range == (0, 1)
    assert found["RandomBiasField"].coefficients_range == (-0.3, 0.3)
    assert found["RandomNoise"].std_range == (0, 0.25)
    assert found["RandomGamma"].log_gamma_range == (-0.3, 0.3)

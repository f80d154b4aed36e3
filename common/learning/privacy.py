"""Differential privacy for the weights, optional per run (`--dp-clip C --dp-noise Z`):
client-level DP-FedAvg with fixed clipping at the site and Gaussian noise at the
coordinator (McMahan et al. 2018), from Flower's own pieces.

- At a site (client/site/work.py), `clip_update` bounds the site's model update (trained
  minus received weights) to L2 norm C with Flower's `compute_clip_model_update`. BatchNorm
  trains on the received running statistics, frozen (`train_steps(freeze_batchnorm=True)`),
  so that no buffer carries the site's data out unclipped.
- At the coordinator (server/strategies.py `PrivateVote`), the weighted mean of the clipped
  updates gets Gaussian noise of standard deviation `noise_std` = Z * C * w_max, w_max the
  largest site weight of the round. Flower's `compute_stdv` (Z * C / K) is the equal-weight
  case; with FedAvg's n_k weights one site moves the mean by at most w_k * C. The noise is
  drawn from a generator seeded by (run seed, fold, round), so that a resumed run replays
  it exactly (Flower's `add_gaussian_noise_inplace` draws from NumPy's global generator).
- `privacy_spent` accounts with Flower's RDP accountant (`flwr[dp]`): every aggregated round
  is one Gaussian release of noise multiplier Z, with every site taking part (no sampling
  amplification), composed over all rounds of all folds of the run.

What it covers: the model weights each round and the final model. What it does not: the
histogram summaries and the binned validation and test counts (the site policy's floors
and the differencing guard bound those), and the clipped updates the coordinator itself
sees before it adds the noise (client-side clipping trusts the coordinator to add it).
"""

from __future__ import annotations

import math

import numpy as np
import torch

#: BatchNorm's buffers: statistics of the data, not trained parameters (never noised).
BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")
#: δ of the (ε, δ) guarantee reported when the run does not set one.
DEFAULT_DELTA = 1e-5


def parameter_keys(names) -> list[str]:
    """The trained parameters among a state dict's keys (BatchNorm buffers left out)."""
    return [k for k in names if not k.endswith(BUFFER_SUFFIXES)]


def clip_update(trained: dict[str, torch.Tensor], received: dict[str, torch.Tensor],
                clip: float) -> tuple[dict[str, torch.Tensor], float]:
    """`trained` with its update against `received` clipped to L2 norm `clip` over all
    trained parameters (Flower's `compute_clip_model_update`); buffers are the received
    ones. Returns the clipped state and the update's norm before clipping (kept at the
    site: it is not released)."""
    from flwr.supercore.differential_privacy import compute_clip_model_update, get_norm

    keys = parameter_keys(trained)
    new = [trained[k].detach().cpu().double().numpy() for k in keys]
    old = [received[k].detach().cpu().double().numpy() for k in keys]
    norm = get_norm([a - b for a, b in zip(new, old, strict=True)])
    compute_clip_model_update(new, old, clip)
    out = {k: v.detach().cpu().clone() for k, v in received.items()}
    for key, value in zip(keys, new, strict=True):
        out[key] = torch.from_numpy(value).to(trained[key].dtype)
    return out, norm


def noise_std(noise: float, clip: float, weights) -> float:
    """The noise's standard deviation on the weighted mean: Z * C * the largest weight."""
    return float(noise * clip * max(weights))


def add_noise(arrays: dict[str, np.ndarray], std: float, seed: int) -> dict[str, np.ndarray]:
    """`arrays` with N(0, std²) added to every trained parameter (buffers as they are),
    from a generator seeded by `seed`, in key order."""
    rng = np.random.default_rng(seed)
    out = dict(arrays)
    for key in sorted(parameter_keys(arrays)):
        value = arrays[key]
        out[key] = (value + rng.normal(0.0, std, value.shape)).astype(value.dtype)
    return out


def privacy_spent(noise: float, releases: int, delta: float, sites: int) -> float:
    """ε after `releases` Gaussian releases of noise multiplier `noise` over `sites` sites
    that all take part every round (Flower's RdpAccountant); inf without noise."""
    if releases <= 0:
        return 0.0
    if noise <= 0:
        return math.inf
    from flwr.supercore.privacy_accounting import (
        GaussianPrivacyEvent,
        NeighboringRelation,
        PrivacyConfig,
        SamplingMethod,
    )
    from flwr.supercore.privacy_accounting.rdp_accountant import RdpAccountant

    accountant = RdpAccountant(PrivacyConfig(
        target_delta=delta, population_size=sites,
        neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
        sampling_method=SamplingMethod.NO_AMPLIFICATION))
    accountant.compose(GaussianPrivacyEvent(noise_multiplier=noise, sample_size=sites,
                                            population_size=sites), count=releases)
    return accountant.get_epsilon(delta)

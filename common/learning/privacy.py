"""Differential privacy for the weights, optional per run (`--dp-clip C --dp-noise Z`), or
required by a site's policy (`require_dp`): client-level DP with clipping AND noise at the
site, so that no coordinator, curious or malicious, sees a site's update without its noise.

- At a site (client/site/work.py), `clip_update` bounds the site's model update (trained
  minus received weights) to L2 norm C with Flower's `compute_clip_model_update`, over the
  parameters its model trains (`ModelPlugin.trained_keys`). BatchNorm trains on the
  received running statistics, frozen (`train_steps(freeze_batchnorm=True)`), so that no
  buffer carries the site's data out unclipped. Then `add_noise` adds N(0, (Z * C)^2) to
  every trained parameter, drawn from a generator keyed by the site's secret
  (client/site/secret.py): the coordinator cannot regenerate it, a repeated request gets
  the same noise (no averaging it away, and `--resume` replays exactly).
- So each site's release is by itself a Gaussian mechanism of noise multiplier Z for its
  whole update: the site's own epsilon (`privacy_spent` with one site), over the updates it
  released in the run, goes back with every update and into metrics.json, per site.
- The coordinator (server/strategies.py `PrivateVote`) adds nothing: the weighted mean of
  the sites' noisy updates carries noise of standard deviation Z * C * sqrt(sum w_k^2)
  (`mean_noise_std`), at least the Z * C * w_max that the central guarantee over all sites
  needs (one site moves the mean by at most w_k * C), so the run's epsilon (Flower's RDP
  accountant, every site in every round, composed over all rounds of all folds) holds too.
  The price of not trusting the coordinator: with four equal sites the mean's noise is
  twice what a trusted coordinator would add.

What it covers: the model weights each round and the final model. What it does not: the
histogram summaries and the binned validation and test counts (the site policy's floors,
its guard and its score bins bound those).
"""

from __future__ import annotations

import math

import numpy as np
import torch

#: BatchNorm's buffers: statistics of the data, not trained parameters (never noised).
BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")


def parameter_keys(names) -> list[str]:
    """The trained parameters among a state dict's keys (BatchNorm buffers left out)."""
    return [k for k in names if not k.endswith(BUFFER_SUFFIXES)]


def clip_update(trained: dict[str, torch.Tensor], received: dict[str, torch.Tensor],
                clip: float, keys: list[str] | None = None
                ) -> tuple[dict[str, torch.Tensor], float]:
    """`trained` with its update against `received` clipped to L2 norm `clip` over the
    trained parameters `keys` (default: every key but BatchNorm's buffers; Flower's
    `compute_clip_model_update`); the other entries are the received ones. Returns the
    clipped state and the update's norm before clipping (kept at the site: not released)."""
    from flwr.supercore.differential_privacy import compute_clip_model_update, get_norm

    keys = parameter_keys(trained) if keys is None else list(keys)
    new = [trained[k].detach().cpu().double().numpy() for k in keys]
    old = [received[k].detach().cpu().double().numpy() for k in keys]
    norm = get_norm([a - b for a, b in zip(new, old, strict=True)])
    compute_clip_model_update(new, old, clip)
    out = {k: v.detach().cpu().clone() for k, v in received.items()}
    for key, value in zip(keys, new, strict=True):
        out[key] = torch.from_numpy(value).to(trained[key].dtype)
    return out, norm


def add_noise(state: dict[str, torch.Tensor], keys: list[str], std: float,
              rng: np.random.Generator) -> dict[str, torch.Tensor]:
    """`state` with N(0, std^2) added to every entry of `keys` (in sorted key order, from
    `rng`), the others as they are."""
    out = dict(state)
    for key in sorted(keys):
        value = state[key]
        noise = rng.normal(0.0, std, tuple(value.shape))
        out[key] = (value.detach().cpu().double() + torch.from_numpy(noise)).to(value.dtype)
    return out


def mean_noise_std(noise: float, clip: float, weights) -> float:
    """The standard deviation of the noise on the weighted mean of updates that each
    carry N(0, (noise * clip)^2): noise * clip * sqrt(sum of the squared weights)."""
    return float(noise * clip * math.sqrt(sum(w * w for w in weights)))


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

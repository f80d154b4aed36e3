"""The local training step shared by the centralised baseline and every federated site."""

from __future__ import annotations

import math

import torch
from torch import nn

from fedcmr.client.training import smooth_labels, train_steps
from fedcmr.common.device import placement
from fedcmr.common.run_config import PROFILES


def test_smoothed_targets_move_both_classes_inwards_by_half_eps():
    y = torch.tensor([0.0, 1.0, 1.0])
    assert torch.allclose(smooth_labels(y, 0.1), torch.tensor([0.05, 0.95, 0.95]))
    assert torch.equal(smooth_labels(y, 0.0), y)


def _separable_batches(n_batches: int):
    """Two well separated classes: a plain BCE fit can push its logits without bound."""
    gen = torch.Generator().manual_seed(0)
    for _ in range(n_batches):
        y = (torch.rand(16, generator=gen) < 0.5).float()
        x = (2 * y - 1).unsqueeze(1) + 0.1 * torch.randn(16, 1, generator=gen)
        yield x, y


def _fitted_logit_scale(eps: float) -> float:
    torch.manual_seed(0)
    model = nn.Linear(1, 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    stats = train_steps(model, optimizer, _separable_batches(400), placement(),
                        label_smoothing=eps)
    assert stats.n_batches == 400 and stats.n_samples == 400 * 16
    with torch.no_grad():
        return float(model(torch.tensor([[1.0]])).item())


def test_label_smoothing_bounds_the_logits_that_plain_bce_inflates():
    plain, smoothed = _fitted_logit_scale(0.0), _fitted_logit_scale(0.1)
    target = math.log(0.95 / 0.05)  # the logit at which a smoothed target is met exactly
    assert abs(smoothed - target) < 0.5
    assert plain > target + 2  # measured 6.1 against 2.95


def test_the_paper_profile_keeps_the_papers_plain_bce():
    assert PROFILES["paper"].label_smoothing == 0.0

"""The learning steps both sides run: model selection and early stopping, BatchNorm's
restarted average, and the pooled validation the federation selects on."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fedcmr.common.device import placement
from fedcmr.common.learning.early_stopping import EarlyStopping
from fedcmr.common.learning.training import train_steps
from fedcmr.common.replies import ScoreCounts
from fedcmr.server.study_runner import StudyRunner


def test_the_lowest_loss_wins_and_a_tie_goes_to_the_higher_auc():
    stopper = EarlyStopping(patience=10)
    assert stopper.update(0.60, 0.50, 0)
    assert not stopper.update(0.90, 0.55, 1)  # a better AUC does not beat a lower loss
    assert stopper.update(0.55, 0.40, 2)  # a lower loss wins with a worse AUC
    assert not stopper.update(0.50, 0.40, 3)  # tie on loss, lower AUC: no
    assert stopper.update(0.70, 0.40, 4)  # tie on loss, higher AUC: yes
    assert stopper.best_step == 4
    assert not stopper.update(None, 0.40, 5)  # an undefined AUC loses the tie
    assert stopper.best == (-0.40, 0.70)


def test_patience_counts_steps_without_a_new_best():
    stopper = EarlyStopping(patience=2)
    stopper.update(0.5, 0.5, 0)
    stopper.update(0.5, 0.6, 1)
    assert not stopper.should_stop  # one step without a new best
    stopper.update(0.5, 0.4, 2)  # a new best resets the count
    stopper.update(0.5, 0.7, 3)
    assert not stopper.should_stop
    stopper.update(0.5, 0.8, 4)
    assert stopper.should_stop and stopper.best_step == 2


def test_pooled_validation_loss_is_weighted_by_each_sites_validation_frames():
    big = ScoreCounts(loss=0.2, examples=10, neg=[5, 0], pos=[0, 5])
    small = ScoreCounts(loss=0.8, examples=2, neg=[0, 1], pos=[1, 0])
    auc, loss = StudyRunner._pooled_val([big, small])
    assert loss == pytest.approx((0.2 * 10 + 0.8 * 2) / 12)  # not (0.2 + 0.8) / 2
    # AUC from the summed counts (neg [5, 1], pos [1, 5]): 25 pairs ordered, 10 tied
    assert auc == pytest.approx((25 + 0.5 * 5 + 0.5 * 5) / 36)
    assert StudyRunner._pooled_val([]) == (None, math.inf)


class Tiny(nn.Module):
    """Conv -> BatchNorm -> pooled logit: enough to watch BatchNorm's statistics."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(3, 2, 1)
        self.bn = nn.BatchNorm3d(2)
        self.fc = nn.Linear(2, 1)

    def forward(self, x):
        return self.fc(self.bn(self.conv(x)).mean(dim=(2, 3, 4)))


def test_batchnorm_statistics_are_the_plain_average_of_this_pass():
    """After a pass, the running mean is the mean of the pass's batch means (a cumulative
    average restarted at the pass), not an exponential average that remembers older
    weights."""
    torch.manual_seed(0)
    model = Tiny()
    model.bn.running_mean.fill_(100.0)  # stale statistics from an earlier pass
    seen: list[torch.Tensor] = []
    model.bn.register_forward_hook(
        lambda mod, inputs, out: seen.append(inputs[0].detach().mean(dim=(0, 2, 3, 4))))
    batches = [(torch.randn(4, 3, 2, 3, 3) * (i + 1) + i, torch.tensor([0.0, 1.0, 0.0, 1.0]))
               for i in range(3)]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    stats = train_steps(model, optimizer, iter(batches), placement("cpu"))
    assert stats.n_batches == 3 and len(seen) == 3
    torch.testing.assert_close(model.bn.running_mean, torch.stack(seen).mean(0))
    assert model.bn.momentum is None

"""Differential privacy for the weights (common/learning/privacy.py): the site clips its
update and adds the noise itself, from its secret; the coordinator adds nothing and accounts
with Flower's RDP accountant; the run reports epsilon, overall and per site. (The attack on
the old coordinator-side noise is in tests/test_attacks.py.)"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_site_work import site  # noqa: F401 (the fixture: one small site)
from test_strategies import SIZES, as_numpy, expected, replies
from test_study_runner import make_grid, runner, server_identity  # noqa: F401 (autouse)

from fedcmr.client.site import work as site_work
from fedcmr.common.learning.privacy import (
    add_noise,
    clip_update,
    mean_noise_std,
    parameter_keys,
    privacy_spent,
)
from fedcmr.common.model import build_model
from fedcmr.common.protocol import Order
from fedcmr.common.results import auc_table
from fedcmr.common.run_config import RunConfig
from fedcmr.server.fl_outputs import privacy_report
from fedcmr.server.strategies import PrivateVote, make_strategy

DP = {"dp_clip": 0.5, "dp_noise": 1.0}


def update_norm(new: dict, old: dict) -> float:
    keys = parameter_keys(new)
    return math.sqrt(sum(float(((new[k].double() - old[k].double()) ** 2).sum())
                         for k in keys))


def test_an_update_is_clipped_to_the_norm_and_buffers_stay_as_received():
    rng = torch.Generator().manual_seed(0)
    received = {"conv.weight": torch.randn(4, 3, generator=rng),
                "bn.running_mean": torch.zeros(3), "bn.num_batches_tracked": torch.tensor(5)}
    trained = {"conv.weight": received["conv.weight"] + 3 * torch.randn(4, 3, generator=rng),
               "bn.running_mean": torch.ones(3), "bn.num_batches_tracked": torch.tensor(9)}
    clipped, norm = clip_update(trained, received, clip=0.5)
    assert norm == pytest.approx(update_norm(trained, received), rel=1e-6) and norm > 0.5
    assert update_norm(clipped, received) == pytest.approx(0.5, rel=1e-5)
    # the direction is kept
    direction = clipped["conv.weight"] - received["conv.weight"]
    assert torch.allclose(direction / 0.5, (trained["conv.weight"] - received["conv.weight"])
                          / norm, atol=1e-5)
    assert torch.equal(clipped["bn.running_mean"], received["bn.running_mean"])
    assert int(clipped["bn.num_batches_tracked"]) == 5
    small, _ = clip_update(trained, received, clip=100.0)  # inside the norm: unchanged
    assert torch.allclose(small["conv.weight"], trained["conv.weight"])


def test_noise_is_sized_drawn_from_the_generator_and_spares_other_entries():
    state = {"w": torch.zeros(200, 100), "bn.running_var": torch.ones(7),
             "bn.num_batches_tracked": torch.tensor(3)}
    noisy = add_noise(state, ["w"], std=0.25, rng=np.random.default_rng(7))
    assert float(noisy["w"].std()) == pytest.approx(0.25, rel=0.02)
    assert noisy["w"].dtype == torch.float32
    assert torch.equal(noisy["bn.running_var"], state["bn.running_var"])
    assert int(noisy["bn.num_batches_tracked"]) == 3
    again = add_noise(state, ["w"], 0.25, np.random.default_rng(7))["w"]
    assert torch.equal(again, noisy["w"])  # the same generator, the same noise
    assert not torch.equal(add_noise(state, ["w"], 0.25, np.random.default_rng(8))["w"],
                           noisy["w"])
    assert mean_noise_std(2.0, 0.5, [0.6, 0.8]) == pytest.approx(1.0)


def test_epsilon_from_flowers_accountant_behaves_and_beats_the_plain_rdp_bound():
    eps = privacy_spent(1.0, 12, 1e-5, 4)
    assert privacy_spent(1.0, 24, 1e-5, 4) > eps > privacy_spent(1.0, 6, 1e-5, 4)
    assert privacy_spent(2.0, 12, 1e-5, 4) < eps
    assert privacy_spent(0.0, 12, 1e-5, 4) == math.inf
    assert privacy_spent(1.0, 0, 1e-5, 4) == 0.0
    # T Gaussian releases of multiplier z are exactly one of multiplier z / sqrt(T) (their
    # RDP curves are equal): an oracle that does not count the releases the same way
    for z, t in ((1.0, 12), (2.0, 3), (0.7, 30)):
        assert privacy_spent(z, t, 1e-5, 4) == pytest.approx(
            privacy_spent(z / math.sqrt(t), 1, 1e-5, 4), rel=1e-3)
    # Gaussian RDP: T * a / (2 z^2) at order a, then eps <= rdp + log(1/delta) / (a - 1)
    bound = min(12 * a / 2 + math.log(1e5) / (a - 1) for a in np.linspace(1.01, 64, 5000))
    assert eps <= bound + 1e-6 and eps > 0.5 * bound


def test_private_vote_adds_no_noise_and_records_what_the_sites_noise_makes():
    run = RunConfig(dp_clip=0.5, dp_noise=2.0)
    strategy = make_strategy("fedavg", run=run)
    assert isinstance(strategy, PrivateVote)
    arrays, _ = strategy.aggregate_train(3, replies())
    mean = expected(SIZES)
    assert all(np.allclose(as_numpy(arrays)[k], mean[k], atol=1e-6) for k in mean)
    total = sum(SIZES.values())
    assert strategy.noise_stds[3] == pytest.approx(
        2.0 * 0.5 * math.sqrt(sum((n / total) ** 2 for n in SIZES.values())))
    with pytest.raises(ValueError, match="weighted strategies"):
        make_strategy("median", run=RunConfig(dp_clip=0.5))


def test_a_site_training_under_dp_clips_noises_and_replays_its_update(site):  # noqa: F811
    run = RunConfig(profile="smoke", centres=("Alpha", "Bravo"), min_subjects=5,
                    dp_clip=0.5, dp_noise=0.0)
    order = Order(run=run, fold=0, server_round=1, landmarks=tuple(np.linspace(0, 100, 13)))
    model, _ = build_model("none", seed=1)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    clipped = site_work.train(site, order, state)
    released = clipped.arrays.to_torch_state_dict()
    assert 0 < update_norm(released, state) <= 0.5 * (1 + 1e-5)
    assert clipped.dp_epsilon is None  # clipping alone guarantees nothing
    buffers = [k for k in state if k not in parameter_keys(state)]
    assert buffers and all(torch.equal(released[k], state[k]) for k in buffers)
    plain = order.model_copy(update={"run": run.model_copy(update={"dp_clip": 0.0})})
    unclipped = site_work.train(site, plain, state).arrays.to_torch_state_dict()
    assert update_norm(unclipped, state) > 0.5  # the clip did bind
    assert not all(torch.equal(unclipped[k], state[k]) for k in buffers)
    # with noise: the site adds N(0, (Z C)^2) to every trained parameter itself
    noisy = order.model_copy(update={"run": run.model_copy(update={"dp_noise": 1.0})})
    first = site_work.train(site, noisy, state)
    update = torch.cat([(first.arrays.to_torch_state_dict()[k] - state[k]).double().ravel()
                        for k in parameter_keys(state)])
    assert float(update.std()) == pytest.approx(0.5, rel=0.05)
    assert first.dp_epsilon == pytest.approx(privacy_spent(1.0, 1, 1e-5, 1), rel=1e-6)
    again = site_work.train(site, noisy, state)  # the same request: the same release
    assert all(torch.equal(again.arrays.to_torch_state_dict()[k],
                           first.arrays.to_torch_state_dict()[k]) for k in state)
    assert again.dp_epsilon == first.dp_epsilon
    later = noisy.model_copy(update={"server_round": 2})
    assert site_work.train(site, later, state).dp_epsilon > first.dp_epsilon


def test_a_private_run_reports_epsilon_for_its_noisy_rounds(tmp_path):
    grid = make_grid(tmp_path, {"Alpha": (8, 8), "Bravo": (8, 8)})
    study = runner(grid, epochs=2, **DP)
    outcome = study.run_fold(0)
    assert len(outcome.audit) == 2
    report = privacy_report(study.run, [outcome], sites=2)
    assert report["releases_total"] == 2
    # two rounds of multiplier 1 are one release of multiplier 1 / sqrt(2)
    assert report["epsilon"] == pytest.approx(privacy_spent(2 ** -0.5, 1, 1e-5, 2), abs=1e-3)
    # each site's own epsilon: the noise it added to its two released updates
    assert report["epsilon_per_site"] == pytest.approx(
        dict.fromkeys(("Alpha", "Bravo"), privacy_spent(2 ** -0.5, 1, 1e-5, 1)), abs=1e-3)
    line = auc_table({"auc": {}, "n": {}, "privacy": report}).splitlines()[-1]
    assert line.startswith(f"differential privacy: epsilon {report['epsilon']} at delta 1e-05")
    assert privacy_report(RunConfig(), [outcome], sites=2) is None

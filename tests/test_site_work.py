"""A hospital's work per message, without Flower: what it releases and what it keeps."""

from __future__ import annotations

import numpy as np
import pytest
from cache_factory import write_site_cache

from fedcmr.client import site_work
from fedcmr.common.metrics import binned_counts
from fedcmr.common.model import build_model
from fedcmr.common.nyul import NyulSummary
from fedcmr.common.protocol import NUM_EXAMPLES, NYUL, REPLY_ALLOWED, TEST, TRAIN, VALIDATE, Order
from fedcmr.common.results import read_predictions
from fedcmr.common.run_config import RunConfig


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> site_work.Site:
    root = tmp_path_factory.mktemp("site")
    write_site_cache(root / "cache", "Alpha", 8, 8)
    return site_work.Site.open("Alpha", [root / "cache"], root / "out")


@pytest.fixture(scope="module")
def order() -> Order:
    run = RunConfig(profile="smoke", centres=("Alpha", "Bravo"), min_subjects=5)
    return Order(run=run, fold=0, server_round=1, landmarks=tuple(np.linspace(0, 100, 13)))


def allowed(message_type: str, metrics: dict) -> None:
    extra = set(metrics) - REPLY_ALLOWED[message_type]["metrics"]
    assert not extra, f"{message_type} would release {extra}"


def test_histogram_summary_is_aggregate_and_refused_below_the_minimum(site, order):
    summary = site_work.histogram_summary(site, order)
    allowed(NYUL, summary)
    parsed = NyulSummary.from_record_dict(summary)
    assert parsed.n_subjects >= 5 and parsed.n_images == 2 * parsed.n_subjects
    strict = order.model_copy(update={"run": order.run.model_copy(update={"min_subjects": 50})})
    refusal = site_work.histogram_summary(site, strict)
    assert set(refusal) == {"refused"} and "minimum is 50" in refusal["refused"]


def test_train_validates_the_received_model_then_trains_seven_batches(site, order):
    model, _ = build_model("none", seed=1)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    new_state, metrics = site_work.train(site, order, state)
    allowed(TRAIN, metrics)
    n_train = len(site.parts(order)["train"])
    assert metrics[NUM_EXAMPLES] == n_train
    assert metrics["batch-size"] == -(-n_train // 7) and metrics["train-batches"] == 7
    assert metrics["val-examples"] == len(site.parts(order)["val"])
    assert sum(metrics["val-neg"]) + sum(metrics["val-pos"]) == metrics["val-examples"]
    assert any(not (new_state[k] == state[k]).all() for k in state if k.endswith("weight"))
    again, metrics2 = site_work.train(site, order, state)  # same round: same result
    assert metrics2["train-loss"] == metrics["train-loss"]


def test_test_scores_stay_at_the_site_only_counts_leave(site, order):
    model, _ = build_model("none", seed=2)
    metrics = site_work.test(site, order, model.state_dict())
    allowed(TEST, metrics)
    rows = read_predictions(site.out_dir / "fold_0" / "predictions.csv")
    assert len(rows) == metrics["test-examples"] == len(site.parts(order)["test"])
    assert {r["phase"] for r in rows} == {"ED", "ES"}
    # what leaves is exactly the per-class histogram of the scores that stay
    neg, pos = binned_counts(np.array([r["label"] for r in rows]),
                             np.array([r["score"] for r in rows]))
    assert neg.tolist() == metrics["test-neg"] and pos.tolist() == metrics["test-pos"]
    allowed(VALIDATE, site_work.validate(site, order, model.state_dict()))


def test_held_out_centre_does_not_train_under_lco(site):
    run = RunConfig(protocol="lco", profile="smoke", centres=("Alpha", "Bravo"))
    assert not site.is_training(Order(run=run, fold=0))  # fold 0 holds Alpha out
    assert site.is_training(Order(run=run, fold=1))
    assert len(site.parts(Order(run=run, fold=0))["test"]) == len(site.frames)

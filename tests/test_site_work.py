"""A hospital's work per message, without Flower: what it releases and what it keeps."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import small_site

from fedcmr.client.site import work as site_work
from fedcmr.client.site.release import coarsen
from fedcmr.common.metrics import binned_counts
from fedcmr.common.model import build_model
from fedcmr.common.protocol import Kind, Order
from fedcmr.common.replies import REPLY_ALLOWED, NyulReply, Reply
from fedcmr.common.results import read_predictions
from fedcmr.common.run_config import RunConfig


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> site_work.Site:
    return small_site(tmp_path_factory.mktemp("site"))


@pytest.fixture(scope="module")
def order() -> Order:
    run = RunConfig(profile="smoke", centres=("Alpha", "Bravo"), min_subjects=5)
    return Order(run=run, fold=0, server_round=1, landmarks=tuple(np.linspace(0, 100, 13)))


def allowed(reply: Reply) -> dict:
    """The reply's records as they would leave, checked against the allow-list; returns
    its metrics."""
    content = reply.to_content()
    allow = REPLY_ALLOWED[reply.kind]
    for name, record in [*content.metric_records.items(), *content.config_records.items()]:
        extra = set(record) - allow[name]
        assert not extra, f"{reply.kind} would release {name}.{extra}"
    assert type(reply).from_content(content).model_dump() == reply.model_dump()
    return dict(content.metric_records.get("metrics", {}))


def test_histogram_summary_is_aggregate_and_refused_below_the_minimum(site, order):
    reply = site_work.histogram_summary(site, order)
    allowed(reply)
    assert reply.refused is None
    assert reply.summary.n_subjects >= 5 and reply.summary.n_images == 2 * reply.summary.n_subjects
    strict = order.model_copy(update={"run": order.run.model_copy(update={"min_subjects": 50})})
    refusal = site_work.histogram_summary(site, strict)
    assert refusal.summary is None and "minimum is 50" in str(refusal.refused)
    assert refusal.to_content().metric_records == {}  # nothing but the reason leaves
    assert NyulReply.from_content(refusal.to_content()).refused == refusal.refused


def test_train_validates_the_received_model_then_trains_seven_batches(site, order):
    model, _ = build_model("none", seed=1)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    reply = site_work.train(site, order, state)
    allowed(reply)
    new_state = reply.arrays.to_torch_state_dict()
    n_train = len(site.parts(order)["train"])
    assert reply.num_examples == n_train
    assert reply.batch_size == -(-n_train // 7) and reply.train_batches == 7
    assert reply.val.examples == len(site.parts(order)["val"])
    assert sum(reply.val.neg) + sum(reply.val.pos) == reply.val.examples
    assert any(not (new_state[k] == state[k]).all() for k in state if k.endswith("weight"))
    again = site_work.train(site, order, state)  # same round: same result
    assert again.train_loss == reply.train_loss
    # the validation in the reply is the RECEIVED model's, not the trained one's
    received = site_work.validate(site, order, state).val
    trained = site_work.validate(site, order, new_state).val
    assert reply.val == received
    assert (trained.loss, trained.neg, trained.pos) != (received.loss, received.neg,
                                                        received.pos)


def test_test_scores_stay_at_the_site_only_counts_leave(site, order):
    model, _ = build_model("none", seed=2)
    reply = site_work.test(site, order, model.state_dict())
    metrics = allowed(reply)
    rows = read_predictions(site.out_dir / "fold_0" / "predictions.csv")
    assert len(rows) == metrics["test-examples"] == len(site.parts(order)["test"])
    assert {r["phase"] for r in rows} == {"ED", "ES"}
    # what leaves is exactly the per-class histogram of the scores that stay, in the
    # policy's bins
    neg, pos = binned_counts(np.array([r["label"] for r in rows]),
                             np.array([r["score"] for r in rows]))
    width = site.policy.score_bin_width
    neg, pos = coarsen(neg, width), coarsen(pos, width)
    assert neg.tolist() == metrics["test-neg"] and pos.tolist() == metrics["test-pos"]
    allowed(site_work.validate(site, order, model.state_dict()))
    assert {Kind(k) for k in REPLY_ALLOWED} == set(Kind)  # every kind has an allow-list


def test_held_out_centre_is_all_test_under_lco(site):
    run = RunConfig(protocol="lco", profile="smoke", centres=("Alpha", "Bravo"))
    assert len(site.parts(Order(run=run, fold=0))["test"]) == len(site.frames)  # Alpha out
    assert not site.parts(Order(run=run, fold=1))["test"]

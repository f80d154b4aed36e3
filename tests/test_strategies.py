"""Strategies: our fedavg equals Flower's FedAvg; equal-vote and tempered weigh as stated."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, Metadata, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg

from fedcmr.common.protocol import ARRAYS, METRICS
from fedcmr.common.replies import NUM_EXAMPLES
from fedcmr.server.settings import strategy_alpha
from fedcmr.server.strategies import make_strategy

SIZES = {11: 12, 22: 30, 33: 7, 44: 51}  # node id -> n_k


def reply(node: int, n: int, seed: int) -> Message:
    rng = np.random.default_rng(seed)
    arrays = ArrayRecord({"w": Array(rng.normal(size=(3, 4)).astype(np.float32)),
                          "b": Array(rng.normal(size=(5,)).astype(np.float32))})
    metadata = Metadata(run_id=1, message_id=f"m{node}", src_node_id=node, dst_node_id=0,
                        reply_to_message_id="x", group_id="1", created_at=0.0, ttl=1e9,
                        message_type="train")
    content = RecordDict({ARRAYS: arrays, METRICS: MetricRecord({NUM_EXAMPLES: n,
                                                                 "train-loss": 0.1 * seed})})
    return Message(metadata=metadata, content=content)


def replies() -> list[Message]:
    return [reply(node, n, i) for i, (node, n) in enumerate(SIZES.items())]


def as_numpy(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in record.items()}


def expected(weights: dict[int, float]) -> dict[str, np.ndarray]:
    total = sum(weights.values())
    out: dict[str, np.ndarray] = {}
    for msg in replies():
        w = weights[msg.metadata.src_node_id] / total
        for k, v in as_numpy(msg.content[ARRAYS]).items():
            out[k] = out.get(k, 0) + w * v
    return out


def test_our_fedavg_aggregates_exactly_like_flowers_fedavg():
    ours, _ = make_strategy("fedavg").aggregate_train(1, replies())
    theirs, _ = FedAvg().aggregate_train(1, copy.deepcopy(replies()))
    for key, value in as_numpy(theirs).items():
        np.testing.assert_array_equal(as_numpy(ours)[key], value)


@pytest.mark.parametrize("name,alpha", [("fedavg", None), ("equal-vote", None),
                                        ("tempered", 0.5), ("tempered", 0.25)])
def test_effective_weights_and_aggregate(name, alpha):
    strategy = make_strategy(name, alpha)
    a = strategy_alpha(name, alpha)
    aggregate, _ = strategy.aggregate_train(3, replies())
    raw = {node: n**a for node, n in SIZES.items()}
    total = sum(raw.values())
    assert strategy.weights[3] == pytest.approx({k: v / total for k, v in raw.items()})
    if name == "equal-vote":
        assert set(np.round(list(strategy.weights[3].values()), 12)) == {0.25}
    if name == "fedavg":
        assert strategy.weights[3][44] == pytest.approx(51 / 100)
    for key, value in expected(raw).items():
        np.testing.assert_allclose(as_numpy(aggregate)[key], value, rtol=1e-6)


def test_failed_replies_are_left_out_of_the_weights():
    from flwr.app import Error

    good = replies()[:3]
    bad = Message(metadata=replies()[3].metadata, error=Error(code=0, reason="node lost"))
    strategy = make_strategy("equal-vote")
    strategy.aggregate_train(1, [*good, bad])
    assert set(strategy.weights[1]) == {11, 22, 33}
    assert sum(strategy.weights[1].values()) == pytest.approx(1.0)


def test_only_the_folds_training_sites_get_train_messages(monkeypatch):
    from flwr.supercore.task_identity import TaskIdentity

    monkeypatch.setattr(TaskIdentity, "_run_id", 1)  # set by the ServerApp process normally
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 0)
    strategy = make_strategy("fedavg")
    strategy.train_on([22, 44])
    messages = list(strategy.configure_train(2, ArrayRecord(), ConfigRecord(), grid=None))
    assert [m.metadata.dst_node_id for m in messages] == [22, 44]
    assert all(m.metadata.message_type == "train" for m in messages)


def test_strategy_names_and_alpha_checks():
    assert strategy_alpha("fedavg") == 1.0 and strategy_alpha("equal-vote") == 0.0
    with pytest.raises(ValueError, match="vote-alpha"):
        strategy_alpha("tempered")
    with pytest.raises(ValueError, match="unknown strategy"):
        strategy_alpha("fedprox")


def test_aggregate_does_not_depend_on_the_order_replies_arrive_in():
    forward, _ = make_strategy("tempered", 0.5).aggregate_train(1, replies())
    backward, _ = make_strategy("tempered", 0.5).aggregate_train(1, replies()[::-1])
    for key, value in as_numpy(forward).items():
        assert np.array_equal(as_numpy(backward)[key], value)  # bit for bit


def test_summary_logs_the_vote_exponent_then_fedavgs_settings(caplog):
    strategy = make_strategy("tempered", 0.25)
    strategy.train_on([11, 33])
    with caplog.at_level("INFO", logger="fedcmr.server"):
        strategy.summary()
    ours = [r.getMessage() for r in caplog.records if r.name == "fedcmr.server"]
    assert any("vote_alpha" in m and "0.25" in m for m in ours)
    assert any("[11, 33]" in m for m in ours)


def test_tempered_weights_against_hand_computed_numbers_over_rounds():
    """alpha = 0.5: w_k = sqrt(n_k) / sum_j sqrt(n_j), worked out by hand (not with the
    production formula), over two rounds whose n_k change, the second after a lost site."""
    from flwr.app import Error

    strategy = make_strategy("tempered", 0.5)
    strategy.aggregate_train(1, replies())  # n_k = 12, 30, 7, 51
    assert strategy.weights[1] == pytest.approx(
        {11: 0.184964, 22: 0.292454, 33: 0.141269, 44: 0.381313}, abs=1e-6)
    second = [reply(11, 20, 0), reply(22, 30, 1), reply(44, 10, 3)]
    lost = Message(metadata=reply(33, 7, 2).metadata, error=Error(code=0, reason="node lost"))
    aggregate, _ = strategy.aggregate_train(2, [*second, lost])
    hand = {11: 0.341081, 22: 0.417738, 44: 0.241181}  # sqrt(20), sqrt(30), sqrt(10)
    assert strategy.weights[2] == pytest.approx(hand, abs=1e-6)
    assert strategy.weights[1][33] == pytest.approx(0.141269, abs=1e-6)  # round 1 kept
    mean = {k: sum(hand[m.metadata.src_node_id] * as_numpy(m.content[ARRAYS])[k]
                   for m in second) for k in ("w", "b")}
    for key, value in mean.items():
        np.testing.assert_allclose(as_numpy(aggregate)[key], value, rtol=1e-5)

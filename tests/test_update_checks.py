"""Bad updates are rejected before aggregation, with the site and the reason; integer
buffers stay counts; the robust rules equal Flower's own on the same messages."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, Metadata, RecordDict
from flwr.serverapp.strategy import FedMedian, FedTrimmedAvg, Krum
from screening import screen

from fedcmr.common.replies import ScoreCounts, TrainReply
from fedcmr.server.strategies import TRIM_BETA, make_strategy

GLOBAL = {"w": np.zeros((3, 4), np.float32), "b": np.zeros(5, np.float32),
          "bn.num_batches_tracked": np.array(0, np.int64)}
NAMES = {11: "Alpha", 22: "Bravo", 33: "Charlie", 44: "Delta", 55: "Echo"}
DECLARED = dict.fromkeys(NAMES, 60)  # frames each site declared at discovery


def arrays(seed: int, **changes) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {"w": rng.normal(0, 0.1, (3, 4)).astype(np.float32),
           "b": rng.normal(0, 0.1, 5).astype(np.float32),
           "bn.num_batches_tracked": np.array(7, np.int64)}
    out.update(changes)
    return {k: v for k, v in out.items() if v is not None}


def reply(node: int, n_k: int = 20, seed: int | None = None, server_round: int = 1,
          **changes) -> Message:
    weights = arrays(node if seed is None else seed, **changes)
    content = TrainReply(site=NAMES[node], arrays=ArrayRecord(
        {k: Array(v) for k, v in weights.items()}), num_examples=n_k, train_loss=0.5,
        train_batches=7, batch_size=3, server_round=server_round,
        val=ScoreCounts(loss=0.6, examples=4, neg=[2, 0], pos=[0, 2])).to_content()
    metadata = Metadata(run_id=1, message_id=f"m{node}", src_node_id=node, dst_node_id=0,
                        reply_to_message_id="x", group_id="1", created_at=0.0, ttl=1e9,
                        message_type="train")
    return Message(metadata=metadata, content=content)


def check(replies: list[Message]) -> tuple[list[int], dict[str, str]]:
    passed, rejected = screen(replies, ArrayRecord({k: Array(v) for k, v in GLOBAL.items()}),
                              DECLARED, NAMES, server_round=1)
    return ([m.metadata.src_node_id for m in passed if not m.has_error()],
            {r.site: r.reason for r in rejected})


GOOD = [reply(11), reply(22), reply(33)]


@pytest.mark.parametrize(("bad", "said"), [
    (reply(44, w=np.full((3, 4), np.nan, np.float32)), "tensor w holds NaN or Inf"),
    (reply(44, b=np.array([0, np.inf, 0, 0, 0], np.float32)), "tensor b holds NaN or Inf"),
    (reply(44, b=None), "tensors missing ['b']"),
    (reply(44, extra=np.zeros(2, np.float32)), "extra ['extra']"),
    (reply(44, w=np.zeros((4, 3), np.float32)), "tensor w is float32[4, 3], the model's is "
                                                "float32[3, 4]"),
    (reply(44, w=np.zeros((3, 4), np.float64)), "tensor w is float64[3, 4]"),
    (reply(44, n_k=0), "n_k = 0: no training frames"),
    (reply(44, n_k=-5), "n_k = -5"),
    (reply(44, n_k=61), "exceeds the 60 frames the site declared"),
    (reply(44, server_round=0), "a reply to round 0, not to round 1"),
    (reply(44, w=np.full((3, 4), 50.0, np.float32)), "far outside the others'"),
])
def test_a_bad_update_is_rejected_with_its_site_and_reason(bad, said):
    passed, rejected = check([*GOOD, bad])
    assert passed == [11, 22, 33]
    assert list(rejected) == ["Delta"] and said in rejected["Delta"]


def test_good_updates_and_errors_pass_and_near_equal_norms_are_no_outliers():
    lost = Message(metadata=reply(44).metadata, error=Error(code=0, reason="node lost"))
    passed, rejected = screen([*GOOD, reply(44, seed=1), lost],
                              ArrayRecord({k: Array(v) for k, v in GLOBAL.items()}),
                              DECLARED, NAMES, server_round=1)
    assert rejected == [] and len(passed) == 5 and passed[-1].has_error()


def test_zero_or_negative_n_k_never_divides_by_zero_or_goes_complex():
    for n_k in (0, -3):
        strategy = make_strategy("tempered", 0.5)
        aggregate, _ = strategy.aggregate_train(1, [reply(11, n_k=n_k), reply(22, n_k=n_k)])
        assert aggregate is None and strategy.weights[1] == {}
    strategy = make_strategy("tempered", 0.5)
    aggregate, _ = strategy.aggregate_train(1, [reply(11, n_k=-3), reply(22, n_k=16)])
    assert strategy.weights[1] == {22: 1.0}


@pytest.mark.parametrize("name", ["fedavg", "median", "trimmed-mean"])
def test_integer_buffers_stay_counts(name):
    aggregate, _ = make_strategy(name).aggregate_train(1, [reply(11), reply(22), reply(33)])
    counts = aggregate["bn.num_batches_tracked"].numpy()
    assert counts.dtype == np.int64 and counts == 7
    assert aggregate["w"].numpy().dtype == np.float32


@pytest.mark.parametrize(("name", "theirs"), [
    ("median", FedMedian()), ("trimmed-mean", FedTrimmedAvg(beta=TRIM_BETA)),
])
def test_robust_rules_equal_flowers_own(name, theirs):
    replies = [reply(node, n_k=10 * i + 5) for i, node in enumerate((11, 22, 33, 44))]
    ours, _ = make_strategy(name).aggregate_train(1, copy.deepcopy(replies))
    for msg in replies:  # Flower's own, weighting key and all, on the same replies
        msg.content.metric_records["metrics"]["num-examples"] = 1
    expected, _ = theirs.aggregate_train(1, copy.deepcopy(replies))
    for key in ("w", "b"):
        np.testing.assert_array_equal(ours[key].numpy(), expected[key].numpy())
    if name == "median":  # and it is the median
        stacked = np.stack([m.content.array_records["arrays"]["w"].numpy() for m in replies])
        np.testing.assert_allclose(ours["w"].numpy(), np.median(stacked, axis=0))


def test_krum_picks_the_central_update_and_is_refused_with_too_few_sites():
    outlier = reply(55, w=np.full((3, 4), 3.0, np.float32))
    replies = [reply(node, seed=node) for node in (11, 22, 33, 44)] + [outlier]
    ours, _ = make_strategy("krum").aggregate_train(1, copy.deepcopy(replies))
    expected, _ = Krum(num_malicious_nodes=1, weighted_by_key="num-examples").aggregate_train(
        1, copy.deepcopy(replies))
    np.testing.assert_array_equal(ours["w"].numpy(), expected["w"].numpy())
    assert not np.allclose(ours["w"].numpy(), 3.0)
    strategy = make_strategy("krum")
    strategy.train_on([11, 22, 33, 44])
    with pytest.raises(ValueError, match="needs at least 5 training sites.*median"):
        strategy.configure_train(1, ArrayRecord(), ConfigRecord(), None)


def test_the_reply_carries_its_round():
    content = reply(11, server_round=3).content
    assert TrainReply.from_content(content).server_round == 3
    assert "server-round" in TrainReply.allowed()["metrics"]
    assert isinstance(content, RecordDict)

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


def fp16_reply(node: int, **changes) -> Message:
    """A reply whose weights travel as fp16 deltas against GLOBAL (update_codec.encode)."""
    import torch

    from fedcmr.common.update_codec import encode

    message = reply(node)
    message.content["arrays"] = encode(
        {k: torch.from_numpy(v) for k, v in arrays(node, **changes).items()},
        {k: torch.from_numpy(v) for k, v in GLOBAL.items()}, "fp16-delta")
    return message


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
    strategy.train_on([11, 22, 33, 44])  # 2 f + 3 = 5 needed for f = 1 bad site
    with pytest.raises(ValueError, match="needs at least 5 training sites.*median"):
        strategy.configure_train(1, ArrayRecord(), ConfigRecord(), None)
    for enough in (5, 6, 9):
        strategy.check_sites(enough)  # no error
    with pytest.raises(ValueError, match="needs at least 5"):
        strategy.check_sites(4)


def test_the_reply_carries_its_round():
    content = reply(11, server_round=3).content
    assert TrainReply.from_content(content).server_round == 3
    assert "server-round" in TrainReply.allowed()["metrics"]
    assert isinstance(content, RecordDict)


def test_the_norm_limit_is_the_median_plus_five_floored_deviations():
    """An oracle written out: limit = median + NORM_MADS x max(MAD, NORM_FLOOR x median).
    Norms 1, 1, 1 and x: the MAD is 0, so the floor (0.5) sets the spread and the limit is
    1 + 5 x 0.5 = 3.5; with norms 1, 2, 3, 4, 5, 6 and x the MAD (1.5 about the median 3.5
    or 4) sets it. Exactly NORM_MIN_UPDATES updates are already checked."""
    from fedcmr.server.update_checks import NORM_MIN_UPDATES, norm_outliers

    def limit(norms):
        values = np.array(norms)
        median = np.median(values)
        return median + 5.0 * max(np.median(np.abs(values - median)), 0.5 * median)

    assert NORM_MIN_UPDATES == 3
    for base in ([1.0, 1.0], [1.0, 1.0, 1.0], [3.0, 3.0, 3.0], [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]):
        edge = limit(base + [0.0])  # a candidate well inside does not move the median much
        for x in (edge * 0.97, edge * 1.03):
            norms = dict(enumerate(base + [x]))
            flagged = norm_outliers(norms)
            assert (len(norms) - 1 in flagged) == (x > limit(base + [x])), (base, x)
    assert norm_outliers({1: 1.0, 2: 1e6}) == {}  # fewer than three: no basis to judge


def test_a_rejected_update_does_not_stop_the_others_being_checked():
    """The first reply is rejected; the ones after it are still screened and passed."""
    bad = reply(11, w=np.full((3, 4), np.nan, np.float32))
    passed, rejected = check([bad, reply(22), reply(33), reply(44)])
    assert passed == [22, 33, 44] and list(rejected) == ["Alpha"]


def test_an_fp16_delta_reply_is_decoded_for_aggregation_where_screening_did_not():
    """decoded_message decodes a reply that still carries fp16 deltas (one the update
    checks did not decode) against the global model: the strategy then averages weights."""
    import torch

    from fedcmr.common.update_codec import encode
    from fedcmr.server.update_checks import as_numpy, decoded_message

    new = arrays(11)
    record = encode({k: torch.from_numpy(v) for k, v in new.items()},
                    {k: torch.from_numpy(v) for k, v in GLOBAL.items()}, "fp16-delta")
    message = reply(11)
    message.content["arrays"] = record
    got = as_numpy(decoded_message(message, GLOBAL, "fp16-delta").content["arrays"])
    assert set(got) == set(new)
    for key, value in new.items():
        assert got[key].dtype == value.dtype
        assert np.allclose(got[key], value, atol=1e-3), key


def test_the_update_norm_is_the_euclidean_norm_of_the_float_change():
    from fedcmr.server.update_checks import update_norm

    new, before = arrays(11), arrays(99)  # a received model that is not zero
    expected = np.sqrt(sum(np.sum((new[k].astype(np.float64) - before[k]) ** 2)
                           for k in ("w", "b")))  # the integer buffer is a count
    assert update_norm(new, before) == pytest.approx(expected, rel=1e-12)
    assert update_norm(before, before) == 0.0


def test_missing_and_extra_tensors_are_named_apart_three_at_most():
    from fedcmr.server.update_checks import reply_problem

    reference = {f"t{i}": np.zeros(2, np.float32) for i in range(5)}
    sent = {"t0": np.zeros(2, np.float32), **{f"x{i}": np.zeros(2, np.float32)
                                              for i in range(4)}}
    parsed = TrainReply.from_message(reply(11))
    said = reply_problem(parsed, sent, reference, None, 1)
    assert said == ("tensors missing ['t1', 't2', 't3'], extra ['x0', 'x1', 'x2']")
    _, rejected = check([reply(11), reply(22), reply(33, extra=np.zeros(2, np.float32))])
    assert rejected == {"Charlie": "tensors missing [], extra ['extra']"}


def test_errors_and_undecodable_replies_do_not_stop_the_screening():
    """An error reply first, then a reply in the wrong encoding: both are dealt with (the
    error passed through, the other rejected with the codec's reason) and the replies after
    them are still screened."""
    error = Message(Error(code=1, reason="lost"), reply_to=reply(44))
    error.metadata.__dict__["_src_node_id"] = 44
    passed, rejected = check([error, reply(11), reply(22), reply(33)])
    assert passed == [11, 22, 33] and rejected == {}
    good = [fp16_reply(node) for node in (22, 33, 44)]
    kept, rejected = screen([reply(11), *good], ArrayRecord(
        {k: Array(v) for k, v in GLOBAL.items()}), DECLARED, NAMES, server_round=1,
        encoding="fp16-delta")
    assert sorted(m.metadata.src_node_id for m in kept) == [22, 33, 44]
    assert list(rejected) and rejected[0].site == "Alpha"
    assert "encoded fp32; this run asked for fp16-delta" in rejected[0].reason


def test_a_tensor_sent_whole_in_fp16_delta_is_logged_by_name(caplog):
    """A change beyond float16's range travels whole in fp32; the coordinator says which."""
    import logging

    messages = [fp16_reply(11), fp16_reply(22),
                fp16_reply(33, w=np.full((3, 4), 1e6, np.float32))]
    with caplog.at_level(logging.WARNING, logger="fedcmr"):
        screen(messages, ArrayRecord({k: Array(v) for k, v in GLOBAL.items()}), DECLARED,
               NAMES, server_round=1, encoding="fp16-delta")
    whole = [r.getMessage() for r in caplog.records if "whole in fp32" in r.getMessage()]
    assert len(whole) == 1 and "site Charlie sent 1 tensor(s) whole" in whole[0], whole
    assert whole[0].endswith(": w")


def test_a_reply_the_screening_decoded_is_aggregated_as_it_is():
    """In an fp16-delta run, screen() hands the strategy decoded fp32 records; decoding
    them again (they name no encoding) would be refused, so they pass as they are."""
    from fedcmr.server.update_checks import as_numpy, decoded_message

    messages = [fp16_reply(node) for node in (11, 22, 33)]
    kept, _ = screen(messages, ArrayRecord({k: Array(v) for k, v in GLOBAL.items()}),
                     DECLARED, NAMES, server_round=1, encoding="fp16-delta")
    for message in kept:
        before = as_numpy(message.content["arrays"])
        after = as_numpy(decoded_message(message, GLOBAL, "fp16-delta").content["arrays"])
        assert all(np.array_equal(before[k], after[k]) for k in before)


def test_a_reply_that_is_no_training_reply_is_rejected_not_raised():
    broken = reply(33)
    del broken.content.metric_records["metrics"]["num-examples"]
    passed, rejected = check([reply(11), reply(22), broken])
    assert passed == [11, 22] and rejected["Charlie"].startswith("not a training reply")

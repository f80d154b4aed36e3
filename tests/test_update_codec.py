"""A site's update as fp32 or fp16 deltas (common/update_codec.py): what it costs on the
wire, what the server gets back, and what it refuses."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import small_site
from flwr.app import Array, ArrayRecord, Context, Message, Metadata, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from screening import screen

from fedcmr.client.site import work as site_work
from fedcmr.client.site.audit import audit_mod
from fedcmr.common.model import build_model
from fedcmr.common.packing import unpack_message
from fedcmr.common.protocol import Order
from fedcmr.common.replies import ScoreCounts, TrainReply
from fedcmr.common.run_config import RunConfig
from fedcmr.common.update_codec import (
    ENCODING_KEY,
    FP16_MAX,
    EncodingError,
    decode,
    encode,
    record_encoding,
    update_bytes,
    whole_tensors,
)
from fedcmr.server.strategies import make_strategy
from fedcmr.server.update_checks import as_numpy

NAMES = {11: "Alpha", 22: "Bravo", 33: "Charlie", 44: "Delta"}
DECLARED = dict.fromkeys(NAMES, 60)


def global_model(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"conv.weight": rng.normal(0, 0.05, (64, 3, 3, 3, 3)).astype(np.float32),
            "bn.running_var": rng.uniform(0.5, 2.0, 64).astype(np.float32),
            "bn.num_batches_tracked": np.array(40, np.int64)}


def trained(reference: dict[str, np.ndarray], seed: int, scale: float = 1e-3
            ) -> dict[str, np.ndarray]:
    """The reference after a local step: small float changes, a counted batch more."""
    rng = np.random.default_rng(seed)
    out = {k: (v + rng.normal(0, scale, v.shape).astype(np.float32)
               if v.dtype == np.float32 else v + 7) for k, v in reference.items()}
    out["bn.num_batches_tracked"] = np.array(47, np.int64)
    return out


def message(node: int, record: ArrayRecord, n_k: int = 20) -> Message:
    content = TrainReply(site=NAMES[node], arrays=record, num_examples=n_k, train_loss=0.5,
                         train_batches=7, batch_size=3, server_round=1,
                         val=ScoreCounts(loss=0.6, examples=4, neg=[2, 0], pos=[0, 2])
                         ).to_content()
    meta = Metadata(run_id=1, message_id=f"m{node}", src_node_id=node, dst_node_id=0,
                    reply_to_message_id="x", group_id="1", created_at=0.0, ttl=1e9,
                    message_type="train")
    return Message(metadata=meta, content=content)


def fp16_tolerance(true: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Float16 rounding of the delta (half an ulp: 2^-11 relative, 2^-25 near zero) plus
    the float32 addition."""
    delta = np.abs(true.astype(np.float64) - reference)
    return delta * 2.0 ** -11 + 2.0 ** -25 + np.abs(true) * 2.0 ** -23


def test_fp32_is_todays_record_bit_for_bit():
    state = {k: torch.from_numpy(v) for k, v in trained(global_model(), 1).items()}
    record = encode(state, global_model(), "fp32")
    today = ArrayRecord(state)  # what site_work sent before the encoding existed
    assert list(record) == list(today) and ENCODING_KEY not in record
    assert all(record[k].data == today[k].data and record[k].dtype == today[k].dtype
               for k in today)
    back = decode(record, global_model(), "fp32")
    assert all(np.array_equal(back[k], state[k].numpy()) for k in state)


def test_fp16_delta_is_close_to_the_weights_in_about_half_the_bytes():
    reference = global_model()
    state = trained(reference, 2)
    record = encode(state, reference, "fp16-delta")
    assert record_encoding(record) == "fp16-delta"
    assert record["conv.weight"].dtype == "float16" and record["bn.running_var"].dtype == "float16"
    back = decode(record, reference, "fp16-delta")
    assert set(back) == set(state)
    for key in ("conv.weight", "bn.running_var"):
        assert back[key].dtype == np.float32
        error = np.abs(back[key].astype(np.float64) - state[key])
        assert (error <= fp16_tolerance(state[key], reference[key])).all(), key
        assert error.max() > 0  # it did go through float16
    # non-float tensors travel as they are
    assert record["bn.num_batches_tracked"].dtype == "int64"
    assert back["bn.num_batches_tracked"].dtype == np.int64
    assert back["bn.num_batches_tracked"] == 47
    ratio = update_bytes(record) / update_bytes(encode(state, reference, "fp32"))
    assert 0.49 < ratio < 0.52
    assert whole_tensors(record, reference) == []


@pytest.mark.parametrize("change", [2 * FP16_MAX, np.inf, np.nan])
def test_a_delta_beyond_float16_travels_whole_in_fp32_never_as_inf(change):
    reference = global_model()
    state = trained(reference, 3)
    state["bn.running_var"] = state["bn.running_var"].copy()
    state["bn.running_var"][5] = change
    record = encode(state, reference, "fp16-delta")
    assert record["bn.running_var"].dtype == "float32"  # whole, as the site computed it
    assert record["conv.weight"].dtype == "float16"  # the others stay deltas
    assert whole_tensors(record, reference) == ["bn.running_var"]
    back = decode(record, reference, "fp16-delta")
    np.testing.assert_array_equal(back["bn.running_var"], state["bn.running_var"])
    assert np.isfinite(back["conv.weight"]).all()


def test_the_server_judges_a_tensor_sent_whole_by_its_values():
    reference = global_model()
    huge, bad = trained(reference, 4), trained(reference, 5)
    huge["conv.weight"] = huge["conv.weight"].copy()
    huge["conv.weight"][0, 0, 0, 0, 0] = 1e5  # finite, beyond float16: sent whole, kept
    bad["bn.running_var"] = bad["bn.running_var"].copy()
    bad["bn.running_var"][0] = np.inf  # sent whole, then rejected as any Inf is
    replies = [message(11, encode(trained(reference, 6), reference, "fp16-delta")),
               message(33, encode(huge, reference, "fp16-delta")),
               message(44, encode(bad, reference, "fp16-delta"))]
    passed, rejected = screen(replies, ArrayRecord({k: Array(v) for k, v in reference.items()}),
                              DECLARED, NAMES, 1, "fp16-delta")
    assert [m.metadata.src_node_id for m in passed] == [11, 33]
    assert [(r.site, r.reason) for r in rejected] == [
        ("Delta", "tensor bn.running_var holds NaN or Inf")]
    # the passed message carries the decoded weights (the strategy does not decode again)
    back = passed[1].content.array_records["arrays"]
    assert record_encoding(back) == "fp32"
    np.testing.assert_array_equal(back["conv.weight"].numpy(), huge["conv.weight"])


@pytest.mark.parametrize(("asked", "sent"), [("fp32", "fp16-delta"), ("fp16-delta", "fp32")])
def test_an_update_encoded_otherwise_than_asked_is_rejected_naming_site_and_encoding(
        asked, sent, caplog):
    reference = global_model()
    replies = [message(node, encode(trained(reference, node), reference, asked))
               for node in (11, 22, 33)]
    replies.append(message(44, encode(trained(reference, 44), reference, sent)))
    with caplog.at_level("INFO", logger="fedcmr.server"):
        passed, rejected = screen(replies, ArrayRecord(
            {k: Array(v) for k, v in reference.items()}), DECLARED, NAMES, 1, asked)
    assert [m.metadata.src_node_id for m in passed] == [11, 22, 33]
    (rejection,) = rejected
    assert rejection.site == "Delta"
    assert rejection.reason == f"the update is encoded {sent}; this run asked for {asked} " \
                               "(update-encoding)"
    assert f"rejected the update of site Delta: the update is encoded {sent}" in caplog.text
    sizes = [r.getMessage() for r in caplog.records if "update bytes per site" in r.getMessage()]
    assert len(sizes) == 1 and f"({asked})" in sizes[0] and "Delta" in sizes[0]


def test_a_float16_delta_for_a_count_is_rejected():
    reference = global_model()
    record = encode(trained(reference, 8), reference, "fp16-delta")
    record["bn.num_batches_tracked"] = Array(np.array(7, np.float16))
    with pytest.raises(EncodingError, match="bn.num_batches_tracked is a float16.*int64"):
        decode(record, reference, "fp16-delta")


@pytest.mark.parametrize("name", ["fedavg", "median"])
def test_the_strategy_aggregates_the_decoded_weights_and_keeps_what_arrived(name, monkeypatch):
    for attr, value in (("_run_id", 1), ("_node_id", 0), ("_task_id", 1)):
        monkeypatch.setattr(TaskIdentity, attr, value)  # messages need a run id
    reference = global_model()
    states = {node: trained(reference, node) for node in (11, 22, 33)}
    sent = ArrayRecord({k: Array(v) for k, v in reference.items()})
    strategy = make_strategy(name, run=RunConfig(update_encoding="fp16-delta"))
    strategy.train_on(states)
    orders = strategy.configure_train(1, sent, Order(run=RunConfig()).to_record(), None)
    for order in orders:  # the global model goes out in fp32, as it is
        assert order.content.array_records["arrays"]["conv.weight"].dtype == "float32"
    replies = [message(n, encode(s, reference, "fp16-delta")) for n, s in states.items()]
    arrived = [update_bytes(m.content.array_records["arrays"]) for m in replies]
    records = [m.content.array_records["arrays"] for m in replies]
    aggregate, _ = strategy.aggregate_train(1, replies)
    stack = np.stack([s["conv.weight"] for s in states.values()])
    want = stack.mean(axis=0) if name == "fedavg" else np.median(stack, axis=0)
    got = aggregate["conv.weight"].numpy()
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=float(fp16_tolerance(stack, reference[
        "conv.weight"]).max()))
    assert aggregate["bn.num_batches_tracked"].numpy() == 47
    # the records the replies came with are whole (rounds.csv counts their bytes)
    assert [update_bytes(r) for r in records] == arrived


def test_run_config_refuses_deltas_where_they_do_not_apply():
    with pytest.raises(ValueError, match="update-encoding fp16-delta"):
        RunConfig(update_encoding="fp16-delta", dp_clip=0.5)
    with pytest.raises(ValueError, match="update-encoding fp16-delta"):
        RunConfig(update_encoding="fp16-delta", model="measures")
    assert RunConfig().update_encoding == "fp32"


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> site_work.Site:
    return small_site(tmp_path_factory.mktemp("site"))


def test_a_site_trains_and_sends_deltas_the_gate_passes_and_the_server_decodes(site,
                                                                               tmp_path):
    model, _ = build_model("none", seed=1)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    run = RunConfig(profile="smoke", centres=("Alpha", "Bravo"), min_subjects=5)
    orders = {e: Order(run=run.model_copy(update={"update_encoding": e}), fold=0,
                       server_round=1, landmarks=tuple(np.linspace(0, 100, 13)))
              for e in ("fp32", "fp16-delta")}
    full = site_work.train(site, orders["fp32"], state)
    delta = site_work.train(site, orders["fp16-delta"], state)  # same round: same training
    assert delta.train_loss == full.train_loss
    # the site's audit gate lets it leave, and logs it without values
    meta = Metadata(run_id=1, message_id="m", src_node_id=11, dst_node_id=0,
                    reply_to_message_id="", group_id="", created_at=0.0, ttl=1e9,
                    message_type="train")
    request = Message(metadata=meta, content=RecordDict())
    context = Context(run_id=1, node_id=11, node_config={"site": "Alpha",
                      "out-dir": str(tmp_path)}, state=RecordDict(), run_config={})
    reply = Message(metadata=meta, content=delta.to_content())
    assert audit_mod(request, context, lambda m, c: reply) is reply
    logged = json.loads((tmp_path / "audit.jsonl").read_text())
    assert logged["blocked"] == [] and ENCODING_KEY in logged["records"]["arrays"]["keys"]
    # it leaves packed; the server unpacks it (server.roster.send_and_receive) and decodes
    # it to the fp32 weights the site trained, within float16's rounding
    reply = unpack_message(reply)
    sent = ArrayRecord(state)
    passed, rejected = screen([reply], sent, {11: len(site.frames)}, {11: "Alpha"}, 1,
                              "fp16-delta")
    assert rejected == [] and len(passed) == 1 and passed[0] is reply
    reference = as_numpy(sent)
    back = decode(delta.arrays, reference, "fp16-delta")
    weights = as_numpy(full.arrays)
    assert set(back) == set(weights)
    changed = 0
    for key, want in weights.items():
        assert back[key].dtype == want.dtype
        if want.dtype == np.float32:
            error = np.abs(back[key].astype(np.float64) - want)
            assert (error <= fp16_tolerance(want, reference[key])).all(), key
            changed += int(not np.array_equal(want, reference[key]))
        else:
            np.testing.assert_array_equal(back[key], want)
    assert changed > 0
    ratio = update_bytes(delta.arrays) / update_bytes(full.arrays)
    assert 0.49 < ratio < 0.51


def test_every_tensor_name_comes_back_and_the_encoding_entry_never_does():
    """Names that sort after the encoding entry's, and keys that are new string objects
    (as after the wire), decode to exactly the state's tensors."""
    reference = {"a.weight": np.zeros(3, np.float32), "weight": np.zeros(4, np.float32),
                 "zz.bias": np.zeros(2, np.float32)}
    state = {k: v + 0.25 for k, v in reference.items()}
    for encoding in ("fp32", "fp16-delta"):
        record = encode(state, reference, encoding)
        wired = ArrayRecord({"".join(list(k)): v for k, v in record.items()})
        back = decode(wired, reference, encoding)
        assert set(back) == set(state), encoding
        for key, value in state.items():
            np.testing.assert_allclose(back[key], value, atol=1e-3)


def test_a_float16_tensor_in_an_fp32_reply_is_not_taken_for_a_delta():
    """An fp32 run: a float16 tensor stays float16 (and the update checks reject its
    dtype), never added to the global weights as a delta."""
    reference = global_model()
    state = trained(reference, 3)
    record = ArrayRecord({k: Array(v.astype(np.float16) if k == "conv.weight" else v)
                          for k, v in state.items()})
    back = decode(record, reference, "fp32")
    assert back["conv.weight"].dtype == np.float16
    np.testing.assert_allclose(back["conv.weight"], state["conv.weight"], atol=1e-2)


@pytest.mark.parametrize("shape", [(2,), (1, 2, 3)])
def test_a_delta_of_another_shape_is_refused_naming_both(shape):
    reference = {"w": np.zeros((2, 3), np.float32)}
    record = ArrayRecord({"w": Array(np.zeros(shape, np.float16)),
                          ENCODING_KEY: Array(np.array("fp16-delta"))})
    with pytest.raises(EncodingError, match=r"tensor w is a float16\[.*delta; the model's "
                                            r"tensor is float32\[2, 3\]"):
        decode(record, reference, "fp16-delta")

"""A model travels as one object (common/packing.py): packing changes how many objects Flower
moves, never what arrives; a crafted layout is refused at the site and at the coordinator."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torchvision
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, Metadata, RecordDict
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

from fedcmr.client.site.audit import audit_mod
from fedcmr.common import packing
from fedcmr.common.update_codec import FP16_DELTA, encode


@pytest.fixture(scope="module")
def r3d18() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)  # as after training: no two arrays equal (Flower stores one of each)
    return {k: v + torch.rand_like(v) if v.is_floating_point() else v
            for k, v in torchvision.models.video.r3d_18(num_classes=1).state_dict().items()}


def message(content: RecordDict, message_type: str = "train") -> Message:
    meta = Metadata(run_id=1, message_id="m", src_node_id=1, dst_node_id=2,
                    reply_to_message_id="", group_id="", created_at=0.0, ttl=1e9,
                    message_type=message_type)
    return Message(metadata=meta, content=content)


def objects(content: RecordDict) -> int:
    return len(get_all_nested_objects(message(content)))


def test_the_model_arrives_array_for_array_byte_for_byte(r3d18):
    """Every array of r3d_18 (float32, int64 counters) and of an fp16-delta update (float16,
    a 0-d string) comes back with its own content address: what the site trains on and
    what the coordinator checks and logs are the arrays that were packed."""
    update = encode({k: v + (0.5 if v.is_floating_point() else 1) for k, v in r3d18.items()},
                    r3d18, FP16_DELTA)
    for record, dtypes in ((ArrayRecord(r3d18), {"float32", "int64"}),
                           (update, {"float16", "int64", "<U10"})):
        packed = packing.pack(record)
        assert list(packed) == [packing.PACKED, packing.LAYOUT]
        back = packing.unpack(packed)
        assert list(back) == list(record)
        assert all(back[k].object_id == record[k].object_id for k in record)
        assert back.object_id == record.object_id
        assert {back[k].dtype for k in back} == dtypes
    with pytest.raises(TypeError):  # a packed record cannot be read as a model
        packed[packing.PACKED].numpy()


def test_a_model_is_a_tenth_of_the_objects(r3d18):
    """Flower fetches every object in its own request at every hop: r3d_18's 122 arrays are
    over 200 objects; packed, about 30 (its 5 MB chunks and four heads)."""
    content = RecordDict({"arrays": ArrayRecord(r3d18), "config": ConfigRecord({"a": 1})})
    before, after = objects(content), objects(packing.pack_content(content))
    assert before > 200 and after <= 35, (before, after)
    one = RecordDict({"arrays": ArrayRecord({"w": Array(np.zeros(3, np.float32))})})
    assert packing.pack_content(one)["arrays"] is one["arrays"]  # nothing to gain


def crafted(layout, blob: bytes = b"\x00" * 8) -> ArrayRecord:
    text = json.dumps(layout).encode()
    return ArrayRecord({
        packing.PACKED: Array(dtype="uint8", shape=(len(blob),), stype=packing.PACKED_STYPE,
                              data=blob),
        packing.LAYOUT: Array(dtype="uint8", shape=(len(text),), stype=packing.LAYOUT_STYPE,
                              data=text)})


@pytest.mark.parametrize("layout, why", [
    ([["a", "float32", [1], "numpy.ndarray", 4]], "accounts for 4 bytes; packed-arrays "
                                                  "holds 8"),
    ([["a", "float32", [1], "numpy.ndarray", 16]], "accounts for 16 bytes"),
    ([["a", "f4", [1], "numpy.ndarray", 4], ["a", "f4", [1], "numpy.ndarray", 4]], "twice"),
    ([["a", "f4", [-1], "numpy.ndarray", 8]], "is not [key, dtype, shape, stype, bytes]"),
    ({"a": 1}, "is not a list"),
])
def test_a_layout_that_does_not_fit_its_bytes_is_refused(layout, why):
    with pytest.raises(packing.PackingError, match=why.replace("[", r"\[").replace("]", r"\]")):
        packing.unpack(crafted(layout))


def test_the_site_refuses_a_crafted_packed_model_before_any_handler(tmp_path):
    node = {"site": "A", "data-path": str(tmp_path / "cache"), "out-dir": str(tmp_path)}
    context = Context(run_id=1, node_id=2, node_config=node, state=RecordDict(),
                      run_config={})
    called = []
    request = message(RecordDict({
        "arrays": crafted([["w", "float32", [4], "numpy.ndarray", 64]]),
        "config": ConfigRecord({"order": "{}"})}), "query.validate")
    out = audit_mod(request, context, lambda m, c: called.append(m))
    assert called == [] and out.has_error()
    assert "cannot be unpacked" in out.error.reason and "accounts for 64 bytes" in \
        out.error.reason
    logged = json.loads((tmp_path / "audit.jsonl").read_text())
    assert "cannot be unpacked" in logged["request"]["malformed"]


def test_the_site_unpacks_what_it_receives_and_packs_what_it_releases(tmp_path, r3d18):
    """The handler sees the model's own arrays; the reply leaves packed, and the audit log's
    `released` digest is the content address of what left."""
    node = {"site": "A", "data-path": str(tmp_path / "cache"), "out-dir": str(tmp_path)}
    context = Context(run_id=1, node_id=2, node_config=node, state=RecordDict(),
                      run_config={})
    model = ArrayRecord(r3d18)
    request = message(RecordDict({"arrays": packing.pack(model),
                                  "config": ConfigRecord({"order": "{}"})}))
    seen = []

    def handler(msg, ctx):
        seen.append(msg.content["arrays"])
        return message(RecordDict({"arrays": ArrayRecord(r3d18)}))

    out = audit_mod(request, context, handler)
    assert seen[0].object_id == model.object_id
    assert packing.is_packed(out.content["arrays"])
    logged = json.loads((tmp_path / "audit.jsonl").read_text())
    assert logged["released"] == out.content.object_id
    assert logged["records"]["arrays"]["keys"]["stem.0.weight"] == [64, 3, 3, 7, 7]


class OneReplyGrid:
    """A SuperLink's two calls as the coordinator uses them: each pushed message gets an id,
    and `reply` (made from the pushed message) waits to be pulled."""

    def __init__(self, reply):
        self.reply, self.waiting, self.pushed = reply, {}, []

    def push_messages(self, messages):
        ids = []
        for number, msg in enumerate(messages):
            msg.metadata.__dict__["_message_id"] = f"m{number}"
            self.pushed.append(msg.content)
            self.waiting[f"m{number}"] = self.reply(msg)
            ids.append(f"m{number}")
        return ids

    def pull_messages(self, ids):
        return [self.waiting.pop(i) for i in list(ids) if i in self.waiting]


def test_the_coordinator_sends_packed_and_turns_an_unreadable_reply_into_a_failure(
        monkeypatch, r3d18):
    """What leaves the coordinator is packed, the caller's message keeps its own content;
    a reply whose layout does not fit its bytes comes back as an error reply to that
    message (the site failed the exchange), never as a model."""
    from flwr.supercore.task_identity import TaskIdentity

    from fedcmr.server.roster import send_and_receive

    for attr, value in (("_run_id", 1), ("_node_id", 0), ("_task_id", 1)):
        monkeypatch.setattr(TaskIdentity, attr, value)
    content = RecordDict({"arrays": ArrayRecord(r3d18), "config": ConfigRecord({"a": 1})})
    sent = Message(content=content, message_type="train", dst_node_id=7)

    def crafted_reply(msg):
        bad = RecordDict({"arrays": crafted([["w", "float32", [4], "numpy.ndarray", 64]])})
        return Message(bad, reply_to=msg)

    grid = OneReplyGrid(crafted_reply)
    (reply,) = send_and_receive(grid, [sent], timeout=5)
    assert packing.is_packed(grid.pushed[0]["arrays"])
    assert sent.content is content  # the caller's message is as it was
    assert reply.has_error() and reply.metadata.reply_to_message_id == "m0"
    assert "cannot be unpacked" in reply.error.reason

    grid = OneReplyGrid(lambda msg: Message(RecordDict(
        {"arrays": packing.pack(ArrayRecord(r3d18))}), reply_to=msg))
    (reply,) = send_and_receive(grid, [sent], timeout=5)
    assert reply.content["arrays"].object_id == ArrayRecord(r3d18).object_id

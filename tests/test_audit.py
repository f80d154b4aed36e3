"""The gate on every reply: logged by key names, blocked when anything else would leave."""

from __future__ import annotations

import json

import pytest
from flwr.app import ConfigRecord, Context, Message, Metadata, MetricRecord, RecordDict

from fedcmr.client.site.audit import DisallowedContent, audit_mod


def message(message_type: str, content: RecordDict) -> Message:
    meta = Metadata(run_id=1, message_id="m", src_node_id=1, dst_node_id=2,
                    reply_to_message_id="", group_id="", created_at=0.0, ttl=1e9,
                    message_type=message_type)
    return Message(metadata=meta, content=content)


def context(tmp_path) -> Context:
    node = {"site": "A", "data-path": str(tmp_path / "cache"), "out-dir": str(tmp_path)}
    return Context(run_id=1, node_id=2, node_config=node, state=RecordDict(), run_config={})


def test_allowed_reply_passes_and_is_logged_without_values(tmp_path):
    reply = message("query.describe", RecordDict({
        "site": ConfigRecord({"name": "A", "centres": "A"}),
        "metrics": MetricRecord({"frames": 10, "subjects": 5})}))
    out = audit_mod(message("query.describe", RecordDict()), context(tmp_path), lambda m, c: reply)
    assert out is reply
    (line,) = (tmp_path / "audit.jsonl").read_text().splitlines()
    logged = json.loads(line)
    assert logged["records"]["metrics"]["keys"] == ["frames", "subjects"]
    assert "10" not in json.dumps(logged["records"]) and logged["blocked"] == []


@pytest.mark.parametrize("content", [
    RecordDict({"site": ConfigRecord({"name": "A"}),
                "metrics": MetricRecord({"test-loss": 0.1, "test-scores": [0.2, 0.9]})}),
    RecordDict({"site": ConfigRecord({"name": "A", "subject": "patient021"}),
                "metrics": MetricRecord({"test-loss": 0.1})}),
    RecordDict({"extra": ConfigRecord({"x": 1})}),
])
def test_anything_else_is_blocked_and_logged(tmp_path, content):
    with pytest.raises(DisallowedContent, match="not allowed to leave"):
        audit_mod(message("query.test", RecordDict()), context(tmp_path),
                  lambda m, c: message("query.test", content))
    assert json.loads((tmp_path / "audit.jsonl").read_text())["blocked"]


def order_request(arrays: dict | None = None, order_text: str | None = None) -> Message:
    import numpy as np
    from flwr.app import Array, ArrayRecord

    from fedcmr.common.protocol import Order
    from fedcmr.common.run_config import RunConfig

    text = order_text if order_text is not None else Order(run=RunConfig(), fold=0)\
        .model_dump_json()
    content = RecordDict({"config": ConfigRecord({"order": text})})
    if arrays is not None:
        content["arrays"] = ArrayRecord({k: Array(np.asarray(v, np.float32))
                                         for k, v in arrays.items()})
    return message("query.validate", content)


def validate_reply(withheld: bool = False) -> Message:
    from fedcmr.common.protocol import Refusal, RefusalRule
    from fedcmr.common.replies import ScoreCounts, ValidateReply

    refusal = Refusal(rule=RefusalRule.MIN_EVAL_SUBJECTS, text="2 subjects") if withheld \
        else None
    reply = ValidateReply(site="A", val=ScoreCounts(loss=0.5, examples=4, neg=[1, 1],
                                                    pos=[1, 1]), withheld=refusal)
    return message("query.validate", reply.to_content())


def lines(tmp_path) -> list[dict]:
    return [json.loads(x) for x in (tmp_path / "audit.jsonl").read_text().splitlines()]


def test_crafted_models_under_the_same_order_are_told_apart_by_their_digest(tmp_path):
    """Attack: the same order sent with different models (a crafted one among them). The
    log's settings and shapes are identical; only the digest of what was received tells
    the requests apart, and the digest of what left names each reply."""
    for w in ([0.0, 0.0], [0.0, 1.0], [5.0, -3.0]):
        audit_mod(order_request({"w": w}), context(tmp_path), lambda m, c: validate_reply())
    logged = lines(tmp_path)
    received = [x["request"].pop("received") for x in logged]
    assert len(set(received)) == 3 and all(len(r) == 64 for r in received)
    for x in logged:  # without the digests (the defence off) the three lines are one
        x.pop("time")
    assert logged[0] == logged[1] == logged[2]
    assert logged[0]["released"] == validate_reply().content.object_id


def test_a_withheld_part_is_logged_with_its_rule(tmp_path):
    audit_mod(order_request(), context(tmp_path), lambda m, c: validate_reply(withheld=True))
    (line,) = lines(tmp_path)
    assert line["withheld"] == {"rule": "min_eval_subjects", "text": "2 subjects"}


@pytest.mark.parametrize("text", ["[1, 2]", "not json", "\"a string\""])
def test_a_malformed_order_is_logged_and_refused_before_any_handler(tmp_path, text):
    called = []
    out = audit_mod(order_request(order_text=text), context(tmp_path),
                    lambda m, c: called.append(m) or validate_reply())
    assert called == [] and out.has_error()
    assert "malformed request (the order is not a JSON object)" in out.error.reason
    (line,) = lines(tmp_path)
    assert line["request"]["malformed"] and line["error"] == out.error.reason

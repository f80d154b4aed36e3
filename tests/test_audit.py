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

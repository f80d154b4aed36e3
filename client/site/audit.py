"""The gate every reply passes on its way out of a hospital.

It writes a line per message to the site's audit log: what the coordinator asked (the
message kind, the run's settings, fold and round, never the model's values) next to what
went back (records and keys, array shapes, withheld parts; or the error reply's text), and
it refuses to send a reply that holds anything outside common.replies.REPLY_ALLOWED
(derived from the reply models). Error replies pass it too. Hospital IT can read the log to
see what the site was asked and what left it.
"""

from __future__ import annotations

import json
import time

from flwr.app import Context, Message

from fedcmr.common.node_config import NodeConfig
from fedcmr.common.protocol import CONFIG
from fedcmr.common.replies import ANY_KEY, REPLY_ALLOWED

AUDIT_FILE = "audit.jsonl"


class DisallowedContent(RuntimeError):
    pass


def describe_reply(message: Message) -> dict:
    content = message.content
    records: dict[str, dict] = {}
    for name, record in content.array_records.items():
        records[name] = {"type": "arrays", "keys": {k: list(v.shape) for k, v in record.items()}}
    for name, record in content.metric_records.items():
        records[name] = {"type": "metrics", "keys": sorted(record.keys())}
    for name, record in content.config_records.items():
        records[name] = {"type": "config", "keys": sorted(record.keys())}
    return records


def violations(message_type: str, records: dict[str, dict]) -> list[str]:
    allowed = REPLY_ALLOWED.get(message_type)
    if allowed is None:
        return [f"message type {message_type!r} has no allowed reply"]
    found = []
    for name, info in records.items():
        keys = allowed.get(name)
        if keys is None:
            found.append(f"record {name!r}")
        elif ANY_KEY not in keys:
            found += [f"{name}.{k}" for k in info["keys"] if k not in keys]
    return found


def describe_request(message: Message) -> dict:
    """What the coordinator asked: the order's settings (run config, fold, round, how many
    reference landmarks) and the shapes of any model it sent; no values."""
    content = message.content
    asked: dict = {"run_id": message.metadata.run_id,
                   "arrays": {n: len(r) for n, r in content.array_records.items()}}
    config = content.config_records.get(CONFIG)
    if config is not None and "order" in config:
        try:
            order = json.loads(str(config["order"]))
        except ValueError:
            order = {"unreadable": True}
        landmarks = order.pop("landmarks", None)
        order["landmarks"] = None if landmarks is None else len(landmarks)
        asked["order"] = order
    return asked


def audit_mod(message: Message, context: Context, call_next) -> Message:
    reply = call_next(message, context)
    line: dict = {"time": time.time(), "type": message.metadata.message_type,
                  "request": describe_request(message)}
    if reply.has_error():
        line.update(error=reply.error.reason, blocked=[])
        _write(context, line)
        return reply
    records = describe_reply(reply)
    bad = violations(message.metadata.message_type, records)
    withheld = reply.content.config_records.get("site", {}).get("withheld")
    line.update(records=records, blocked=bad, **({"withheld": withheld} if withheld else {}))
    _write(context, line)
    if bad:
        raise DisallowedContent(f"reply blocked at the site: not allowed to leave: {bad}")
    return reply


def _write(context: Context, line: dict) -> None:
    out_dir = NodeConfig.out_dir_of(context.node_config, context.run_config)
    if out_dir:
        path = out_dir / AUDIT_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as handle:
            handle.write(json.dumps(line) + "\n")

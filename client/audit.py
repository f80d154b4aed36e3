"""The gate every reply passes on its way out of a hospital.

It writes a line per reply to the site's audit log (what records and keys, array shapes,
never values) and refuses to send a reply that holds anything outside
common.replies.REPLY_ALLOWED (derived from the reply models). Hospital IT can read the log
to see what left the site.
"""

from __future__ import annotations

import json
import time

from flwr.app import Context, Message

from fedcmr.common.node_config import NodeConfig
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


def audit_mod(message: Message, context: Context, call_next) -> Message:
    reply = call_next(message, context)
    if reply.has_error():
        return reply
    records = describe_reply(reply)
    bad = violations(message.metadata.message_type, records)
    out_dir = NodeConfig.out_dir_of(context.node_config, context.run_config)
    if out_dir:
        path = out_dir / AUDIT_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        line = {"time": time.time(), "type": message.metadata.message_type,
                "records": records, "blocked": bad}
        with path.open("a") as handle:
            handle.write(json.dumps(line) + "\n")
    if bad:
        raise DisallowedContent(f"reply blocked at the site: not allowed to leave: {bad}")
    return reply

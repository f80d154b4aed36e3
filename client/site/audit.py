"""The gate every reply passes on its way out of a hospital.

It writes a line per message to the site's audit log: what the coordinator asked (the
message kind, the run's settings, fold and round, never the model's values) with a digest
of what it sent (`received`: Flower's content address of the request, over the order and
every array of the model), next to what went back (records and keys, array shapes, withheld
parts, and `released`: the content address of the reply as it leaves, its arrays packed
into one object (common/packing.py), the same id the SuperLink stores it under; or the
error reply's text), and it refuses to send a reply that holds anything
outside common.replies.REPLY_ALLOWED (derived from the reply models). Two requests with the
same settings but other models have other `received` digests. A request whose order cannot
be read (not JSON, not an object) is logged and refused here, before any handler sees it.
Error replies pass it too. Hospital IT can read the log to see what the site was asked and
what left it.
"""

from __future__ import annotations

import json
import time

from flwr.app import Context, Error, Message
from flwr.common.constant import ErrorCode

from fedcmr.common.node_config import NodeConfig
from fedcmr.common.packing import PackingError, pack_message, unpack_message
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
    reference landmarks), the shapes of any model it sent (no values) and the digest of
    it all (`received`). An order that cannot be read says why (`malformed`)."""
    content = message.content
    asked: dict = {"run_id": message.metadata.run_id,
                   "arrays": {n: len(r) for n, r in content.array_records.items()},
                   "received": digest(message)}
    config = content.config_records.get(CONFIG)
    if config is not None and "order" in config:
        try:
            order = json.loads(str(config["order"]))
        except ValueError:
            order = None
        if not isinstance(order, dict):
            asked["malformed"] = "the order is not a JSON object"
            return asked
        landmarks = order.pop("landmarks", None)
        order["landmarks"] = len(landmarks) if isinstance(landmarks, list) else landmarks
        asked["order"] = order
    return asked


def digest(message: Message) -> str | None:
    """Flower's content address of the message's content (sha256 over its records, each
    array's bytes included), the id the SuperLink stores it under; None where there is
    none (a message without content)."""
    try:
        return message.content.object_id
    except (AttributeError, ValueError):  # an error reply carries no content
        return None


def withheld_parts(reply: Message) -> dict | None:
    """The reply's withheld part, as its typed Refusal travels (rule and text)."""
    site = reply.content.config_records.get("site", {})
    found = {k.removeprefix("withheld-"): site[k] for k in site
             if k.startswith("withheld-")}
    return found or None


def audit_mod(message: Message, context: Context, call_next) -> Message:
    try:  # the model arrives as one object (common/packing.py)
        message = unpack_message(message)
        unreadable = None
    except PackingError as err:
        unreadable = f"its arrays cannot be unpacked ({err})"
    line: dict = {"time": time.time(), "type": message.metadata.message_type,
                  "request": describe_request(message)}
    if unreadable:
        line["request"]["malformed"] = unreadable
    if "malformed" in line["request"]:  # refused here: no handler sees it
        reason = (f"{message.metadata.message_type} refused: malformed request "
                  f"({line['request']['malformed']})")
        line.update(error=reason, blocked=[])
        _write(context, line)
        return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason),
                       reply_to=message)
    reply = call_next(message, context)
    if reply.has_error():
        line.update(error=reply.error.reason, blocked=[])
        _write(context, line)
        return reply
    records = describe_reply(reply)
    bad = violations(message.metadata.message_type, records)
    withheld = withheld_parts(reply)
    reply = pack_message(reply)  # as it leaves: `released` is the id the SuperLink keeps
    line.update(records=records, blocked=bad, released=digest(reply),
                **({"withheld": withheld} if withheld else {}))
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

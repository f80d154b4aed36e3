"""Every training reply is checked before it is aggregated; a bad one is rejected, logged
with its site and the reason, and the round goes on without it.

Rejected: a reply that is not a TrainReply; a reply to another round; n_k not positive or
larger than the frames the site declared at discovery; missing or extra tensors; a tensor
of another shape or dtype than the global model's; NaN or Inf anywhere; and an update whose
size is far outside the others'. That last rule is robust to the outlier itself: with at
least three updates, one whose norm ||w_k - w|| exceeds the median norm by more than
NORM_MADS median absolute deviations is rejected, the deviation floored at NORM_FLOOR of the
median: near-equal updates must not make every small difference an outlier, and honest
sites of different sizes take steps of different lengths, so nothing under 3.5 times the
median norm is ever rejected. With four hospitals the median of four norms still stands
when one site goes wrong.

An update that travels encoded (update-encoding fp16-delta: common/update_codec.py) is
decoded against the global model first, and every rule judges the decoded weights; one
encoded otherwise than the run asked is rejected. The bytes each site's update took are
logged once per round.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
from flwr.app import Array, ArrayRecord, Message
from pydantic import ValidationError

from fedcmr.common.protocol import ARRAYS
from fedcmr.common.replies import TrainReply
from fedcmr.common.run_config import UpdateEncoding
from fedcmr.common.update_codec import (
    EncodingError,
    decode,
    record_encoding,
    update_bytes,
    whole_tensors,
)

log = logging.getLogger("fedcmr.server")

NORM_MADS = 5.0
NORM_FLOOR = 0.5
#: The norm rule needs this many updates to tell an outlier from the rest.
NORM_MIN_UPDATES = 3


@dataclass(frozen=True)
class Rejection:
    node: int
    site: str
    reason: str


def as_numpy(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in record.items()}


def reply_problem(reply: TrainReply, arrays: Mapping[str, np.ndarray],
                  reference: Mapping[str, np.ndarray], declared_frames: int | None,
                  server_round: int) -> str | None:
    """Why this reply, its weights decoded to `arrays`, must not be aggregated (None: it
    may)."""
    if reply.server_round != server_round:
        return f"a reply to round {reply.server_round}, not to round {server_round}"
    if reply.num_examples <= 0:
        return f"n_k = {reply.num_examples}: no training frames"
    if declared_frames is not None and reply.num_examples > declared_frames:
        return (f"n_k = {reply.num_examples} exceeds the {declared_frames} frames the site "
                "declared at discovery")
    missing = sorted(set(reference) - set(arrays))
    extra = sorted(set(arrays) - set(reference))
    if missing or extra:
        return f"tensors missing {missing[:3]}, extra {extra[:3]}"
    for key, want in reference.items():
        got = arrays[key]
        if got.shape != want.shape or got.dtype != want.dtype:
            return (f"tensor {key} is {got.dtype}{list(got.shape)}, the model's is "
                    f"{want.dtype}{list(want.shape)}")
        if np.issubdtype(got.dtype, np.floating) and not np.isfinite(got).all():
            return f"tensor {key} holds NaN or Inf"
    return None


def update_norm(arrays: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray]
                ) -> float:
    """||w_k - w|| over the floating-point tensors."""
    total = 0.0
    for key, want in reference.items():
        if np.issubdtype(want.dtype, np.floating):
            diff = arrays[key].astype(np.float64) - want.astype(np.float64)
            total += float(np.square(diff).sum())
    return total ** 0.5


def norm_outliers(norms: Mapping[int, float]) -> dict[int, str]:
    """node -> reason, for updates far larger than the others (see the module docstring)."""
    if len(norms) < NORM_MIN_UPDATES:
        return {}
    values = np.array(list(norms.values()))
    median = float(np.median(values))
    spread = max(float(np.median(np.abs(values - median))), NORM_FLOOR * median, 1e-12)
    limit = median + NORM_MADS * spread
    return {node: f"update norm {n:.3g} is far outside the others' (median {median:.3g}, "
                  f"limit {limit:.3g})" for node, n in norms.items() if n > limit}


@dataclass
class Screened:
    """A round's replies after the update checks: the messages that may be aggregated
    (error replies among them, untouched; the weights of the others decoded, so that the
    strategy does not decode them again), each accepted reply parsed once (by node id, its
    arrays as they arrived: rounds.csv counts their bytes), and the rejected ones."""

    messages: list[Message]
    replies: dict[int, TrainReply]
    rejected: list[Rejection]


def screen(replies: Iterable[Message], global_arrays: ArrayRecord,
           declared_frames: Mapping[int, int], names: Mapping[int, str],
           server_round: int, encoding: UpdateEncoding = "fp32") -> Screened:
    """The replies that may be aggregated, and the rejected ones with their reasons.
    Error replies pass through untouched (the caller reports them). `encoding`: how the run
    asked the sites to send their weights; each reply is parsed and decoded here, once."""
    reference = as_numpy(global_arrays)
    passed: list[Message] = []
    parsed: dict[int, TrainReply] = {}
    decoded: dict[int, dict[str, np.ndarray]] = {}
    rejected: list[Rejection] = []
    sizes: dict[str, int] = {}
    for message in replies:
        if message.has_error():
            passed.append(message)
            continue
        node = message.metadata.src_node_id
        site = names.get(node, f"node {node}")
        try:
            reply = TrainReply.from_message(message)
        except ValidationError as err:
            rejected.append(Rejection(node, site, f"not a training reply ({err.errors()[0]})"))
            continue
        sizes[site] = update_bytes(reply.arrays)
        try:
            arrays = decode(reply.arrays, reference, encoding)
        except EncodingError as err:
            rejected.append(Rejection(node, site, str(err)))
            continue
        problem = reply_problem(reply, arrays, reference, declared_frames.get(node),
                                server_round)
        if problem:
            rejected.append(Rejection(node, site, problem))
            continue
        whole = whole_tensors(reply.arrays, reference)
        if whole:
            log.warning("round %d: site %s sent %d tensor(s) whole in fp32, their change "
                        "being beyond float16's range: %s", server_round, site, len(whole),
                        ", ".join(whole[:5]))
        decoded[node] = arrays
        parsed[node] = reply
        if record_encoding(reply.arrays) != "fp32":  # the strategy aggregates these
            message.content[ARRAYS] = ArrayRecord({k: Array(v) for k, v in arrays.items()})
        passed.append(message)
    outliers = norm_outliers({n: update_norm(a, reference) for n, a in decoded.items()})
    rejected += [Rejection(node, names.get(node, f"node {node}"), why)
                 for node, why in outliers.items()]
    passed = [m for m in passed if m.has_error() or m.metadata.src_node_id not in outliers]
    if sizes:
        log.info("round %d: update bytes per site (%s): %s", server_round, encoding,
                 ", ".join(f"{site} {n / 1e6:.1f} MB" for site, n in sorted(sizes.items())))
    for r in rejected:
        log.error("round %d: rejected the update of site %s: %s", server_round, r.site, r.reason)
    kept = {m.metadata.src_node_id for m in passed if not m.has_error()}
    return Screened(passed, {n: r for n, r in parsed.items() if n in kept}, rejected)


def decoded_message(message: Message, reference: Mapping[str, np.ndarray] | None,
                    encoding: UpdateEncoding) -> Message:
    """The reply, its weights put in fresh records: decoded against `reference` (deltas),
    or the same arrays (fp32; also a reply the update checks decoded already: `screen`).
    Aggregation may consume records (Flower's median pops their arrays); the records the
    reply arrived with stay whole for its round's row."""
    if message.has_error():
        return message
    content = message.content
    for name, record in list(content.array_records.items()):
        if encoding != "fp32" and record_encoding(record) != "fp32":
            record = {k: Array(v) for k, v in decode(record, reference or {}, encoding).items()}
        content[name] = ArrayRecord(dict(record))
    return message


def integer_tensors(message: Message) -> dict[str, np.ndarray]:
    """The integer tensors of a reply's weights (BatchNorm's num_batches_tracked)."""
    record = next(iter(message.content.array_records.values()), ArrayRecord())
    return {k: v.numpy().copy() for k, v in record.items()
            if np.issubdtype(v.numpy().dtype, np.integer)}


def with_tensors(aggregate: ArrayRecord, tensors: Mapping[str, np.ndarray]) -> ArrayRecord:
    """The aggregate with these tensors put back as they are. Integer buffers are counts,
    not weights: averaging would turn them into floats, so the caller keeps the first
    accepted reply's (replies come in a fixed order), in its own dtype."""
    out = {**as_numpy(aggregate), **tensors}
    return ArrayRecord({k: Array(np.asarray(v)) for k, v in out.items()})

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
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
from flwr.app import Array, ArrayRecord, Message
from pydantic import ValidationError

from fedcmr.common.replies import TrainReply

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


def reply_problem(reply: TrainReply, reference: Mapping[str, np.ndarray],
                  declared_frames: int | None, server_round: int) -> str | None:
    """Why this reply must not be aggregated (None: it may)."""
    if reply.server_round != server_round:
        return f"a reply to round {reply.server_round}, not to round {server_round}"
    if reply.num_examples <= 0:
        return f"n_k = {reply.num_examples}: no training frames"
    if declared_frames is not None and reply.num_examples > declared_frames:
        return (f"n_k = {reply.num_examples} exceeds the {declared_frames} frames the site "
                "declared at discovery")
    arrays = as_numpy(reply.arrays)
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


def update_norm(reply: TrainReply, reference: Mapping[str, np.ndarray]) -> float:
    """||w_k - w|| over the floating-point tensors."""
    arrays = as_numpy(reply.arrays)
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


def screen(replies: Iterable[Message], global_arrays: ArrayRecord,
           declared_frames: Mapping[int, int], names: Mapping[int, str],
           server_round: int) -> tuple[list[Message], list[Rejection]]:
    """The replies that may be aggregated, and the rejected ones with their reasons.
    Error replies pass through untouched (the caller reports them)."""
    reference = as_numpy(global_arrays)
    passed: list[Message] = []
    parsed: dict[int, TrainReply] = {}
    rejected: list[Rejection] = []
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
        problem = reply_problem(reply, reference, declared_frames.get(node), server_round)
        if problem:
            rejected.append(Rejection(node, site, problem))
            continue
        parsed[node] = reply
        passed.append(message)
    outliers = norm_outliers({n: update_norm(r, reference) for n, r in parsed.items()})
    rejected += [Rejection(node, names.get(node, f"node {node}"), why)
                 for node, why in outliers.items()]
    passed = [m for m in passed if m.has_error() or m.metadata.src_node_id not in outliers]
    for r in rejected:
        log.error("round %d: rejected the update of site %s: %s", server_round, r.site, r.reason)
    return passed, rejected


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

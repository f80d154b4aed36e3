"""The coordinator's audit trail: for every aggregated round, which sites contributed with
which n_k and weight, which updates were rejected and why, which sites were away, and the
SHA-256 of the global model before and after (OUT/audit.jsonl, one JSON object per round),
plus every loss and return of a site (OUT/site_events.jsonl)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from flwr.app import ArrayRecord

from fedcmr.common.atomic import atomic_open
from fedcmr.common.digests import state_digest


def model_hash(arrays: ArrayRecord) -> str:
    """SHA-256 over the tensors' names, dtypes, shapes and bytes, in name order: equal
    hashes mean bit-identical models (the whole digest; a site digests what it receives the
    same way, common.digests.state_digest)."""
    return state_digest({key: arrays[key].numpy() for key in arrays}, length=64)


def write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    with atomic_open(path) as handle:
        for row in rows:
            handle.write(json.dumps(row, sort_keys=True) + "\n")

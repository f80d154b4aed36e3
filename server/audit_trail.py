"""The coordinator's audit trail: for every aggregated round, which sites contributed with
which n_k and weight, which updates were rejected and why, which sites were away, and the
SHA-256 of the global model before and after (OUT/audit.jsonl, one JSON object per round),
plus every loss and return of a site (OUT/site_events.jsonl)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

from flwr.app import ArrayRecord

from fedcmr.common.atomic import atomic_open


def model_hash(arrays: ArrayRecord) -> str:
    """SHA-256 over the tensors' names, dtypes, shapes and bytes, in name order: equal
    hashes mean bit-identical models."""
    digest = hashlib.sha256()
    for key in sorted(arrays.keys()):
        value = arrays[key].numpy()
        digest.update(f"{key}|{value.dtype.str}|{value.shape}|".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    with atomic_open(path) as handle:
        for row in rows:
            handle.write(json.dumps(row, sort_keys=True) + "\n")

"""Digests, one helper each: the short hex digest that names a thing (a model definition,
a run's settings, a cache's preprocessing, a study cell) and a file's SHA-256."""

from __future__ import annotations

import hashlib
from pathlib import Path

#: A short digest's hex digits (a cache's preprocessing key takes 20, a study cell's
#: name 10, as they always have: changing either would orphan existing caches and cells).
DIGEST_LENGTH = 16


def short_digest(data: str | bytes, length: int = DIGEST_LENGTH) -> str:
    """The first `length` hex digits of the SHA-256 of `data` (text as UTF-8)."""
    raw = data.encode() if isinstance(data, str) else data
    return hashlib.sha256(raw).hexdigest()[:length]


def state_digest(state, length: int = DIGEST_LENGTH) -> str:
    """The digest of a model's arrays (a state dict of tensors or arrays): every key, dtype,
    shape and byte, in key order. Two models differ in digest unless they are equal."""
    import numpy as np

    h = hashlib.sha256()
    for key in sorted(state):
        value = state[key]
        # tobytes() is C order whatever the layout (np.ascontiguousarray would make a 0-d
        # count 1-d and change its shape's text)
        array = value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)
        h.update(f"{key}|{array.dtype.str}|{array.shape}|".encode())
        h.update(array.tobytes())
    return h.hexdigest()[:length]


def file_sha256(path: Path) -> str:
    """The whole SHA-256 of a file, read in blocks of 1 MiB."""
    h = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()

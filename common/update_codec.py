"""How a site's trained weights travel back in a train reply (RunConfig.update_encoding).

- "fp32": the state dict as it is: today's record, bit for bit.
- "fp16-delta": every floating-point tensor as float16 of (trained - received), the
  difference from the global model the site received this round, computed in the tensor's
  own precision; other tensors (BatchNorm's num_batches_tracked) as they are. About half
  the bytes. A difference float16 cannot hold (beyond +-65504, or NaN/Inf) is never sent
  as inf: that tensor travels whole, in its own float32 (its dtype in the record says so),
  and the server's update checks see exactly what the site computed.

The global model the server sends stays fp32. A delta record names its encoding under
ENCODING_KEY (a key no state dict can hold: module names have no dashes); an fp32 record
names none. `decode` refuses a record whose encoding is not the one the run asked, so the
two are never mixed in a round.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord

from fedcmr.common.run_config import UpdateEncoding

log = logging.getLogger(__name__)

ENCODING_KEY = "update-encoding"
FP32: UpdateEncoding = "fp32"
FP16_DELTA: UpdateEncoding = "fp16-delta"
#: The largest magnitude float16 holds.
FP16_MAX = float(np.finfo(np.float16).max)


class EncodingError(ValueError):
    """A record that cannot be decoded against the model and encoding the run asked for."""


def _numpy(value: Any) -> np.ndarray:
    """A torch tensor (as ArrayRecord would convert it) or array-like, as numpy."""
    if hasattr(value, "detach"):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def _floating(array: np.ndarray) -> bool:
    return np.issubdtype(array.dtype, np.floating)


def encode(state: Mapping[str, Any], reference: Mapping[str, Any],
           encoding: UpdateEncoding) -> ArrayRecord:
    """The record a site sends for its trained `state`, given the `reference` (the global
    model it received). Tensors fp16-delta sends whole in float32 are logged by name."""
    if encoding == FP32:
        return ArrayRecord({k: Array(_numpy(v)) for k, v in state.items()})
    if encoding != FP16_DELTA:
        raise EncodingError(f"unknown update encoding {encoding!r}")
    out: dict[str, Array] = {}
    whole: list[str] = []
    for key, value in state.items():
        weights = _numpy(value)
        if not _floating(weights) or key not in reference:
            out[key] = Array(weights)
            continue
        delta = np.asarray(weights - _numpy(reference[key]).astype(weights.dtype))
        if np.isfinite(delta).all() and float(np.abs(delta).max(initial=0.0)) <= FP16_MAX:
            out[key] = Array(delta.astype(np.float16))
        else:
            out[key] = Array(weights)
            whole.append(key)
    if whole:
        log.warning("update encoding %s: %d tensor(s) sent whole in %s, their difference "
                    "being beyond float16's range: %s", encoding, len(whole),
                    _numpy(state[whole[0]]).dtype, ", ".join(whole[:5]))
    out[ENCODING_KEY] = Array(np.array(encoding))
    return ArrayRecord(out)


def record_encoding(record: ArrayRecord) -> str:
    """The encoding a record names (fp32 where it names none)."""
    if ENCODING_KEY not in record:
        return FP32
    try:
        return str(record[ENCODING_KEY].numpy())
    except (TypeError, ValueError) as err:
        raise EncodingError(f"unreadable {ENCODING_KEY} entry ({err})") from err


def decode(record: ArrayRecord, reference: Mapping[str, np.ndarray],
           encoding: UpdateEncoding) -> dict[str, np.ndarray]:
    """The site's trained weights from its record: each float16 delta added to the
    `reference` in the reference's own precision, every other tensor as it came (the update
    checks judge its keys, shapes, dtypes and values). EncodingError when the record's
    encoding is not `encoding`, or a delta does not fit the model's tensor."""
    sent = record_encoding(record)
    if sent != encoding:
        raise EncodingError(f"the update is encoded {sent}; this run asked for {encoding} "
                            f"(update-encoding)")
    out: dict[str, np.ndarray] = {}
    for key, array in record.items():
        if key == ENCODING_KEY:
            continue
        value = array.numpy()
        if encoding == FP16_DELTA and value.dtype == np.float16:
            want = reference.get(key)
            if want is None or not _floating(want) or want.shape != value.shape:
                model = "none" if want is None else f"{want.dtype}{list(want.shape)}"
                raise EncodingError(f"tensor {key} is a float16{list(value.shape)} delta; "
                                    f"the model's tensor is {model}")
            value = want + value.astype(want.dtype)
        out[key] = value
    return out


def whole_tensors(record: ArrayRecord, reference: Mapping[str, np.ndarray]) -> list[str]:
    """The floating-point tensors a delta record carries whole (their difference was beyond
    float16's range); none in an fp32 record."""
    if record_encoding(record) == FP32:
        return []
    return [k for k, a in record.items() if k in reference and _floating(reference[k])
            and a.dtype != "float16"]


def update_bytes(record: ArrayRecord) -> int:
    """The bytes a record's arrays take on the wire: the sum of their serialised data."""
    return sum(len(array.data) for array in record.values())

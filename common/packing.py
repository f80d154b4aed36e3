"""A model's arrays as one object on the wire.

Flower 1.42 moves a message as content-addressed objects: one per Array (r3d_18 has 122,
every weight, bias and BatchNorm statistic), each cut in 5 MB chunks, and every object is
hashed and fetched in its own request at each hop. `pack` turns an ArrayRecord of many
arrays into two: PACKED, the serialised arrays one after another (each exactly the bytes
its own Array holds), and LAYOUT, the JSON list of what they are ([key, dtype, shape,
stype, bytes] each). `unpack` gives back Arrays equal byte for byte to the ones packed, so
a packed record's arrays have the same content addresses (and the same digests in the audit
log and the audit trail) as the record before packing.

Both sides pack what they send and unpack what they receive at the one place a message
crosses: the coordinator in `server.roster.send_and_receive`, a site in its audit gate
(client/site/audit.py). Nothing between those two places sees a packed record. A record
with one array stays as it is; a packed record names itself by its LAYOUT key (no state
dict key has a dash). `unpack` checks the layout against the bytes and raises PackingError
naming what does not fit, so a damaged or crafted record is refused, not misread.
"""

from __future__ import annotations

import json
from typing import Any

from flwr.app import Array, ArrayRecord, Message, RecordDict

#: The keys of a packed record's two arrays.
PACKED, LAYOUT = "packed-arrays", "packed-layout"
#: Their serialisation types (not "numpy.ndarray": Array.numpy() refuses them, so that a
#: packed record cannot be read as if it were a model).
PACKED_STYPE, LAYOUT_STYPE = "fedcmr.packed", "fedcmr.layout"


class PackingError(ValueError):
    """A packed record whose layout does not fit its bytes."""


def is_packed(record: ArrayRecord) -> bool:
    return LAYOUT in record


def pack(record: ArrayRecord) -> ArrayRecord:
    """`record` as a PACKED and a LAYOUT array; a record of at most one array as it is."""
    if len(record) <= 1 or is_packed(record):
        return record
    layout: list[list[Any]] = []
    for key, array in record.items():
        layout.append([key, array.dtype, list(array.shape), array.stype, len(array.data)])
    blob = b"".join(array.data for array in record.values())
    text = json.dumps(layout, separators=(",", ":")).encode()
    return ArrayRecord({
        PACKED: Array(dtype="uint8", shape=(len(blob),), stype=PACKED_STYPE, data=blob),
        LAYOUT: Array(dtype="uint8", shape=(len(text),), stype=LAYOUT_STYPE, data=text)},
        keep_input=False)


def _layout(record: ArrayRecord) -> list[tuple[str, str, tuple[int, ...], str, int]]:
    if set(record) != {PACKED, LAYOUT}:
        raise PackingError(f"a packed record holds {PACKED} and {LAYOUT} only, not "
                           f"{sorted(set(record) - {PACKED, LAYOUT})}")
    try:
        rows = json.loads(record[LAYOUT].data)
    except ValueError as err:
        raise PackingError(f"{LAYOUT} is not JSON ({err})") from None
    if not isinstance(rows, list):
        raise PackingError(f"{LAYOUT} is not a list")
    out, seen = [], set()
    for row in rows:
        ok = (isinstance(row, list) and len(row) == 5 and isinstance(row[0], str)
              and isinstance(row[1], str) and isinstance(row[2], list)
              and all(isinstance(n, int) and n >= 0 for n in row[2])
              and isinstance(row[3], str) and isinstance(row[4], int) and row[4] >= 0)
        if not ok:
            raise PackingError(f"{LAYOUT} entry {str(row)[:120]} is not "
                               "[key, dtype, shape, stype, bytes]")
        if row[0] in seen or row[0] in (PACKED, LAYOUT):
            raise PackingError(f"{LAYOUT} names {row[0]!r} twice or as a packing key")
        seen.add(row[0])
        out.append((row[0], row[1], tuple(row[2]), row[3], row[4]))
    return out


def unpack(record: ArrayRecord) -> ArrayRecord:
    """The record `pack` was given (array for array, byte for byte); an unpacked record as
    it is. PackingError when the layout does not account for the packed bytes exactly."""
    if not is_packed(record):
        return record
    layout = _layout(record)
    blob = record[PACKED].data
    if sum(row[4] for row in layout) != len(blob):
        raise PackingError(f"{LAYOUT} accounts for {sum(row[4] for row in layout)} bytes; "
                           f"{PACKED} holds {len(blob)}")
    view, arrays, start = memoryview(blob), {}, 0
    for key, dtype, shape, stype, size in layout:
        arrays[key] = Array(dtype=dtype, shape=shape, stype=stype,
                            data=bytes(view[start:start + size]))
        start += size
    return ArrayRecord(arrays, keep_input=False)


def _map_arrays(content: RecordDict, step) -> RecordDict:
    if not any(True for _ in content.array_records):
        return content
    out = RecordDict()
    for name, record in content.items():
        out[name] = step(record) if isinstance(record, ArrayRecord) else record
    return out


def pack_content(content: RecordDict) -> RecordDict:
    return _map_arrays(content, pack)


def unpack_content(content: RecordDict) -> RecordDict:
    return _map_arrays(content, unpack)


def _with_content(message: Message, content: RecordDict) -> Message:
    if content is not message.content:
        message.content = content
    return message


def pack_message(message: Message) -> Message:
    """`message` with every ArrayRecord of its content packed (an error message as it is)."""
    if message.has_error():
        return message
    return _with_content(message, pack_content(message.content))


def unpack_message(message: Message) -> Message:
    """`message` with every packed ArrayRecord unpacked; PackingError as `unpack`."""
    if message.has_error():
        return message
    return _with_content(message, unpack_content(message.content))

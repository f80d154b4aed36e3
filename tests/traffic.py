"""What a hospital sent, as a test can search it: the relay's recording (tests/relay.py) of
plaintext gRPC, HTTP/2 frames reassembled into each stream's data so that a value split
across two frames is still found."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, PADDED = 0x0, 0x8


def stream_data(raw: bytes) -> dict[int, bytes]:
    """Each HTTP/2 stream's DATA payloads of one connection, in order (padding removed)."""
    if not raw.startswith(PREFACE):
        raise ValueError("not a cleartext HTTP/2 connection (TLS, or not gRPC)")
    streams: dict[int, bytearray] = defaultdict(bytearray)
    at = len(PREFACE)
    while at + 9 <= len(raw):
        length = int.from_bytes(raw[at:at + 3], "big")
        kind, flags = raw[at + 3], raw[at + 4]
        stream = int.from_bytes(raw[at + 5:at + 9], "big") & 0x7FFFFFFF
        payload = raw[at + 9:at + 9 + length]
        if kind == DATA:
            if flags & PADDED:
                payload = payload[1:len(payload) - payload[0]]
            streams[stream] += payload
        at += 9 + length
    return {k: bytes(v) for k, v in streams.items()}


def sent_by_site(folder: Path) -> list[bytes]:
    """Every connection's stream data (raw bytes too: headers and all)."""
    found = []
    for path in sorted(folder.glob("conn-*.bin")):
        raw = path.read_bytes()
        found.append(raw)
        found += list(stream_data(raw).values())
    return found

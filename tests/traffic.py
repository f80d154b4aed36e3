"""What a hospital sent, as a test can search it: the relay's recording (tests/relay.py) of
its plaintext connections to the SuperLink, split into message bodies. fedcmr's SuperNodes
speak Flower's Fleet API over HTTP/1.1 (`POST /v1/fleet/...`, protobuf bodies); gRPC over
cleartext HTTP/2 is reassembled from its DATA frames, so that a value split across two
frames is still found. A compressed body would hide its content: it fails the parse."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, PADDED = 0x0, 0x8


def http1_bodies(raw: bytes) -> list[bytes]:
    """The bodies of one connection's HTTP/1.1 requests (Content-Length framing)."""
    bodies, at = [], 0
    while at < len(raw):
        end = raw.find(b"\r\n\r\n", at)
        if end < 0:
            raise ValueError(f"a request without the end of its headers at byte {at}")
        headers = dict(line.split(b":", 1) for line in raw[at:end].split(b"\r\n")[1:])
        headers = {k.strip().lower(): v.strip().lower() for k, v in headers.items()}
        if b"content-encoding" in headers or b"transfer-encoding" in headers:
            raise ValueError(f"an encoded body ({headers}): its content cannot be searched")
        length = int(headers.get(b"content-length", b"0"))
        bodies.append(raw[end + 4:end + 4 + length])
        at = end + 4 + length
    return bodies


def http2_streams(raw: bytes) -> list[bytes]:
    """Each HTTP/2 stream's DATA payloads of one connection, in order (padding removed)."""
    streams: dict[int, bytearray] = defaultdict(bytearray)
    at = len(H2_PREFACE)
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
    return [bytes(v) for v in streams.values()]


def sent_by_site(folder: Path) -> list[bytes]:
    """Every recorded connection's message bodies, and the raw bytes (headers and all)."""
    found = []
    for path in sorted(folder.glob("conn-*.bin")):
        raw = path.read_bytes()
        found.append(raw)
        found += http2_streams(raw) if raw.startswith(H2_PREFACE) else http1_bodies(raw)
    return found

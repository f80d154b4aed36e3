"""Where the time of a message exchange goes, for benchmarks/round_overhead.py: with
$FEDCMR_TIMINGS set to a folder, the coordinator notes when it sent each message and when
its reply came back, and each site's ClientApp when its process started, when the app
was imported, when the message reached it, how long the work took and when the reply left.
Both sides append JSON lines to their own file in that folder; the benchmark joins them on
the message id. Unset (always, outside benchmarks), nothing is written.

With it set, each SuperNode also notes when each message reached it and when it pushed
the reply (support/flower_patches.py `trace_supernode`), so that an exchange is split by
times each process read off its own clock, at every hop, rather than by differences of the
coordinator's two. The benchmark runs them on one machine, where those clocks agree.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

TIMINGS_ENV = "FEDCMR_TIMINGS"
#: When this module was imported: in a ClientApp, with the app (client/site/client_app.py).
IMPORTED = time.time()


def _folder() -> Path | None:
    value = os.environ.get(TIMINGS_ENV)
    return Path(value) if value else None


def process_started() -> float | None:
    """This process's start (epoch seconds, 10 ms resolution): its age from Linux's
    /proc (ticks since boot) against the boot-time clock, taken from now."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return None
    return time.time() - age


def append(side: str, row: dict) -> None:
    """One JSON line in FOLDER/SIDE-PID.jsonl (nothing when $FEDCMR_TIMINGS is unset)."""
    folder = _folder()
    if folder is None:
        return
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / f"{side}-{os.getpid()}.jsonl").open("a") as handle:
        handle.write(json.dumps(row) + "\n")


def enabled() -> bool:
    return _folder() is not None


def supernode_event(row: dict) -> None:
    """A SuperNode's view of one message (support/flower_patches.py `trace_supernode`)."""
    append("supernode", row)


def record_exchange(message, entered: float, left: float, handler_s: float | None) -> None:
    """A site's view of one message (`timing_mod`)."""
    if _folder() is None:
        return
    append("site", {"message_id": message.metadata.message_id,
                    "type": message.metadata.message_type, "process_started": process_started(),
                    "imported": IMPORTED, "entered": entered, "left": left,
                    "handler_s": handler_s, "bytes_in": content_bytes(message)})


def timing_mod(message, context, call_next):
    """A ClientApp mod (client/site/client_app.py): the handler's reply, its times noted
    where $FEDCMR_TIMINGS asks for them."""
    entered, started = time.time(), time.perf_counter()
    reply = call_next(message, context)
    record_exchange(message, entered, time.time(), time.perf_counter() - started)
    return reply


def record_sent(messages, pushed: float, replies: dict[str, tuple[float, int]],
                push_done: float | None = None) -> None:
    """The coordinator's view of one exchange: when it began to push, when the push was
    done, when each reply came and the bytes of arrays each way."""
    if _folder() is None:
        return
    for message in messages:
        replied, back = replies.get(message.metadata.message_id, (None, None))
        append("server", {"message_id": message.metadata.message_id,
                          "type": message.metadata.message_type, "pushed": pushed,
                          "push_done": push_done,
                          "replied": replied, "bytes_out": content_bytes(message),
                          "bytes_back": back})


def content_bytes(message) -> int:
    """The bytes of the arrays a message carries."""
    if not message.has_content():
        return 0
    return sum(len(array.data) for record in message.content.array_records.values()
               for array in record.values())

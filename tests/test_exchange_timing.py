"""Each side's view of a message exchange (support/exchange_timing.py) and how
benchmarks/round_overhead.py joins them: each part of an exchange is the span it names, and
the parts add up to its total."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedcmr.support import exchange_timing

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def identity(monkeypatch):
    for attr, value in (("_run_id", 1), ("_node_id", 0), ("_task_id", 1)):
        monkeypatch.setattr(TaskIdentity, attr, value)


def benchmark():
    spec = importlib.util.spec_from_file_location("round_overhead",
                                                  REPO / "benchmarks" / "round_overhead.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def message(mid: str, arrays: bool) -> Message:
    content = RecordDict({"config": ConfigRecord({"a": 1})})
    if arrays:
        content["arrays"] = ArrayRecord({"w": Array(np.zeros((10, 10), np.float32))})
    msg = Message(content=content, message_type="train", dst_node_id=5)
    msg.metadata.__dict__["_message_id"] = mid
    return msg


def test_nothing_is_written_without_the_variable(tmp_path, monkeypatch, identity):
    monkeypatch.delenv(exchange_timing.TIMINGS_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    exchange_timing.record_sent([message("m1", True)], time.time(), {})
    exchange_timing.record_exchange(message("m1", True), 1.0, 2.0, 0.5)
    assert list(tmp_path.iterdir()) == []


def test_the_parts_of_an_exchange_add_up_to_its_total(tmp_path, monkeypatch, identity):
    monkeypatch.setenv(exchange_timing.TIMINGS_ENV, str(tmp_path))
    pushed = time.time()
    sent = message("m1", True)
    exchange_timing.record_sent([sent, message("m2", False)], pushed,
                                {"m1": (pushed + 9.0, 400)})  # m2 never answered
    started = exchange_timing.process_started()
    # this process's start: before now, and after this machine's boot
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    assert started is not None and time.time() - uptime - 1 < started <= time.time()
    # a ClientApp whose process started 1 s after the push and imported the app 1.5 s later
    monkeypatch.setattr(exchange_timing, "process_started", lambda: pushed + 1.0)
    monkeypatch.setattr(exchange_timing, "IMPORTED", pushed + 2.5)
    exchange_timing.record_exchange(sent, pushed + 4.0, pushed + 7.5, 2.0)
    summary = benchmark().summarise(tmp_path, simulated=False)["train"]
    assert summary["exchanges"] == 1  # the unanswered message is not an exchange
    assert summary["bytes_per_exchange"] == exchange_timing.content_bytes(sent) + 400
    assert exchange_timing.content_bytes(sent) >= 400  # 100 float32
    means = summary["mean_s"]
    assert means["total"] == pytest.approx(9.0, abs=1e-3)
    assert means["compute"] == 2.0 and means["beyond_compute"] == pytest.approx(7.0, abs=1e-3)
    parts = ("to_site", "clientapp_start", "in_clientapp", "compute", "back")
    assert sum(means[p] for p in parts) == pytest.approx(means["total"], abs=5e-3)
    # each part where it belongs: the network to the site (push -> process start), the
    # ClientApp's start (process start -> app imported), the time in the ClientApp
    # (imported -> reply left, less the work), the way back (reply left -> coordinator)
    assert means["to_site"] == pytest.approx(1.0, abs=1e-3)
    assert means["clientapp_start"] == pytest.approx(1.5, abs=1e-3)
    assert means["in_clientapp"] == pytest.approx(7.5 - 2.5 - 2.0, abs=1e-3)
    assert means["back"] == pytest.approx(1.5, abs=1e-3)


def test_with_the_supernodes_trace_every_hop_is_its_own_part(tmp_path, monkeypatch, identity):
    """The SuperNode's own times (support/flower_patches.py `trace_supernode`) split the way
    to the site and the way back at the SuperNode; the eight parts add up to the total."""
    monkeypatch.setenv(exchange_timing.TIMINGS_ENV, str(tmp_path))
    pushed = time.time()
    sent = message("m1", True)
    exchange_timing.record_sent([sent], pushed, {"m1": (pushed + 12.0, 400)}, pushed + 0.5)
    exchange_timing.supernode_event({"event": "stored", "message_id": "m1",
                                     "pulled": pushed + 0.75, "stored": pushed + 2.0})
    exchange_timing.record_exchange(sent, pushed + 3.0, pushed + 8.0, 4.0)
    exchange_timing.supernode_event({"event": "pushed", "message_id": "m1",
                                     "reply_ready": pushed + 8.5, "pushed": pushed + 11.0})
    means = benchmark().summarise(tmp_path, simulated=False)["train"]["mean_s"]
    expected = {"to_supernode": 0.75, "supernode_download": 1.25, "clientapp_start": 1.0,
                "in_clientapp": 1.0, "compute": 4.0, "reply_to_supernode": 0.5,
                "supernode_upload": 2.5, "to_coordinator": 1.0}
    for part, seconds in expected.items():
        assert means[part] == pytest.approx(seconds, abs=1e-3), part
    assert sum(means[p] for p in expected) == pytest.approx(means["total"], abs=5e-3)
    assert means["coordinator_upload"] == pytest.approx(0.5, abs=1e-3)

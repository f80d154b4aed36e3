"""The warm site worker (client/runtime/site_worker.py) as a real process beside a stand-in for its
SuperNode: it answers a message as the ClientApp itself would (bit for bit), it survives a
ClientApp that goes away mid-message, it ends with its parent, and a ClientApp whose worker
is gone does the work itself. The federation tests run it end to end
(test_federation.py: the same predictions with and without it)."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from cache_factory import write_site_cache
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from process_tools import wait_for

from fedcmr.client.runtime import worker_channel
from fedcmr.client.runtime.site_worker import PID_ENV, SOCKET_ENV, SOCKET_NAME
from fedcmr.client.runtime.worker_mod import WorkerUnavailable, relay, worker_mod
from fedcmr.client.site import client_app
from fedcmr.common.model import build_model
from fedcmr.common.node_config import NodeConfig
from fedcmr.common.protocol import ARRAYS, CONFIG, Kind, Order
from fedcmr.common.replies import DescribeReply
from fedcmr.common.run_config import RunConfig

#: The SuperNode's place: starts the worker as supernode_main does, says where, then waits.
PARENT = """
import sys, time
from pathlib import Path
from fedcmr.client.runtime import site_worker
from fedcmr.client.runtime import worker_channel
folder = worker_channel.worker_folder()
worker = site_worker.start(folder)
print(folder, worker.pid, flush=True)
time.sleep(3600)
"""


@pytest.fixture(scope="module")
def node(tmp_path_factory) -> NodeConfig:
    root = tmp_path_factory.mktemp("worker-site")
    cache = write_site_cache(root / "cache", "Alpha", 4, 4)
    return NodeConfig(site="Alpha", data_path=(cache,), out_dir=root / "out", threads=1)


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    """The worker and its parent: (parent process, worker pid, socket, the worker's log)."""
    log = tmp_path_factory.mktemp("worker-log") / "worker.log"
    with log.open("w") as handle:
        parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE,
                                  stderr=handle, text=True)
    folder, pid = parent.stdout.readline().split()
    path = Path(folder) / SOCKET_NAME
    wait_for(lambda: "ready on" in log.read_text(), 180, "the worker to serve", parent)
    yield parent, int(pid), path, log
    parent.kill()
    parent.wait()


def train_message(round_: int = 1) -> Message:
    run = RunConfig(profile="smoke", centres=("Alpha", "Bravo"), min_subjects=3)
    order = Order(run=run, fold=0, server_round=round_, landmarks=tuple(np.linspace(0, 100, 13)))
    model, _ = build_model("none", seed=1)
    content = RecordDict({ARRAYS: ArrayRecord(model.state_dict()),
                          CONFIG: order.to_record()})
    msg = Message(content=content, message_type=Kind.TRAIN, dst_node_id=101)
    msg.metadata.__dict__["_message_id"] = f"m-train-{round_}"
    msg.metadata.__dict__["_src_node_id"] = 0
    return msg


def context(node: NodeConfig) -> Context:
    return Context(run_id=7, node_id=101, node_config=node.to_flower(), state=RecordDict(),
                   run_config={})


def arrays(reply: Message) -> dict[str, np.ndarray]:
    assert not reply.has_error(), reply.error.reason
    return {k: v.numpy() for k, v in reply.content.array_records[ARRAYS].items()}


@pytest.fixture(scope="module", autouse=True)
def server_identity():
    """Messages need a run id, as in the ServerApp's process (test_client_lifecycle.py)."""
    saved = {a: getattr(TaskIdentity, a, None) for a in ("_run_id", "_node_id", "_task_id")}
    for attr, value in (("_run_id", 1), ("_node_id", 0), ("_task_id", 1)):
        setattr(TaskIdentity, attr, value)
    yield
    for attr, value in saved.items():
        setattr(TaskIdentity, attr, value)


def test_the_worker_answers_as_the_clientapp_would_and_outlives_a_crashed_one(worker, node):
    _, pid, path, log = worker
    msg, ctx = train_message(), context(node)
    # a ClientApp that sends its message and dies before the reply (killed mid-message)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(path))
        header, parts = worker_channel.pack(msg, ctx)
        worker_channel.send(sock, header, parts, path.parent)
    # and one that dies halfway through its header
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(path))
        sock.sendall(b"\0\0\0\0\0\0\1\0{")
    warm, handler_s = relay(path, pid, msg, ctx)
    text = log.read_text()
    assert "its ClientApp went away" in text and "the reply is dropped" in text, text[-2000:]
    assert "went away before its message arrived" in text, text[-2000:]
    assert handler_s > 0 and os.path.exists(f"/proc/{pid}")  # the same worker served on
    # the worker's reply is the ClientApp's own, bit for bit (same seeds, same frames)
    local = client_app.HANDLERS[Kind.TRAIN](train_message(), context(node))
    assert warm.metadata.reply_to_message_id == msg.metadata.message_id
    got, want = arrays(warm), arrays(local)
    assert got.keys() == want.keys()
    assert all(np.array_equal(got[k], want[k]) for k in want)
    assert dict(warm.content.metric_records["metrics"]) == dict(
        local.content.metric_records["metrics"])
    assert not list(path.parent.glob("*.msg"))  # no message file left in shared memory


def test_a_clientapp_without_its_worker_does_the_work_itself(worker, node, monkeypatch,
                                                             caplog, tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    monkeypatch.setenv(SOCKET_ENV, str(tmp_path / "no-worker.sock"))
    monkeypatch.setenv(PID_ENV, str(dead.pid))
    msg = Message(content=RecordDict({CONFIG: ConfigRecord()}), message_type=Kind.DESCRIBE,
                  dst_node_id=101)
    with pytest.raises(WorkerUnavailable, match=f"pid {dead.pid}.* not running"):
        relay(tmp_path / "no-worker.sock", dead.pid, msg, context(node))
    with caplog.at_level(logging.WARNING, "fedcmr.client"):
        reply = worker_mod(msg, context(node), client_app.HANDLERS[Kind.DESCRIBE])
    assert not reply.has_error()
    assert DescribeReply.from_message(reply).site == "Alpha"
    assert "does the work of query.describe itself" in caplog.text


def test_the_worker_ends_with_its_parent(worker):
    parent, pid, path, _ = worker
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    wait_for(lambda: not _alive(pid), 30, "the worker to end with its SuperNode")
    assert not path.exists()  # it removed its socket on the way out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def test_a_message_passes_whole_with_its_arrays_as_their_own_bytes(node):
    msg = train_message()
    header, parts = worker_channel.pack(msg, context(node))
    assert len(parts) == 2 + len(msg.content.array_records[ARRAYS])
    back, ctx = worker_channel.unpack(header, parts)
    assert back.metadata == msg.metadata and ctx.node_config == context(node).node_config
    assert list(back.content) == list(msg.content)  # record order kept
    assert dict(back.content.config_records[CONFIG]) == dict(msg.content.config_records[CONFIG])
    got, want = arrays(back), arrays(msg)
    assert list(got) == list(want) and all(np.array_equal(got[k], want[k]) for k in want)


def test_the_channel_carries_parts_inline_when_shared_memory_has_no_room(tmp_path):
    left, right = socket.socketpair()
    big = os.urandom(4 << 20)  # more than a socket buffer: the reader drains as it comes
    with left, right, ThreadPoolExecutor(1) as pool:
        sent = pool.submit(worker_channel.send, left, {"n": 1}, [big, b"x"], None)
        header, parts = worker_channel.receive(right)  # no folder: inline
        sent.result()
        assert header == {"n": 1} and parts == [big, b"x"]
        worker_channel.send(left, {"n": 2}, [big], tmp_path)  # through a file
        assert len(list(tmp_path.glob("*.msg"))) == 1
        header, parts = worker_channel.receive(right)
        assert header == {"n": 2} and parts == [big]
        assert not list(tmp_path.iterdir())  # the file is gone once read

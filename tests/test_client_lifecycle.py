"""A hospital's `fedcmr client` over its life: it gives up on a coordinator it cannot reach
with one line naming the address, it stops by itself (exit 0, no Flower process left) when
the coordinator's run is over (tested at the end of test_network_faults.py), and a failure
of its ClientApp reaches the coordinator naming the site and the message kind."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from cache_factory import write_site_cache
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.common.serde import message_from_proto, message_to_proto
from flwr.supercore.task_identity import TaskIdentity
from process_tools import (
    ENV,
    descendants,
    finish,
    hospital,
    kill_tree,
    our_processes,
    processes,
    wait_for,
)

from fedcmr.client.runtime.site_lock import LOCK_NAME, SHM_ROOT
from fedcmr.client.site import client_app
from fedcmr.client.site.audit import AUDIT_FILE, audit_mod
from fedcmr.client.site.policy import STATE_ENV
from fedcmr.common.protocol import CONFIG, FINISHED_MARKER, Kind
from fedcmr.common.replies import FinishedReply
from fedcmr.support.flower_env import flower_env, tool
from fedcmr.support.ports import free_port, port_is_free
from fedcmr.support.proc_tree import alive, start_time

FLOWER = ("flower-supernode", "flower-superexec", "flwr-clientapp")
AGAIN = "registering again as a new node"


def flower_processes(root: Path) -> list[str]:
    return [c for c in our_processes(root) if any(name in c for name in FLOWER)]


def shm_folder(tmp_path: Path, listening: bool) -> tuple[Path, socket.socket | None]:
    """A shared-memory folder as an earlier fedcmr's site worker left it: its socket file,
    still served (`listening`) or not."""
    folder = Path(tempfile.mkdtemp(prefix="fedcmr-worker-", dir=SHM_ROOT))
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(folder / "worker.sock"))
    if listening:
        server.listen()
        return folder, server
    server.close()
    return folder, None


def test_an_unreachable_coordinator_is_one_line_naming_the_address(tmp_path):
    """Also: at its start the client removes the shared-memory folders an earlier fedcmr's
    site worker left (nothing serves their socket), and keeps one still served."""
    cache = write_site_cache(tmp_path / "cache", "Alpha", 3, 3)
    stale, _ = shm_folder(tmp_path, listening=False)
    live, server = shm_folder(tmp_path, listening=True)
    proc = hospital("Alpha", cache, "127.0.0.1:1", tmp_path / "site", "--max-wait-time", "5")
    try:
        out, _ = proc.communicate(timeout=120)
        kept = live.exists()
    finally:
        if proc.poll() is None:
            kill_tree(proc.pid)
        server.close()
        shutil.rmtree(live, ignore_errors=True)
    assert not stale.exists() and kept, out
    # (1 or more: this machine may hold other leftovers of earlier versions)
    assert re.search(r"removed [1-9]\d* shared-memory folder\(s\) earlier fedcmr", out), out
    lines = [line for line in out.splitlines() if line.strip()]
    assert proc.returncode == 1, out[-3000:]  # it gave up (communicate's 120 s: no hang)
    assert "cannot reach the coordinator at 127.0.0.1:1 for " in lines[-1], out[-3000:]
    assert "is `fedcmr server` running" in lines[-1] and "Fix:" in lines[-1]
    # Flower's own retry warnings are summarised, each summary with the address
    assert not [line for line in lines if "Connection attempt failed" in line], out[-3000:]
    retrying = [line for line in lines if "retrying" in line]
    assert retrying and all("127.0.0.1:1" in line for line in retrying), out[-3000:]
    assert flower_processes(tmp_path) == []
    # started without --root-certificates, the site says it is in plaintext, and how
    # its policy reads
    assert "INSECURE: no --root-certificates" in out and "Fix: --root-certificates" in out
    assert "release policy (" in out and "split seed pinned to 0" in out
    # Flower's and uvicorn's banners go to the site's log file, not between fedcmr's lines
    full = (tmp_path / "site" / "logs" / "supernode.log").read_text()
    for banner in ("Starting Flower SuperNode", "Uvicorn running on"):
        assert banner in full and banner not in out, banner


def test_a_restarted_coordinator_is_rejoined_and_one_gone_for_good_is_one_line(tmp_path):
    """A SuperLink killed and started again on its port no longer knows the node (Flower's
    SuperNode would poll on as a node nobody sends to): `fedcmr client` registers again as
    a new node. Killed for good, Flower's SuperNode gives up after --max-wait-time but then
    hangs (1.42): `fedcmr client` stops it and says so, naming the address."""
    port, flwr_home = free_port(), tmp_path / "flwr"

    def superlink() -> subprocess.Popen:
        proc = subprocess.Popen(
            [tool("flower-superlink"), "--insecure", "--host", "127.0.0.1", "--port",
             str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, cwd=tmp_path,
            env=flower_env(ENV, FLWR_HOME=str(flwr_home)), start_new_session=True)
        wait_for(lambda: not port_is_free(port), 120, "the SuperLink to listen", proc)
        return proc

    log = tmp_path / "client.log"
    links, proc = [], None
    try:
        cache = write_site_cache(tmp_path / "cache", "Alpha", 3, 3)
        links.append(superlink())
        proc = hospital("Alpha", cache, f"127.0.0.1:{port}", tmp_path / "site",
                      "--max-wait-time", "30", log=log)
        wait_for(lambda: "connected to the coordinator" in log.read_text(), 120,
                 "the client to connect", proc)
        kill_tree(links[-1].pid)
        links[-1].wait()
        links.append(superlink())  # the coordinator restarted: a SuperLink without nodes
        wait_for(lambda: "reconnected to the coordinator" in log.read_text().partition(
            AGAIN)[2], 120, "the client to register again", proc)
        kill_tree(links[-1].pid)  # gone for good
        links[-1].wait()
        assert proc.wait(timeout=150) == 1, log.read_text()[-3000:]
    finally:
        for p in (*links, proc):
            if p is not None and p.poll() is None:
                kill_tree(p.pid)
                p.wait()
    text = log.read_text()
    ids = re.findall(r"SuperNode ID: (\d+)", text)
    assert len(set(ids)) == 2, ids  # registered twice, under two node ids
    last = [line for line in text.splitlines() if line.strip()][-1]
    assert f"lost the coordinator at 127.0.0.1:{port} for " in last, last
    assert flower_processes(tmp_path) == []


def superexec_of(client: subprocess.Popen) -> list[int]:
    """The flower-superexec processes under `client`'s SuperNode."""
    table = processes()
    return [pid for pid in descendants(client.pid, table) if "flower-superexec" in table[pid][2]]


def test_a_killed_client_takes_its_processes_along_and_one_site_runs_one_client(tmp_path):
    """`fedcmr client` SIGKILLed: its SuperNode and SuperExec end with it (no orphan goes on
    serving), and the same command, same --port, starts again and connects. While it runs,
    a second client of the same site is refused naming the first's pid; once it is gone, a
    SuperNode an earlier client left behind (a process named so, recorded in the site's lock)
    is stopped and named at the next start."""
    port, flwr_home, local = free_port(), tmp_path / "flwr", free_port()
    cache = write_site_cache(tmp_path / "cache", "Alpha", 3, 3)
    link = subprocess.Popen(
        [tool("flower-superlink"), "--insecure", "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, cwd=tmp_path,
        env=flower_env(ENV, FLWR_HOME=str(flwr_home)), start_new_session=True)
    state = tmp_path / "state"
    env = {**ENV, STATE_ENV: str(state)}
    started: list[subprocess.Popen] = [link]
    tree: list[int] = []

    def client(name: str, logged: bool = True) -> tuple[subprocess.Popen, Path]:
        log = tmp_path / f"{name}.log"
        proc = hospital("Alpha", cache, f"127.0.0.1:{port}", tmp_path / "site", "--port",
                        str(local), "--max-wait-time", "60", log=log if logged else None,
                        env=env)
        started.append(proc)
        return proc, log

    try:
        wait_for(lambda: not port_is_free(port), 120, "the SuperLink to listen", link)
        first, log = client("first")
        wait_for(lambda: "connected to the coordinator" in log.read_text(), 120,
                 "the client to connect", first)
        tree = wait_for(lambda: superexec_of(first) and [*descendants(first.pid)], 120,
                        "the SuperExec to start", first)
        os.kill(first.pid, signal.SIGKILL)  # the client alone, not its tree
        first.wait()
        wait_for(lambda: not [p for p in tree if alive(p)], 30,
                 "the SuperNode and SuperExec to end with their client")

        second, log = client("second")  # the same command and port: no "address in use"
        wait_for(lambda: "connected to the coordinator" in log.read_text(), 120,
                 "the restarted client to connect", second)
        third, _ = client("third", logged=False)
        out = finish(third, 60)
        assert third.returncode == 2, out
        assert (f"another `fedcmr client` serves this site now (pid {second.pid}" in out
                and "Fix: stop it first" in out), out
        kill_tree(second.pid, signal.SIGTERM)
        assert second.wait(timeout=60) != 0

        # a SuperNode an earlier client left running (as one could before they died together)
        stale = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)",
                                  "flower-supernode"], start_new_session=True)
        started.append(stale)
        wait_for(lambda: start_time(stale.pid), 10, "the stale process to start")
        (lock,) = state.glob(f"*/{LOCK_NAME}")  # the site's state folder
        lock.write_text(json.dumps(
            {"client": {"pid": 1, "start": 0},
             "supernode": {"pid": stale.pid, "start": start_time(stale.pid)}}))
        fourth, log = client("fourth")
        wait_for(lambda: stale.poll() is not None, 60, "the stale SuperNode to be stopped")
        assert (f"stopping the SuperNode (pid {stale.pid}) an earlier `fedcmr client`"
                in log.read_text())
        wait_for(lambda: "connected to the coordinator" in log.read_text(), 120,
                 "the client after the stale SuperNode to connect", fourth)
    finally:
        for proc in started:
            if proc.poll() is None:
                kill_tree(proc.pid)
                proc.wait()
        for pid in tree:  # orphans, should the first client's processes have outlived it
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    # a SuperExec still starting when its SuperNode was killed (slow imports on a busy
    # machine) ends itself once it runs (die_with_parent: its parent is gone)
    with contextlib.suppress(AssertionError):
        wait_for(lambda: not flower_processes(tmp_path), 30, "the last processes to end")
    assert flower_processes(tmp_path) == []


def test_a_port_in_use_is_named_with_the_flag(tmp_path):
    cache = write_site_cache(tmp_path / "cache", "Alpha", 3, 3)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = hospital("Alpha", cache, "127.0.0.1:1", tmp_path / "site", "--port", str(port))
        out = finish(proc, 60)
    assert proc.returncode == 2, out
    assert f"port {port} (--port" in out and "Fix: leave --port out" in out, out


@pytest.fixture
def server_identity(monkeypatch):
    """What the ServerApp process has under Flower's runtime: messages need a run id."""
    for attr, value in (("_run_id", 1), ("_node_id", 0), ("_task_id", 1)):
        monkeypatch.setattr(TaskIdentity, attr, value)


def deliver(kind: Kind, node_config: dict, content: RecordDict | None = None) -> Message:
    """The message to the real ClientApp handler behind the audit gate, as a SuperNode
    delivers it; the reply through Flower's wire format, as the coordinator receives it."""
    context = Context(run_id=7, node_id=101, node_config=node_config, state=RecordDict(),
                      run_config={})
    msg = Message(content=content or RecordDict({CONFIG: ConfigRecord()}),
                  message_type=kind, dst_node_id=101)
    msg.metadata.__dict__["_message_id"] = f"m-{kind}"
    msg.metadata.__dict__["_src_node_id"] = 0
    reply = audit_mod(msg, context, client_app.HANDLERS[kind])
    return message_from_proto(message_to_proto(reply))


@pytest.mark.parametrize("kind", [Kind.DESCRIBE, Kind.NYUL, Kind.TRAIN, Kind.VALIDATE,
                                  Kind.TEST])
def test_a_site_failure_names_the_site_and_the_message(tmp_path, server_identity, kind,
                                                        caplog):
    """The error reply names the site, the message and the kind of failure; the path in
    the exception's text stays in the site's log, and the gate logs the request and the
    error it answered with."""
    broken = {"site": "Vall d'Hebron", "data-path": str(tmp_path / "no-such-cache"),
              "out-dir": str(tmp_path / "out")}
    reply = deliver(kind, broken)
    assert reply.has_error()
    assert reply.error.reason == (f"site Vall d'Hebron: {kind} failed: data error "
                                  "(CacheError): the site's prepared cache cannot be read or "
                                  "is inconsistent; the details are in the site's own log")
    # the details, at the site only: the file, and what to do
    assert "no-such-cache/manifest.csv: the prepared cache's manifest is not there" in caplog.text
    assert "Fix: restore " in caplog.text and "restart `fedcmr client`" in caplog.text
    (line,) = [json.loads(x) for x in (tmp_path / "out" / AUDIT_FILE).read_text().splitlines()]
    assert line["type"] == kind and line["error"] == reply.error.reason
    assert "run_id" in line["request"]


def test_finished_marks_the_run_over_and_its_reply_passes_the_audit(tmp_path,
                                                                      server_identity):
    node = {"site": "Alpha", "data-path": str(tmp_path / "cache"),
            "out-dir": str(tmp_path / "out")}
    reply = deliver(Kind.FINISHED, node)
    assert not reply.has_error() and FinishedReply.from_message(reply).site == "Alpha"
    assert json.loads((tmp_path / "out" / FINISHED_MARKER).read_text())["run_id"] == 7
    (line,) = (tmp_path / "out" / AUDIT_FILE).read_text().splitlines()
    assert json.loads(line)["type"] == Kind.FINISHED and json.loads(line)["blocked"] == []

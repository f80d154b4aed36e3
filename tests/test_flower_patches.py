"""support/flower_patches.py: each change to Flower's behaviour, against Flower's own code. A
test fails when Flower renames or reshapes what a patch reaches, and the version guard
refuses a release the patches were not tested on."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
import threading
import time
import types

import pytest
from flwr.supercore.inflatable import inflatable_utils
from flwr.supercore.inflatable.inflatable_utils import ObjectUnavailableError

from fedcmr.support import flower_patches


def flowers_own_kwdefaults(functions) -> list[dict]:
    """The keyword defaults of these inflatable_utils functions as Flower's source has them,
    from a fresh copy of the module (this process may have applied the patches already: an
    in-process federation imports the ServerApp, which applies them)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "flwr.supercore.inflatable._fresh_inflatable_utils", inflatable_utils.__file__)
    fresh = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fresh)
    return [dict(getattr(fresh, f.__name__).__kwdefaults__) for f in functions]


@pytest.fixture
def flower_defaults():
    """Flower's own pull schedule during the test; what was there before, after it."""
    functions = (inflatable_utils.pull_objects,
                 inflatable_utils.pull_and_inflate_object_from_tree)
    saved = [dict(f.__kwdefaults__) for f in functions]
    for function, own in zip(functions, flowers_own_kwdefaults(functions), strict=True):
        function.__kwdefaults__.clear()
        function.__kwdefaults__.update(own)
    yield
    for function, defaults in zip(functions, saved, strict=True):
        function.__kwdefaults__.clear()
        function.__kwdefaults__.update(defaults)


def waits_before_arrival(monkeypatch, late_tries: int) -> list[float]:
    """The waits Flower's pull_objects makes for an object that is missing `late_tries`
    times, read off its own wait calls (no clock involved)."""
    waits: list[float] = []

    class Recorded(threading.Event):
        def wait(self, timeout=None):
            if timeout is None:  # the executor's own waits
                return super().wait()
            waits.append(timeout)
            return False

    monkeypatch.setattr(inflatable_utils.threading, "Event", Recorded)
    monkeypatch.setattr(inflatable_utils.random, "uniform", lambda a, b: 0.0)  # no jitter
    tries = []

    def pull(object_id: str) -> bytes:
        tries.append(object_id)
        if len(tries) <= late_tries:
            raise ObjectUnavailableError(object_id)
        return b"content"

    assert inflatable_utils.pull_objects(["a"], pull) == {"a": b"content"}
    return waits


def test_an_object_that_arrives_late_is_fetched_within_a_fifth_of_a_second(
        monkeypatch, flower_defaults):
    flower = waits_before_arrival(monkeypatch, 6)
    assert flower == [1, 2, 4, 8, 10, 10]  # the defence off: Flower's schedule, 35 s
    flower_patches.fast_object_pulls()
    ours = waits_before_arrival(monkeypatch, 6)
    assert ours == pytest.approx([0.02, 0.04, 0.08, 0.16, 0.2, 0.2])
    assert max(ours) <= flower_patches.PULL_MAX_WAIT_S
    # a slow upload is still waited for as long as Flower would (500 tries of up to 10 s)
    defaults = inflatable_utils.pull_objects.__kwdefaults__
    assert defaults["max_tries_per_object"] * defaults["backoff_cap"] == pytest.approx(5000)
    assert inflatable_utils.pull_and_inflate_object_from_tree.__kwdefaults__[
        "initial_backoff"] == flower_patches.PULL_FIRST_WAIT_S


def test_another_flower_release_is_refused_with_the_fix(monkeypatch):
    assert flower_patches.installed_flower() == flower_patches.TESTED_FLOWER
    flower_patches.check_version()
    monkeypatch.setattr(flower_patches, "installed_flower", lambda: "1.43.0")
    with pytest.raises(flower_patches.FlowerVersionError,
                       match=r"tested on Flower 1\.42\.0 .* has Flower 1\.43\.0\. Fix: pip "
                             r"install 'flwr\[simulation\]==1\.42\.0'"):
        flower_patches.apply()


def test_the_names_each_patch_reaches_are_where_flower_1_42_has_them():
    """Fails when Flower moves what a patch changes: the SuperNode loop's 3 s idle wait and
    its SuperExec start, its per-message `_pull_and_store_message`, the SuperExec's wait."""
    from flwr.supercore.superexec import run_superexec
    from flwr.supernode import start_client_internal as loop

    source = inspect.getsource(loop.start_client_internal)
    assert "time.sleep(3)" in source and "subprocess.Popen(command)" in source
    assert "run_id = _pull_and_store_message(" in source
    assert "time.sleep(task_poll_interval)" in inspect.getsource(run_superexec.run_superexec)
    for name in ("time", "subprocess", "_pull_and_store_message", "_push_messages"):
        assert hasattr(loop, name), name
    assert {"receive"} <= set(inspect.signature(loop._pull_and_store_message).parameters)
    assert {"send"} <= set(inspect.signature(loop._push_messages).parameters)
    assert "_push_messages(\n                state=state," in source


def test_flowers_supernode_refuses_a_bundle_the_way_approve_bundles_relies_on():
    """`approve_bundles` makes Flower's own check refuse (client/site/app_approval.py has the
    rule and a real refused bundle): the loop fetches the bundle with `get_fab` and refuses
    it when `trusted_entities` is set and no "valid_license" verification is there."""
    from flwr.supernode import start_client_internal as loop

    source = inspect.getsource(loop._pull_and_store_message)
    fetched = source.index("fab = get_fab(")
    checked = source.index("if trusted_entities:", fetched)
    assert source.index('fab.verifications.get("valid_license"', checked) > checked
    assert {"get_fab", "trusted_entities"} <= set(
        inspect.signature(loop._pull_and_store_message).parameters)


def test_the_superexecs_processes_are_started_with_the_popen_fedcmr_hands_it(monkeypatch):
    """`fork_clientapps`: Flower's subprocess executor starts every process (a ClientApp
    included) with the module-level `subprocess.Popen` it looks up at the call."""
    from flwr.supercore.superexec.executor import subprocess_executor as executor

    source = inspect.getsource(executor)
    assert "subprocess.Popen(" in source and "import subprocess" in source
    monkeypatch.setattr(executor, "subprocess", executor.subprocess)  # put back after
    started = []
    forking = types.SimpleNamespace(Popen=lambda args, **kw: started.append(args),
                                    DEVNULL=subprocess.DEVNULL)
    flower_patches.fork_clientapps(executor, forking)
    assert executor.subprocess is forking
    monkeypatch.setattr(executor, "subprocess", types.SimpleNamespace())
    with pytest.raises(flower_patches.FlowerVersionError, match="Popen"):
        flower_patches.fork_clientapps(executor, forking)


def test_a_forked_clientapp_drops_the_superexecs_exit_handlers_and_lock(monkeypatch):
    """`reset_after_fork`: what Flower runs at exit (its registered handlers) and the lock
    its telemetry takes are the names Flower's own code uses; after the reset the child
    runs none of the parent's handlers and holds a lock no other thread can hold."""
    from flwr.supercore import telemetry
    from flwr.supercore.exit import exit_handler

    assert "in registered_exit_handlers:" in inspect.getsource(
        exit_handler.trigger_exit_handlers)
    assert "with state_lock:" in inspect.getsource(telemetry)
    monkeypatch.setattr(exit_handler, "registered_exit_handlers",
                        [*exit_handler.registered_exit_handlers, "the SuperExec's"])
    held = threading.Lock()
    held.acquire()  # as another thread of the SuperExec held it at the fork
    monkeypatch.setattr(telemetry, "state_lock", held)
    flower_patches.reset_after_fork()
    assert exit_handler.registered_exit_handlers == []
    assert telemetry.state_lock is not held and telemetry.state_lock.acquire(timeout=1)


def test_every_app_the_superlink_builds_is_wrapped(monkeypatch):
    """`wrap_superlink_apps`: Flower's SuperLink imports `create_app` from
    flwr.superlink.main when it starts serving (so it gets the wrapped one); each app it
    builds is served wrapped (tests/test_attacks.py checks the wrapper refuses outsiders)."""
    import importlib

    from flwr.superlink import main as superlink_app

    cli = importlib.import_module("flwr.superlink.cli.flower_superlink")
    source = inspect.getsource(cli._run_superlink_http_api)
    assert "from flwr.superlink.main import" in source and "create_app(" in source
    monkeypatch.setattr(superlink_app, "create_app", lambda *a, **k: ("app", a, k))
    flower_patches.wrap_superlink_apps(lambda app: ("wrapped", app))
    assert superlink_app.create_app(1, x=2) == ("wrapped", ("app", (1,), {"x": 2}))
    monkeypatch.setattr(superlink_app, "create_app", None)
    with pytest.raises(flower_patches.FlowerVersionError, match="create_app"):
        flower_patches.wrap_superlink_apps(lambda app: app)


def test_a_supernode_announces_and_keeps_a_ten_second_heartbeat(monkeypatch):
    """The interval a SuperNode announces (ActivateNode, every heartbeat) and the waits of
    its heartbeat thread, read off Flower's own sender: every 17.5-22.5 s (30 s announced)
    before, every 3.5-4.5 s (10 s announced) after. Outside the SuperLink's accepted range
    the patch refuses."""
    from flwr.supercore import heartbeat
    from flwr.supernode import fleet_http_connection

    for module in (heartbeat, fleet_http_connection):  # put back after the test
        monkeypatch.setattr(module, "HEARTBEAT_DEFAULT_INTERVAL",
                            module.HEARTBEAT_DEFAULT_INTERVAL)
    source = inspect.getsource(fleet_http_connection.http_request_response)
    assert source.count("heartbeat_interval=HEARTBEAT_DEFAULT_INTERVAL") == 2
    assert "HeartbeatSender(send_node_heartbeat)" in source

    def waits() -> list[float]:
        sender = heartbeat.HeartbeatSender(lambda: True)
        recorded: list[float] = []

        def wait(timeout=None):
            recorded.append(timeout)
            sender._stop_event.set()  # one beat, then stop
            return True

        monkeypatch.setattr(sender._stop_event, "wait", wait)
        sender._run()
        return recorded

    (before,) = waits()
    assert fleet_http_connection.HEARTBEAT_DEFAULT_INTERVAL == 30 and 17.5 <= before <= 22.5
    flower_patches.prompt_heartbeat()
    (after,) = waits()
    assert fleet_http_connection.HEARTBEAT_DEFAULT_INTERVAL == flower_patches.HEARTBEAT_S == 10
    assert 3.5 <= after <= 4.5
    with pytest.raises(ValueError, match="outside the SuperLink's"):
        flower_patches.prompt_heartbeat(5)


def test_the_superlinks_superexec_is_fedcmrs_and_notes_how_each_process_ended(tmp_path):
    """The SuperLink builds its SuperExec's command with `_get_superexec_command` and
    Flower's subprocess executor starts each ServerApp with `subprocess.Popen(args)` and
    drops it (defence off: nothing learns how it ended). Patched: the command goes through
    fedcmr's SuperExec, and a process killed by SIGKILL is noted with -9."""
    import importlib

    from flwr.supercore.superexec.executor import subprocess_executor

    from fedcmr.server.superexec_main import SUPEREXEC_MAIN, superexec_command

    superlink_cli = importlib.import_module("flwr.superlink.cli.flower_superlink")
    launch = inspect.getsource(subprocess_executor.SubprocessExecutor.launch)
    assert "subprocess.Popen(args)" in launch and "returncode" not in launch
    assert "subprocess.Popen(command" in inspect.getsource(superlink_cli)
    built = superlink_cli._get_superexec_command("127.0.0.1:1", None, None, 1, False)
    fake_cli = types.SimpleNamespace(_get_superexec_command=lambda *a: list(built))
    flower_patches.superlink_superexec_through(fake_cli, superexec_command)
    assert fake_cli._get_superexec_command() == [sys.executable, "-c", SUPEREXEC_MAIN,
                                                 *built]
    noted = []
    executor = types.SimpleNamespace(subprocess=subprocess)
    flower_patches.record_task_exits(executor, lambda *a: noted.append(a))
    sleeper = executor.subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    sleeper.kill()
    deadline = time.monotonic() + 10
    while not noted and time.monotonic() < deadline:
        time.sleep(0.05)
    assert noted == [([sys.executable, "-c", "import time; time.sleep(60)"], sleeper.pid, -9)]
    assert executor.subprocess.DEVNULL == subprocess.DEVNULL  # the rest of the module kept


def test_a_serverapp_ended_by_a_signal_is_named_with_the_fix(tmp_path):
    from fedcmr.server import task_exits
    from fedcmr.server.superlink import run_failure

    record = tmp_path / task_exits.FILE
    assert task_exits.explain(record, None) is None  # nothing ended yet
    task_exits.note(record, ["flwr-serverapp", "--token", "x"], 41, 0)  # a normal end
    task_exits.note(record, ["flwr-clientapp"], 42, -9)  # not the ServerApp
    assert task_exits.explain(record, None) is None
    task_exits.note(record, ["flwr-serverapp"], 43, -9)
    said = task_exits.explain(record, None)
    assert said.startswith("the ServerApp (pid 43) was ended by SIGKILL") and "dmesg" in said
    assert "--resume" in said
    assert task_exits.explain(record, None, since=time.time() + 1) is None  # an earlier run
    before = task_exits.oom_kills()
    if before is not None:  # a cgroup v2 machine: a count that went up names the OOM killer
        assert "out-of-memory killer (1 kill(s)" in task_exits.explain(record, before - 1)
    line = run_failure(tmp_path, "7", "finished:failed", tmp_path / "run.log", said)
    assert line.startswith("run 7 ended finished:failed: the ServerApp (pid 43) was ended")
    assert run_failure(tmp_path, "7", "finished:failed", tmp_path / "run.log") == (
        f"run 7 ended finished:failed; see {tmp_path / 'run.log'}")  # Flower's words alone


def test_the_supernode_trace_names_each_message_and_reply_by_id():
    meta = types.SimpleNamespace(message_id="m1", reply_to_message_id="m1")
    message = types.SimpleNamespace(metadata=meta)
    sent, notes = [], []

    def pull_and_store(*, receive, state):
        return 3 if receive() is not None else None

    def push(*, send, state):
        send(message, "tree", 1.0)

    loop = types.SimpleNamespace(_pull_and_store_message=pull_and_store, _push_messages=push)
    flower_patches.trace_supernode(loop, notes.append)
    assert loop._pull_and_store_message(receive=lambda: None, state=0) is None
    assert notes == []  # no message: nothing noted
    assert loop._pull_and_store_message(receive=lambda: (message, "tree"), state=0) == 3
    loop._push_messages(send=lambda *a: sent.append(a), state=0)
    assert sent == [(message, "tree", 1.0)]
    stored, pushed = notes
    assert stored["event"] == "stored" and stored["message_id"] == "m1"
    assert stored["pulled"] <= stored["stored"] <= pushed["reply_ready"] <= pushed["pushed"]
    assert pushed["event"] == "pushed" and pushed["message_id"] == "m1"


def test_the_supernode_loop_checks_again_soon_during_a_run_and_rarely_when_idle():
    """Its own ClientApp's reply is looked for every 0.02 s (Flower: 0.5 s); the SuperLink
    0.05 s after a message, doubling up to 0.5 s (Flower: 3 s), and every 1 s once no
    message came for 5 minutes; it starts fedcmr's SuperExec, and knows its pid."""
    waits, started, now = [], [], [0.0]
    arrivals = iter([None, 7, None, None, None, None, None])
    loop = types.SimpleNamespace(
        time=types.SimpleNamespace(sleep=waits.append, monotonic=lambda: now[0]),
        _pull_and_store_message=lambda **kw: next(arrivals),
        subprocess=types.SimpleNamespace(Popen=lambda command: started.append(command) or
                                         types.SimpleNamespace(pid=42, poll=lambda: None)))
    flower_patches.supernode_waits(loop)

    def iteration():  # Flower's loop: a check, then its 3 s wait or the reply's 0.5 s waits
        if loop._pull_and_store_message(state=None) is None:
            loop.time.sleep(3)
        else:
            loop.time.sleep(0.5)

    for _ in range(6):
        iteration()
    assert waits == pytest.approx([1.0, 0.02, 0.05, 0.1, 0.2, 0.4])
    iteration()
    assert waits[-1] == 0.5
    now[0] = 301.0  # five minutes without a message: idle
    arrivals = iter([None])
    iteration()
    assert waits[-1] == 1.0
    pid = flower_patches.superexec_through(loop, lambda cmd: ["python", "-c", "x", *cmd])
    assert pid() is None  # not started yet
    loop.subprocess.Popen(["flower-superexec", "--insecure"])
    assert started == [["python", "-c", "x", "flower-superexec", "--insecure"]]
    assert pid() == 42


WAITER = """
import sys, time
from fedcmr.support import flower_patches
from flwr.supercore.superexec import run_superexec
if sys.argv[1] == "patched":
    flower_patches.superexec_wakes_on_signal()
print("waiting", flush=True)
started = time.monotonic()
run_superexec.time.sleep(60)
print(f"woke {time.monotonic() - started:.2f}", flush=True)
"""


def waiter(mode: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", WAITER, mode], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "waiting"
    return proc


def test_a_message_wakes_the_superexec_at_once():
    """The SuperNode's wrapped `_pull_and_store_message` signals the SuperExec after every
    message it stored; the SuperExec's 60 s wait ends then. Defence off (Flower's own
    SuperExec): the same signal kills it."""
    # a SuperExec still starting (no handler yet) is not signalled: the signal would end it
    starting = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        early = types.SimpleNamespace(_pull_and_store_message=lambda **kw: 5)
        flower_patches.wake_superexec(early, lambda: starting.pid)
        assert not flower_patches.catches(starting.pid)
        assert early._pull_and_store_message() == 5
        time.sleep(0.5)
        assert starting.poll() is None
    finally:
        starting.kill()
        starting.wait()
    proc = waiter("patched")
    assert flower_patches.catches(proc.pid)
    loop = types.SimpleNamespace(_pull_and_store_message=lambda **kw: kw["run_id"])
    flower_patches.wake_superexec(loop, lambda: proc.pid)
    assert loop._pull_and_store_message(run_id=None) is None  # no message: no signal
    time.sleep(0.5)
    assert proc.poll() is None
    assert loop._pull_and_store_message(run_id=7) == 7
    out, _ = proc.communicate(timeout=50)
    assert proc.returncode == 0 and float(out.split()[1]) < 50, out
    plain = waiter("flower")
    os.kill(plain.pid, flower_patches.WAKE_SIGNAL)
    assert plain.wait(timeout=50) == -flower_patches.WAKE_SIGNAL

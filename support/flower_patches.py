"""Where fedcmr changes Flower's own behaviour, and the Flower release it was tested on.

fedcmr runs on Flower 1.42.0 only (pyproject pins it): `check_version()` refuses any other
release before a patch is applied, naming both releases and the fix, because every patch
here reaches a name Flower does not promise to keep. tests/test_flower_patches.py fails when
one of those names moves.

- **Object pulls without long waits** (`fast_object_pulls`). A message is visible before
  its arrays have arrived; a pull that comes early backs off 1, 2, 4, 8, then 10 s
  (`PULL_INITIAL_BACKOFF`, `PULL_BACKOFF_CAP`, no setting), so a model that arrived a
  moment after the check waited seconds more at every hop. Here the waits start at
  PULL_FIRST_WAIT_S and stop growing at PULL_MAX_WAIT_S; the number of tries grows so that
  a slow upload is waited for as long as before (Flower's 500 tries at up to 10 s).
  Applied in every process that pulls: the ServerApp (replies), the SuperNode (messages
  from the SuperLink) and fedcmr's SuperExec, whose forked ClientApps pull their message
  from the SuperNode.
- **The SuperNode's loop** (`supernode_waits`, `superexec_through`). Flower waits 3 s after
  every check of the SuperLink that found no message (every exchange waited half of that
  on its way to a site), and checks for its own ClientApp's reply every 0.5 s. Here the
  reply is checked for every 0.02 s (this process's own memory), and the SuperLink 0.05 s
  after a message, then ever less often up to every 0.5 s; after 5 minutes without a
  message, every second (idle sites cost as little CPU as before). It also starts its
  SuperExec through fedcmr's (client/runtime/superexec_main.py, which forks each ClientApp).
- **A SuperExec that wakes on work** (`superexec_wakes_on_signal`, `wake_superexec`).
  Flower's SuperExec checks its SuperNode for a message to run every second
  (FLWR_SUPEREXEC_TASK_POLL_INTERVAL): on average half a second per message at every site,
  or, polled ten times as often, 8.9 % of two cores for four idle sites against 2.8 %
  (benchmarks/results/idle_polling.txt). Here the
  SuperNode signals its SuperExec (WAKE_SIGNAL) as soon as a message and all its objects
  are stored, and the SuperExec's wait ends at once; Flower's 1 s stays as the fallback.
- **A lost site noticed in 20 s** (`prompt_heartbeat`). A SuperNode tells the SuperLink
  how often it will report (Flower: every 30 s, no setting) and is marked offline after two
  intervals without a report: a dead hospital held its round for a minute. Here a SuperNode
  reports every HEARTBEAT_S (the shortest the SuperLink accepts: a beat every 3.5-4.5 s,
  tests/test_flower_patches.py), so a lost site is named after 20 s and a late one still
  has about five beats to get through.
- **How the ServerApp ended** (`superlink_superexec_through`, `record_task_exits`). The
  SuperLink's SuperExec starts the ServerApp process and never waits for it, so a
  ServerApp killed by a signal (the kernel's out-of-memory killer, say) left only "ended
  finished:failed". Here the SuperLink starts fedcmr's SuperExec (server/superexec_main.py),
  which keeps each process it starts and notes how it ended.
- **Only approved app bundles run at a site** (`approve_bundles`; the rule is the site's:
  client/site/app_approval.py). The SuperNode loop's `_pull_and_store_message` fetches a
  new run's bundle with `get_fab` and, when `trusted_entities` is set and the bundle has no
  "valid_license" verification, answers FAB_VERIFICATION_ERROR before any of its code runs;
  on refusal the patch fills `trusted_entities` and strips the verifications.
- **ClientApps forked, not started** (`fork_clientapps`, `reset_after_fork`): the
  SuperExec's executor gets a `subprocess` whose Popen forks
  (client/runtime/superexec_main.py); the child drops the SuperExec's exit handlers and
  gets a new telemetry lock (another thread may have held it at the fork).
- **Control and Runtime APIs only from the coordinator's own host**
  (`wrap_superlink_apps`). Flower's SuperLink serves every API on one port it builds with
  `flwr.superlink.main.create_app`; server/superlink_main.py wraps each app it builds.
- **A trace of the SuperNode's part of each exchange** (`trace_supernode`, only with
  $FEDCMR_TIMINGS set, for benchmarks/round_overhead.py).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import signal
import threading
import time
import types
from collections.abc import Callable
from pathlib import Path

#: The Flower release every patch here was tested on.
TESTED_FLOWER = "1.42.0"
#: Waits between pulls of an object that has not arrived yet (Flower: 1 s, doubling to 10 s).
PULL_FIRST_WAIT_S = 0.02
PULL_MAX_WAIT_S = 0.2
#: How long Flower's defaults keep asking for a missing object: 500 tries, up to 10 s apart.
_FLOWER_PULL_PATIENCE_S = 500 * 10.0

#: How often a SuperNode says it will report to the SuperLink (Flower: 30 s; the SuperLink
#: accepts 10 s to 30 min and marks a node offline after two intervals without a report).
HEARTBEAT_S = 10

#: What a SuperNode sends its SuperExec when a message has arrived.
WAKE_SIGNAL = signal.SIGUSR1
#: The trusted-entities key set on a refused bundle (never a real entity: it only makes
#: Flower check the bundle's verification, which the refused bundle no longer has).
_REFUSAL_ENTITY = "fedcmr-site-approval"


class FlowerVersionError(RuntimeError):
    pass


def installed_flower() -> str:
    return importlib.metadata.version("flwr")


def check_version() -> None:
    """FlowerVersionError unless the installed Flower is the one the patches were tested on."""
    found = installed_flower()
    if found != TESTED_FLOWER:
        raise FlowerVersionError(
            f"fedcmr was tested on Flower {TESTED_FLOWER} and changes some of its internals "
            f"(support/flower_patches.py); this environment has Flower {found}. Fix: "
            f"pip install 'flwr[simulation]=={TESTED_FLOWER}' (pyproject.toml pins it)")


def fast_object_pulls() -> None:
    """Pulls of objects not yet arrived wait PULL_FIRST_WAIT_S, doubling up to
    PULL_MAX_WAIT_S, for as long in all as Flower's own schedule would."""
    check_version()
    from flwr.supercore.inflatable import inflatable_utils

    for function in (inflatable_utils.pull_objects,
                     inflatable_utils.pull_and_inflate_object_from_tree):
        defaults = function.__kwdefaults__ or {}
        if missing := {"initial_backoff", "backoff_cap", "max_tries_per_object"} - set(defaults):
            raise FlowerVersionError(f"Flower's {function.__name__} has no {sorted(missing)}")
        defaults.update(initial_backoff=PULL_FIRST_WAIT_S, backoff_cap=PULL_MAX_WAIT_S,
                        max_tries_per_object=int(_FLOWER_PULL_PATIENCE_S / PULL_MAX_WAIT_S))


def prompt_heartbeat(interval: int = HEARTBEAT_S) -> None:
    """In a SuperNode, before it connects: it announces `interval` to the SuperLink and
    sends its heartbeats on that schedule (both read Flower's module-level constant)."""
    check_version()
    from flwr.common import constant
    from flwr.supercore import heartbeat
    from flwr.supernode import fleet_http_connection

    if not constant.HEARTBEAT_MIN_INTERVAL <= interval <= constant.HEARTBEAT_MAX_INTERVAL:
        raise ValueError(f"a heartbeat every {interval} s is outside the SuperLink's "
                         f"[{constant.HEARTBEAT_MIN_INTERVAL}, "
                         f"{constant.HEARTBEAT_MAX_INTERVAL}] s")
    for module in (heartbeat, fleet_http_connection):
        if not hasattr(module, "HEARTBEAT_DEFAULT_INTERVAL"):
            raise FlowerVersionError(f"{module.__name__} has no HEARTBEAT_DEFAULT_INTERVAL")
        module.HEARTBEAT_DEFAULT_INTERVAL = interval


def superlink_superexec_through(superlink_cli: types.ModuleType,
                                command: Callable[[list[str]], list[str]]) -> None:
    """The SuperLink (`superlink_cli`: flwr.superlink.cli.flower_superlink) starts its
    SuperExec as `command(flower's command)`."""
    check_version()
    build = getattr(superlink_cli, "_get_superexec_command", None)
    if not callable(build):
        raise FlowerVersionError("Flower's SuperLink has no _get_superexec_command")

    def through(*args, **kwargs) -> list[str]:
        return command(list(build(*args, **kwargs)))

    superlink_cli._get_superexec_command = through


def record_task_exits(executor: types.ModuleType,
                      note: Callable[[list[str], int, int], None]) -> None:
    """In a SuperExec: every process `executor` (Flower's subprocess executor module)
    starts is waited for by a thread, which calls `note(command, pid, returncode)` when it
    ends (returncode -N: ended by signal N)."""
    check_version()
    processes = executor.subprocess
    if not callable(getattr(processes, "Popen", None)):
        raise FlowerVersionError("Flower's subprocess executor no longer uses subprocess.Popen")

    def popen(args, *rest, **kwargs):
        process = processes.Popen(args, *rest, **kwargs)

        def wait() -> None:
            note(list(args), process.pid, process.wait())

        threading.Thread(target=wait, name=f"wait-{process.pid}", daemon=True).start()
        return process

    executor.subprocess = _module_with(processes, Popen=popen)


def _module_with(module: types.ModuleType, **replaced) -> types.SimpleNamespace:
    """`module`'s public names, with `replaced` ones swapped (for one Flower module only)."""
    return types.SimpleNamespace(**{**{n: getattr(module, n) for n in dir(module)
                                       if not n.startswith("__")}, **replaced})


def superexec_wakes_on_signal() -> None:
    """In a SuperExec, before Flower starts any thread: its wait between two checks for
    work ends when WAKE_SIGNAL arrives. The signal is blocked in every thread (they inherit
    the mask) and taken only by that wait (sigtimedwait), so it can neither end the process
    nor interrupt anything else; one sent while the SuperExec works waits for its next wait,
    which then ends at once."""
    check_version()
    from flwr.supercore.superexec import run_superexec

    if not hasattr(run_superexec, "time") or not hasattr(run_superexec, "run_superexec"):
        raise FlowerVersionError("Flower's run_superexec module no longer waits with `time`")
    signal.signal(WAKE_SIGNAL, lambda *_: None)  # never the default action (terminate)
    signal.pthread_sigmask(signal.SIG_BLOCK, {WAKE_SIGNAL})

    def sleep(seconds: float) -> None:
        signal.sigtimedwait({WAKE_SIGNAL}, max(seconds, 0.0))

    run_superexec.time = _module_with(run_superexec.time, sleep=sleep)


def catches(pid: int, sig: int = WAKE_SIGNAL) -> bool:
    """Whether process `pid` has a handler for `sig` now (Linux: /proc/PID/status SigCgt).
    A SuperExec still starting (its interpreter, a sitecustomize importing torch) has none
    yet, and the signal's default action would end it: it is then not signalled, and finds
    the message at its next check for work."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("SigCgt:"):
                return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
    except (OSError, ValueError, IndexError):
        pass
    return False


def wake_superexec(loop: types.ModuleType, superexec_pid: Callable[[], int | None]) -> None:
    """In a SuperNode whose SuperExec ran `superexec_wakes_on_signal`: after each message it
    pulls and stores (Flower's `_pull_and_store_message` in `loop`, its connection loop),
    send WAKE_SIGNAL to the pid `superexec_pid()` gives (None: not started yet)."""
    check_version()
    pull_and_store = loop._pull_and_store_message

    def pull_store_and_wake(*args, **kwargs):
        run_id = pull_and_store(*args, **kwargs)
        if run_id is not None and (pid := superexec_pid()) is not None and catches(pid):
            with contextlib.suppress(ProcessLookupError):  # it ended: nothing to wake
                os.kill(pid, WAKE_SIGNAL)
        return run_id

    loop._pull_and_store_message = pull_store_and_wake


def supernode_waits(loop: types.ModuleType, *, local: float = 0.02, first: float = 0.05,
                    busy_cap: float = 0.5, idle: float = 1.0, busy_for: float = 300.0) -> None:
    """The waits of the SuperNode's connection loop (`loop`:
    flwr.supernode.start_client_internal). Its 0.5 s waits are for its own ClientApp (the
    reply, then the reply's objects): checks of this process's memory, now every `local` s.
    Its 3 s wait follows a check of the SuperLink that found no message: now `first` s
    after a message, doubling up to `busy_cap` s while a message came in the last
    `busy_for` s (a run's next message follows within seconds), else `idle` s."""
    check_version()
    clock = loop.time
    pull = loop._pull_and_store_message
    if not callable(getattr(clock, "sleep", None)):
        raise FlowerVersionError("Flower's SuperNode loop no longer waits with `time.sleep`")
    state = {"wait": first, "last": float("-inf")}

    def pull_and_note(*args, **kwargs):
        run_id = pull(*args, **kwargs)
        if run_id is not None:
            state.update(wait=first, last=clock.monotonic())
        return run_id

    def sleep(seconds: float) -> None:
        if seconds < 3:  # its own ClientApp's reply
            clock.sleep(min(seconds, local))
        elif clock.monotonic() - state["last"] > busy_for:
            clock.sleep(min(seconds, idle))
        else:
            clock.sleep(state["wait"])
            state["wait"] = min(2 * state["wait"], busy_cap)

    loop._pull_and_store_message = pull_and_note
    loop.time = _module_with(clock, sleep=sleep)


def superexec_through(loop: types.ModuleType, command: Callable[[list[str]], list[str]]
                      ) -> Callable[[], int | None]:
    """The SuperNode (`loop`) starts its SuperExec as `command(flower's command)`; returns
    a function giving that process's pid while it runs (None before, or when `command` left
    Flower's command as it was)."""
    check_version()
    processes = loop.subprocess
    started: list = []

    def popen(flower_command, *args, **kwargs):
        ours = command(list(flower_command))
        process = processes.Popen(ours, *args, **kwargs)
        if ours != list(flower_command):
            started[:] = [process]
        return process

    loop.subprocess = _module_with(processes, Popen=popen)
    return lambda: started[0].pid if started and started[0].poll() is None else None


def trace_supernode(loop: types.ModuleType, note: Callable[[dict], None]) -> None:
    """Benchmarks only ($FEDCMR_TIMINGS): the SuperNode (`loop`) notes, on its own clock,
    when each message's head came from the SuperLink (`pulled`) and when the message was
    stored whole (`stored`), and for each reply when it found it ready (`reply_ready`) and
    when it had pushed it to the SuperLink (`pushed`), by the message's id."""
    check_version()
    pull_and_store, push = loop._pull_and_store_message, loop._push_messages

    def pull_and_store_traced(*args, receive, **kwargs):
        seen: dict = {}

        def receive_traced():
            got = receive()
            if got is not None:
                seen.update(message_id=got[0].metadata.message_id, pulled=time.time())
            return got

        run_id = pull_and_store(*args, receive=receive_traced, **kwargs)
        if seen:
            note({"event": "stored", **seen, "stored": time.time()})
        return run_id

    def push_traced(*args, send, **kwargs):
        replies: list[tuple[str, float]] = []

        def send_traced(message, *rest, **options):
            replies.append((message.metadata.reply_to_message_id, time.time()))
            return send(message, *rest, **options)

        push(*args, send=send_traced, **kwargs)
        done = time.time()
        for reply_to, ready in replies:
            note({"event": "pushed", "message_id": reply_to, "reply_ready": ready,
                  "pushed": done})

    loop._pull_and_store_message = pull_and_store_traced
    loop._push_messages = push_traced


def approve_bundles(loop: types.ModuleType, problem: Callable[[bytes], str | None],
                    refused: Callable[[str], None]) -> None:
    """In a SuperNode (`loop`: flwr.supernode.start_client_internal): a fetched app bundle
    whose content `problem` finds fault with (a line, else None) is reported to `refused`
    and refused by Flower itself before any of its code runs."""
    check_version()
    import dataclasses
    import inspect

    original = loop._pull_and_store_message
    if not {"get_fab", "trusted_entities"} <= set(inspect.signature(original).parameters):
        raise FlowerVersionError(
            "Flower's SuperNode loop no longer takes get_fab and trusted_entities, so the "
            "site's app bundle check cannot be installed (client/site/app_approval.py). Fix: "
            f"pip install 'flwr[simulation]=={TESTED_FLOWER}'")

    def pull_and_store_message(*, get_fab, trusted_entities, **kwargs):
        entities = dict(trusted_entities or {})  # a fresh one per call: filled on refusal

        def checked_get_fab(fab_hash: str, run_id: int):
            fab = get_fab(fab_hash, run_id)
            if (line := problem(fab.content)) is None:
                return fab
            refused(line)
            entities[_REFUSAL_ENTITY] = "refused"
            return dataclasses.replace(fab, verifications={})

        return original(get_fab=checked_get_fab, trusted_entities=entities, **kwargs)

    loop._pull_and_store_message = pull_and_store_message


def fork_clientapps(executor: types.ModuleType, processes: object) -> None:
    """In a SuperExec: Flower's subprocess executor (`executor`:
    flwr.supercore.superexec.executor.subprocess_executor) starts its processes with
    `processes.Popen` (client/runtime/superexec_main.py's ForkingSubprocess)."""
    check_version()
    if not callable(getattr(getattr(executor, "subprocess", None), "Popen", None)):
        raise FlowerVersionError("Flower's subprocess executor no longer uses subprocess.Popen")
    executor.subprocess = processes


def reset_after_fork() -> None:
    """In a ClientApp just forked from a SuperExec: none of the SuperExec's exit handlers
    runs here, and telemetry's lock is not one another thread held at the fork."""
    from flwr.supercore import telemetry
    from flwr.supercore.exit import exit_handler

    if not isinstance(getattr(exit_handler, "registered_exit_handlers", None), list) or \
            not hasattr(telemetry, "state_lock"):
        raise FlowerVersionError("Flower's exit handlers or telemetry lock have moved")
    exit_handler.registered_exit_handlers.clear()
    telemetry.state_lock = threading.Lock()


def wrap_superlink_apps(wrap: Callable[[object], object]) -> None:
    """Every ASGI app Flower's SuperLink builds (`flwr.superlink.main.create_app`) is
    served as `wrap(app)`."""
    check_version()
    from flwr.superlink import main as superlink_app

    build = getattr(superlink_app, "create_app", None)
    if not callable(build):
        raise FlowerVersionError("Flower's SuperLink no longer builds its app with create_app")

    def create_app(*args, **kwargs):
        return wrap(build(*args, **kwargs))

    superlink_app.create_app = create_app


def apply() -> None:
    """Every patch a process of fedcmr's (ServerApp, SuperNode, ClientApp) needs."""
    fast_object_pulls()

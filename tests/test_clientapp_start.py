"""How a site starts a ClientApp per message (client/runtime/superexec_main.py): forked from a
SuperExec that imported torch once, or, with FEDCMR_CLIENTAPP_START=exec, as Flower's own
fresh process. The federation tests run the forked path end to end
(test_federation.py checks that every message's ClientApp was forked)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from fedcmr.client.runtime.superexec_main import (
    START_ENV,
    SUPEREXEC_MAIN,
    ForkingSubprocess,
    start_mode,
    superexec_command,
)
from fedcmr.support.flower_env import tool


def wait_reaped(processes: ForkingSubprocess, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while processes.children and time.monotonic() < deadline:
        time.sleep(0.1)
        processes.reap()
    assert not processes.children, "the forked ClientApp did not end"


def test_a_clientapp_is_forked_runs_flowers_own_code_and_is_reaped(capfd):
    processes = ForkingSubprocess()
    started = processes.Popen([tool("flwr-clientapp"), "--help"])
    assert started.pid in processes.children
    wait_reaped(processes)
    assert processes.exits == {started.pid: 0}
    out = capfd.readouterr().out
    # Flower's flwr-clientapp parsed the arguments it was given, in the child
    assert "usage: flwr-clientapp" in out and "--runtime-api-address" in out, out[-2000:]


def test_a_forked_clientapp_that_fails_ends_alone(capfd):
    processes = ForkingSubprocess()
    failed = processes.Popen(["flwr-clientapp", "--no-such-flag"])
    wait_reaped(processes)
    assert processes.exits[failed.pid] == 2  # argparse's exit code, from the child
    assert "flwr-clientapp: error:" in capfd.readouterr().err
    # this process (the SuperExec's place) carries on and can start the next one
    processes.Popen(["flwr-clientapp", "--help"], stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL)
    wait_reaped(processes)
    assert "usage" not in capfd.readouterr().out  # Flower's suppress_output is kept


def test_other_commands_start_as_usual():
    started = ForkingSubprocess().Popen([sys.executable, "-c", "print('plain')"],
                                        stdout=subprocess.PIPE, text=True)
    assert isinstance(started, subprocess.Popen)
    assert started.communicate(timeout=60)[0].strip() == "plain"
    assert ForkingSubprocess().DEVNULL is subprocess.DEVNULL


def test_the_superexec_runs_through_fedcmr_unless_exec_is_asked(monkeypatch):
    flower = ["flower-superexec", "--insecure", "--runtime-api-address", "127.0.0.1:9094"]
    monkeypatch.delenv(START_ENV, raising=False)
    assert superexec_command(flower) == [sys.executable, "-c", SUPEREXEC_MAIN, *flower]
    assert superexec_command(["flwr-serverapp", "--insecure"]) == ["flwr-serverapp",
                                                                   "--insecure"]
    monkeypatch.setenv(START_ENV, "exec")
    assert superexec_command(flower) == flower
    monkeypatch.setenv(START_ENV, "spawn")
    with pytest.raises(SystemExit, match=f"{START_ENV}='spawn'.*'fork'.*'exec'"):
        start_mode()

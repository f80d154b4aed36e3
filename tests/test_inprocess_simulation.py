"""support/inprocess_simulation.py: Flower's simulation engine inside this process, with
apps small enough to see every message: each node gets its partition id and the fused run
config, replies come back through Flower's grid, a ClientApp failure comes back as an error
reply (as from a Ray actor), a ServerApp failure is raised to the caller, and nothing is
started (no process, no Ray)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from fedcmr.common.app_bundle import app_dir
from fedcmr.support.inprocess_simulation import run_in_process


def echo_client(fail_partition: int | None = None) -> ClientApp:
    app = ClientApp()

    @app.query()
    def answer(msg: Message, context: Context) -> Message:
        partition = int(context.node_config["partition-id"])
        if partition == fail_partition:
            raise RuntimeError("this site fails")
        reply = ConfigRecord({"partition": partition, "pid": os.getpid(),
                              "strategy": str(context.run_config["strategy"]),
                              "asked": int(msg.content["config"]["n"])})
        return Message(RecordDict({"config": reply}), reply_to=msg)

    return app


def asking_server(seen: dict) -> ServerApp:
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        nodes = sorted(grid.get_node_ids())
        seen["run_config"] = dict(context.run_config)
        for n in (1, 2):  # two exchanges, as rounds are
            messages = [Message(RecordDict({"config": ConfigRecord({"n": n})}),
                                dst_node_id=node, message_type="query") for node in nodes]
            replies = list(grid.send_and_receive(messages, timeout=60))
            seen.setdefault("replies", []).append(replies)
        if seen.get("raise"):
            raise ValueError("the ServerApp fails")

    return app


def test_every_node_answers_in_this_process_with_the_fused_config():
    seen: dict = {}
    run_in_process(asking_server(seen), echo_client(), {"strategy": "equal-vote"}, 3,
                   app_dir())
    assert seen["run_config"]["strategy"] == "equal-vote"
    assert "round-timeout" in seen["run_config"]  # pyproject's default, fused in
    for n, replies in enumerate(seen["replies"], start=1):
        answers = sorted((r.content["config"]["partition"], r.content["config"]["asked"],
                          r.content["config"]["pid"], r.content["config"]["strategy"])
                         for r in replies)
        assert answers == [(p, n, os.getpid(), "equal-vote") for p in range(3)]


def test_a_failing_site_is_an_error_reply_and_a_failing_serverapp_is_raised():
    seen: dict = {"raise": True}
    with pytest.raises(ValueError, match="the ServerApp fails"):
        run_in_process(asking_server(seen), echo_client(fail_partition=1), {}, 3, app_dir())
    replies = seen["replies"][0]
    assert sum(r.has_error() for r in replies) == 1
    assert "this site fails" in next(r.error.reason for r in replies if r.has_error())


def test_a_key_the_app_does_not_know_is_refused(tmp_path: Path):
    with pytest.raises(ValueError, match="no-such-key"):
        run_in_process(asking_server({}), echo_client(), {"no-such-key": 1}, 1, app_dir())

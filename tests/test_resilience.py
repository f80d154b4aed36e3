"""Faults against real processes (`fedcmr federate`: a SuperLink, one SuperNode per hospital,
the ServerApp and ClientApps; `fedcmr server` and a `fedcmr client` per hospital): a site
killed for good, too few sites, the coordinator killed and the run resumed bit for bit with
the hospitals registering again by themselves, processes left by a killed launcher. The
federations train the tests' toy model (tests/toy_model.py): what these tests check is the
federation's handling of faults, which is the same for every model plug-in."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from cache_factory import write_cohort
from process_tools import (
    ENV,
    TOY,
    TOY_ENV,
    checkpoint_round,
    descendants,
    finish,
    hospital,
    kill_tree,
    our_processes,
    poisoned,
    processes,
    server_command,
    site_node,
    start,
    stop_all,
    wait_for,
)

from fedcmr.support.flower_env import tool
from fedcmr.support.ports import free_port

pytestmark = pytest.mark.slow
SIZES = {"Alpha": (6, 6), "Bravo": (7, 7), "Charlie": (6, 6)}


@pytest.fixture(scope="module")
def caches(tmp_path_factory) -> list[Path]:
    return write_cohort(tmp_path_factory.mktemp("caches"), SIZES)


def federate(caches: list[Path], run_dir: Path, *extra: str,
             env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [tool("fedcmr"), "-q", "federate", "--cache", *map(str, caches), "--profile", "smoke",
         "--fold", "0", "--min-subjects", "3", "--out", str(run_dir), *TOY, *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env or TOY_ENV,
        start_new_session=True)


def rows_by_round(run_dir: Path) -> dict[int, list[dict[str, str]]]:
    with (run_dir / "rounds.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    out: dict[int, list[dict[str, str]]] = {}
    for row in rows:
        out.setdefault(int(row["round"]), []).append(row)
    return out


def rounds_by_site(run_dir: Path) -> dict[int, set[str]]:
    return {rnd: {r["site"] for r in rows} for rnd, rows in rows_by_round(run_dir).items()}


def test_a_lost_site_stops_a_run_needing_it_and_a_resume_reports_without_it(caches, tmp_path):
    """Charlie's SuperNode (and its ClientApp) is SIGKILLed after round 1, while it holds
    back its round-2 reply (tests/poison/: the kill lands in round 2 however fast the toy
    trains). With min-sites 3 the run stops, naming Charlie, and keeps its checkpoint;
    resumed with min-sites 2 and without Charlie's hospital, it finishes and says that the
    figures miss Charlie: in the last line, in metrics.json, in the exit code."""
    run_dir = tmp_path / "run"
    common = ["--epochs", "2", "--round-timeout", "60", "--rejoin-timeout", "5"]
    proc = federate(caches, run_dir, *common, "--min-sites", "3",
                    env=poisoned("Charlie=none,stall", 300))
    wait_for(lambda: checkpoint_round(run_dir) >= 1, 600, "round 1", proc)
    node = wait_for(lambda: site_node("Charlie"), 10, "Charlie's SuperNode")
    kill_tree(node)
    out = finish(proc)
    assert proc.returncode == 1, out[-3000:]
    last = out.strip().splitlines()[-1]
    assert "fewer than min-sites (3)" in last and "Charlie" in last and "--resume" in last
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "stopped" and "Charlie" in status["reason"]
    assert checkpoint_round(run_dir) >= 1
    assert our_processes(run_dir) == []

    # Charlie's hospital stays down: the coordinator resumes with the two others
    proc = federate(caches[:2], run_dir, *common, "--min-sites", "2", "--resume")
    out = finish(proc)
    assert proc.returncode == 4, out[-3000:]
    assert "the figures cover 2 of 3 sites: Alpha, Bravo; lost: Charlie" in out.splitlines()[-1]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["sites"]["covered"] == ["Alpha", "Bravo"]
    assert list(metrics["sites"]["lost"]) == ["Charlie"]
    assert set(metrics["auc"]) == {"total", "Alpha", "Bravo"}
    by_round = rounds_by_site(run_dir)
    assert by_round[1] == {"Alpha", "Bravo", "Charlie"}  # kept from the first attempt
    assert all(sites == {"Alpha", "Bravo"} for r, sites in by_round.items() if r > 1)
    events = [json.loads(line) for line in
              (run_dir / "site_events.jsonl").read_text().splitlines()]
    assert {(e["site"], e["event"]) for e in events} == {("Charlie", "lost")}
    assert "resuming after round" in (run_dir / "logs" / "run.log").read_text()
    assert our_processes(run_dir) == []


def test_bad_updates_from_a_real_site_are_rejected_and_the_rounds_go_on(caches, tmp_path):
    """Bravo's real ClientApp processes spoil its updates (tests/poison/): NaN in round 1, a
    reply to another round in round 2. The coordinator rejects each before aggregation,
    logs the site and the reason, lists it in the audit trail, and the rounds go on with
    Alpha under Flower's FedMedian (`--strategy median`, `--min-sites 1`); Bravo is still
    tested. (Every other rule, the norm rule included: tests/test_update_checks.py.)"""
    run_dir = tmp_path / "run"
    proc = federate(caches[:2], run_dir, "--epochs", "2", "--strategy", "median",
                    "--min-sites", "1", env=poisoned("Bravo=nan,round"))
    out = finish(proc)
    assert proc.returncode == 0, out[-3000:]
    assert rounds_by_site(run_dir) == {1: {"Alpha"}, 2: {"Alpha"}}
    audit = [json.loads(line) for line in (run_dir / "audit.jsonl").read_text().splitlines()]
    reasons = {(r["round"], r["site"]): r["reason"] for row in audit for r in row["rejected"]}
    assert sorted(reasons) == [(1, "Bravo"), (2, "Bravo")], reasons
    assert reasons[1, "Bravo"].endswith("holds NaN or Inf")
    assert reasons[2, "Bravo"] == "a reply to round 7, not to round 2"
    assert all(row["model_before"] != row["model_after"] for row in audit)
    log = (run_dir / "logs" / "run.log").read_text()
    assert f"round 2: rejected the update of site Bravo: {reasons[2, 'Bravo']}" in log
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["sites"]["covered"] == ["Alpha", "Bravo"]
    assert our_processes(run_dir) == []


def test_a_serverapp_killed_by_a_signal_is_named_with_the_resume_hint(caches, tmp_path):
    """The ServerApp process is SIGKILLed in round 2 (as the kernel's out-of-memory killer
    ends a process): the launcher's last line names the process, the signal and --resume
    at once (Flower alone said "ended finished:failed", a minute later), and nothing is
    left running. (That --resume then finishes the run: the killed-coordinator test.)"""
    run_dir = tmp_path / "run"
    args = ["--epochs", "2", "--round-timeout", "120"]
    # round 2 is still running when it is killed
    proc = federate(caches[:2], run_dir, *args, env=poisoned("Alpha=none,stall", 30))
    wait_for(lambda: checkpoint_round(run_dir) >= 1, 600, "round 1", proc)
    table = processes()
    app = next(p for p in descendants(proc.pid, table) if "flwr-serverapp" in table[p][2])
    kill_tree(app)
    out = finish(proc, 300)
    assert proc.returncode == 1, out[-3000:]
    last = out.strip().splitlines()[-1]
    assert f"the ServerApp (pid {app}) was ended by SIGKILL" in last, last
    assert "rerun the same command with --resume" in last, last
    time.sleep(1)
    assert our_processes(run_dir) == []
    assert checkpoint_round(run_dir) == 1


def superlink_of(run_dir: Path) -> int | None:
    for pid, (_, state, cmdline) in processes().items():
        if state != "Z" and "flower-superlink" in cmdline:
            try:
                if Path(f"/proc/{pid}/cwd").resolve() == run_dir.resolve():
                    return pid
            except OSError:
                continue
    return None


def test_a_coordinator_killed_after_round_1_resumes_to_the_same_bits(caches, tmp_path):
    """The reference: an uninterrupted 2-round `fedcmr federate` of two hospitals. The same
    run deployed (`fedcmr server`, a `fedcmr client` per hospital) loses its SuperLink to
    SIGKILL after round 1, while Alpha holds back its round-2 reply for a few seconds
    (tests/poison/: the kill lands in round 2 however fast the toy trains; the reply itself
    is the honest one): the server exits naming --resume and leaves no process (not even
    the orphaned flwr-serverapp); without --resume the folder is refused; with --resume the
    run continues, each hospital's client registers again by itself (the new SuperLink does
    not know its node), and the best model, the predictions and the model hashes round by
    round equal the reference's bit for bit."""
    args = ["--epochs", "2", "--round-timeout", "120"]
    caches = caches[:2]  # two hospitals: the least that federates, the quickest to run
    reference = tmp_path / "reference"
    proc = federate(caches, reference, *args)
    out = finish(proc)
    assert proc.returncode == 0, out[-3000:]
    for sites in rows_by_round(reference).values():  # FedAvg: site k weighs n_k / sum(n)
        total = sum(int(r["n_k"]) for r in sites)
        assert len(sites) == 2 and all(float(r["weight"]) == pytest.approx(
            int(r["n_k"]) / total, abs=1e-5) for r in sites)

    run_dir, port, logs = tmp_path / "killed", free_port(), tmp_path / "logs"
    logs.mkdir()
    sites = dict(zip(("Alpha", "Bravo"), caches, strict=True))
    command = server_command(run_dir, port, len(sites), *TOY, *args)
    proc = start(command, TOY_ENV)
    stalls = poisoned("Alpha=none,stall", 6)
    clients = {s: hospital(s, cache, f"127.0.0.1:{port}", tmp_path / "sites" / s,
                           "--max-wait-time", "300", log=logs / f"{s}.log", env=stalls)
               for s, cache in sites.items()}
    try:
        wait_for(lambda: checkpoint_round(run_dir) >= 1, 600, "round 1", proc)
        kill_tree(superlink_of(run_dir), signal.SIGKILL)
        out = finish(proc, 120)
        assert proc.returncode == 1 and "--resume" in out, out[-3000:]
        time.sleep(1)
        assert our_processes(run_dir) == []
        assert not (run_dir / "metrics.json").exists()
        # without --resume the folder is refused, not overwritten
        again = subprocess.run(command, capture_output=True, text=True, env=TOY_ENV,
                               timeout=120)
        assert again.returncode == 2 and "--resume" in again.stderr + again.stdout

        proc = start([*command, "--resume"], TOY_ENV)
        out = finish(proc)
        assert proc.returncode == 0, out[-3000:]
        for site, client in clients.items():  # each stops by itself once the run is over
            assert client.wait(timeout=120) == 0, (site, (logs / f"{site}.log").read_text())
    finally:
        stop_all(proc, *clients.values())
    assert "resuming after round" in (run_dir / "logs" / "run.log").read_text()
    for site in sites:
        assert "registering again as a new node" in (logs / f"{site}.log").read_text()
        ours = tmp_path / "sites" / site / "fold_0" / "predictions.csv"
        theirs = reference / "sites" / site.lower() / "fold_0" / "predictions.csv"
        assert ours.read_bytes() == theirs.read_bytes(), site
    ours = torch.load(run_dir / "fold_0" / "best_model.pt")
    theirs = torch.load(reference / "fold_0" / "best_model.pt")
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)

    def hashes(run: Path) -> list[tuple]:
        rows = [json.loads(line) for line in (run / "audit.jsonl").read_text().splitlines()]
        return [(r["round"], r["model_before"], r["model_after"]) for r in rows]

    assert hashes(run_dir) == hashes(reference)
    assert len(hashes(reference)) == 2
    assert our_processes(tmp_path) == []


def test_a_relaunch_stops_what_a_killed_launcher_left_running(tmp_path):
    """A launcher killed with SIGKILL cannot stop its children; the next launcher in the
    same folder does, before it starts anything (and never a process that reused a pid)."""
    from fedcmr.server.processes import ProcessGroup

    first = ProcessGroup(tmp_path, dict(ENV))
    child = first.spawn("sleeper", [sys.executable, "-c", "import time; time.sleep(600)"])
    assert json.loads(first.pid_file.read_text())  # listed while it runs
    second = ProcessGroup(tmp_path, dict(ENV))  # the killed launcher's successor
    assert second.stop_leftovers() == [child.pid]
    assert child.wait(timeout=10) == -signal.SIGTERM
    assert not first.pid_file.exists()
    # an entry whose pid now names another process (other start time) is left alone
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        first.pid_file.write_text(json.dumps([[other.pid, 1]]))
        assert ProcessGroup(tmp_path, dict(ENV)).stop_leftovers() == []
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()


def test_a_relaunch_stops_a_flower_process_its_killed_launcher_never_listed(tmp_path):
    """A process started in the last second before the launcher died (not in pids.json
    yet: a study killed just as its federation started the simulation) would go on writing
    in the run folder once the next claimant starts afresh there. Any fedcmr or Flower
    process working in the folder is stopped; anything else working there, or a Flower
    process working elsewhere, is not."""
    from fedcmr.server.processes import ProcessGroup

    sleep = [sys.executable, "-c", "import time; time.sleep(600)"]
    run, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
    (run / "fold_0").mkdir(parents=True)
    elsewhere.mkdir()
    late = subprocess.Popen([*sleep, "flwr-simulation"], cwd=run / "fold_0")
    shell = subprocess.Popen(["sleep", "600"], cwd=run)  # a user's, say
    other_run = subprocess.Popen([*sleep, "flwr-simulation"], cwd=elsewhere)
    try:
        group = ProcessGroup(run, dict(ENV))
        assert not group.pid_file.exists()  # the defence off: nothing listed, nothing stopped
        assert group.stop_leftovers() == [late.pid]
        assert late.wait(timeout=10) == -signal.SIGTERM
        assert shell.poll() is None and other_run.poll() is None
    finally:
        for proc in (late, shell, other_run):
            proc.kill()
            proc.wait()

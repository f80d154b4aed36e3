"""`fedcmr study` as a coordinator runs it: real processes on real (tiny) caches.

One uninterrupted study, worked on by two processes at once, is the reference; a second
study is killed with SIGKILL in the middle of its federated cell (after its first round), run
again, continues that cell from its checkpoint and must give the same results.csv, with
nothing the killed process started left running. A third runs on a Ray cluster of two
nodes, loses the node running its federated cell, and must give the same results.csv too."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from cache_factory import write_cohort
from process_tools import our_processes

from fedcmr.lab.study import layout

pytestmark = pytest.mark.slow

STUDY = """
name = "kill-test"
profile = "smoke"
site_policy = "deploy/synthetic-site-policy.toml"
bootstrap = 200
[axes]
folds = [0]
[[block]]
framework = ["cds"]
seed = [0, 1]
[[block]]
framework = ["fedavg"]
seed = [0]
"""
CODE = "from fedcmr.cli import main; import sys; sys.exit(main(sys.argv[1:]))"


def study(config: Path, out: Path, caches: list[Path], *extra: str) -> subprocess.Popen:
    log = (out.parent / f"{out.name}-{time.monotonic_ns()}.log").open("w")
    return subprocess.Popen([sys.executable, "-c", CODE, "-q", "study", "--config",
                             str(config), "--out", str(out), "--cache", *map(str, caches),
                             "--no-report", *extra], stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def rows(out: Path) -> list[dict]:
    """results.csv without the wall time, which differs from run to run."""
    with (out / layout.RESULTS_CSV).open() as handle:
        return [{k: v for k, v in r.items() if k != "wall_s"} for r in csv.DictReader(handle)]


def running(pid: int) -> bool:
    """Alive and not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def attempts(out: Path, key: str = "pid") -> dict[str, list]:
    """cell -> each attempt's `key` (pid; node: the Ray node it ran on)."""
    found = {}
    for cell in sorted((out / layout.CELLS).iterdir()):
        lines = (cell / "attempts.jsonl").read_text().splitlines()
        found[cell.name] = [json.loads(line).get(key) for line in lines]
    return found


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    config = root / "study.toml"
    config.write_text(textwrap.dedent(STUDY))
    return config, write_cohort(root / "caches"), root


@pytest.fixture(scope="module")
def reference(setup):
    """The study worked on by two processes at once, uninterrupted."""
    config, caches, root = setup
    out = root / "reference"
    procs = [study(config, out, caches) for _ in range(2)]
    assert [p.wait(timeout=900) for p in procs] == [0, 0]
    return out


def test_two_processes_never_run_the_same_cell(reference):
    tried = attempts(reference)
    assert len(tried) == 3
    assert all(len(pids) == 1 for pids in tried.values()), tried
    table = rows(reference)
    assert {r["framework"] for r in table} == {"cds", "fedavg"}
    # each cell: the total and one row per test centre
    assert len(table) == 3 * 5
    assert {r["centre"] for r in table} == {"total", "Alpha", "Bravo", "Charlie", "Delta"}


def test_a_study_killed_mid_cell_resumes_to_the_same_results(setup, reference):
    config, caches, root = setup
    out = root / "killed"
    first = study(config, out, caches)
    fl_cell = None
    deadline = time.monotonic() + 600
    while fl_cell is None and time.monotonic() < deadline:  # round 1 of the federation done
        assert first.poll() is None, "the study ended before it could be killed"
        found = list((out / layout.CELLS).glob("fedavg*/run/checkpoint/fold_0.pt"))
        if found:
            fl_cell = found[0].parents[2]
        time.sleep(0.05)
    assert fl_cell is not None, "the federated cell never checkpointed a round"
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert not (fl_cell / layout.RESULT_JSON).exists()
    # the in-process runtime started nothing: the federation died with the study (the
    # simulation and deployment runtimes' orphans: test_resilience.py's relaunch test)
    assert not (fl_cell / "run/logs/pids.json").exists()
    assert our_processes(fl_cell) == []
    resumed = study(config, out, caches)
    assert resumed.wait(timeout=900) == 0
    assert rows(out) == rows(reference)
    assert "resuming after round" in (fl_cell / "cell.log").read_text()
    tried = attempts(out)
    assert len(tried[fl_cell.name]) == 2  # killed, then resumed from its checkpoint
    assert sum(len(p) for p in tried.values()) <= 4  # nothing finished is run again


def test_the_real_studys_report_renders_with_its_tables_and_figures(reference):
    """The report of a study that really ran (not the report tests' synthetic folder),
    through the command as a coordinator calls it after the cells are done."""
    done = subprocess.run([sys.executable, "-c", CODE, "-q", "study", "--config",
                           str(reference.parent / "study.toml"), "--out", str(reference),
                           "--cache", *map(str, sorted((reference.parent / "caches").iterdir())),
                           "--report-only"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    text = (reference / layout.REPORT_MD).read_text()
    assert "**Table 2" in text and "**Table 3" in text
    assert "**Table 4" in text and "absent" in text  # this grid has no LCO cell
    for figure in ("auc_by_setup", "roc_ccv", "harmonisation", "training_curves",
                   "site_weights"):
        assert f"figures/{figure}.png" in text
        assert (reference / layout.FIGURES / f"{figure}.png").stat().st_size > 1000
    from fedcmr.lab.study.report_browser import check_page, chromium

    if chromium() is None and os.environ.get("CI", "").lower() not in ("1", "true", "yes"):
        pytest.skip("no Chromium at /usr/bin/chromium (apt-get install -y chromium)")
    page = check_page(reference / layout.REPORT_HTML)
    assert page["broken"] == [] and len(page["loaded"]) == 5
    assert page["tables"] >= 4 and page["external"] == []


def test_workers_share_the_cells_and_die_with_their_study(setup, reference):
    """--workers 2: a second process claims cells beside the first; SIGKILL of the study
    ends its worker too (no process left claiming cells), and the rerun finishes the
    same cells with the same results."""
    config, caches, root = setup
    out = root / "workers"
    first = study(config, out, caches, "--workers", "2", "--only", "framework=cds")
    holders: set[int] = set()
    deadline = time.monotonic() + 300
    while len(holders) < 2 and time.monotonic() < deadline:
        assert first.poll() is None, "the study ended before both processes held a cell"
        for claim in (out / layout.CELLS).glob(f"*/{layout.CLAIM_JSON}"):
            with contextlib.suppress(OSError, ValueError):  # released or being written now
                holders.add(json.loads(claim.read_text())["pid"])
        time.sleep(0.05)
    assert first.pid in holders and len(holders) == 2, holders
    worker = (holders - {first.pid}).pop()
    first.send_signal(signal.SIGKILL)
    first.wait()
    deadline = time.monotonic() + 10
    while running(worker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not running(worker), "the worker outlived its study"
    assert study(config, out, caches, "--workers", "2", "--only",
                 "framework=cds").wait(timeout=600) == 0
    cds = [r for r in rows(reference) if r["framework"] == "cds"]
    assert [r for r in rows(out) if r["framework"] == "cds"] == cds


def test_a_study_on_a_ray_cluster_loses_a_node_and_gives_the_same_results(setup, reference):
    """`fedcmr study --ray ADDRESS` on a local Ray cluster: a head that runs no cell and two
    one-CPU nodes. The cells run on both nodes; the node running the federated cell is
    removed (its raylet and worker processes killed) once the cell has checkpointed round 1;
    Ray retries the cell on the other node, which continues it from the checkpoint, and
    results.csv equals the reference's (one process, no Ray)."""
    from ray.cluster_utils import Cluster

    config, caches, root = setup
    out = root / "ray"
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "include_dashboard": False, "temp_dir": str(root / "ray-tmp")})
    try:
        nodes = {node.node_id: node for node in (cluster.add_node(num_cpus=1)
                                                for _ in range(2))}
        cluster.wait_for_nodes()
        driver = study(config, out, caches, "--ray", cluster.address)
        checkpoint, deadline = None, time.monotonic() + 600
        while checkpoint is None and time.monotonic() < deadline:
            assert driver.poll() is None, "the study ended before its node could be removed"
            found = list((out / layout.CELLS).glob("fedavg*/run/checkpoint/fold_0.pt"))
            checkpoint = found[0] if found else None
            time.sleep(0.05)
        assert checkpoint is not None, "the federated cell never checkpointed a round"
        fl_cell = checkpoint.parents[2]
        victim = attempts(out, "node")[fl_cell.name][-1]
        cluster.remove_node(nodes[victim])
        assert driver.wait(timeout=900) == 0
    finally:
        cluster.shutdown()
    assert rows(out) == rows(reference)
    ran_on = attempts(out, "node")
    assert set(nodes) == {node for tried in ran_on.values() for node in tried}, ran_on
    survivor = (set(nodes) - {victim}).pop()
    assert ran_on[fl_cell.name] == [victim, survivor]  # retried on the other node
    assert "resuming after round" in (fl_cell / "cell.log").read_text()
    assert all(len(tried) == 1 for name, tried in ran_on.items() if name != fl_cell.name)

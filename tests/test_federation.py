"""End to end: three hospitals as separate SuperNode processes on loopback, a SuperLink, the
run submitted with `flwr run`; equal-vote (as `fedcmr federate`) and tempered votes (FedAvg:
test_resilience.py); TLS + node authentication; nothing left."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import golden
import pytest
from cache_factory import write_cohort
from process_tools import (
    TOY_ENV,
    finish,
    hospital,
    kill_tree,
    our_processes,
    server_command,
    wait_for,
)

from fedcmr.client.site.keys import key_paths
from fedcmr.common.replies import ANY_KEY, REPLY_ALLOWED
from fedcmr.common.run_config import RunConfig
from fedcmr.lab.local_federation import run_local_federation, sites_from_caches
from fedcmr.server.settings import FederationSettings
from fedcmr.support.flower_env import tool
from fedcmr.support.ports import free_port, port_is_free

pytestmark = pytest.mark.slow
#: Three hospitals: the least with a site in the middle of the votes, each extra one costs a
#: ClientApp start per message on two cores (test_network_faults.py runs four).
SIZES = {"Alpha": (6, 6), "Bravo": (7, 7), "Charlie": (5, 6)}
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def caches(tmp_path_factory) -> list[Path]:
    return write_cohort(tmp_path_factory.mktemp("caches"), SIZES)


def settings(strategy: str, alpha: float = 1.0, epochs: int | None = None
             ) -> FederationSettings:
    run = RunConfig(profile="smoke", folds=(0,), min_subjects=3, epochs=epochs)
    return FederationSettings(strategy=strategy, vote_alpha=alpha, round_timeout=300, run=run)


def check_run(run_dir: Path, alpha: float, predictions: bool = True) -> None:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics["auc"]) == {"total", *SIZES}
    assert metrics["n"]["total"]["frames"] == sum(m["frames"] for c, m in metrics["n"].items()
                                                  if c != "total")
    if predictions:  # the local launcher gathers the sites' predictions; a server cannot
        with (run_dir / "predictions.csv").open() as handle:
            rows = list(csv.DictReader(handle))
        assert len(rows) == metrics["n"]["total"]["frames"]
        assert set(rows[0]) == {"subject", "centre", "phase", "fold", "label", "score"}
    # the model that scored the test sets was trained (round 0 is the initialisation), and
    # the rule that kept it is recorded where a reader looks (server/selection.py)
    summary = json.loads((run_dir / "fold_0" / "summary.json").read_text())
    assert summary["best_round"] >= 1
    assert [{"fold": 0, **summary["selection"]}] == metrics["selection"]
    assert summary["selection"]["best_round"] == summary["best_round"]
    with (run_dir / "rounds.csv").open() as handle:
        rounds = list(csv.DictReader(handle))
    for rnd in {r["round"] for r in rounds}:
        this = {r["site"]: r for r in rounds if r["round"] == rnd}
        assert set(this) == set(SIZES)
        votes = {s: int(r["n_k"]) ** alpha for s, r in this.items()}
        for site, row in this.items():
            assert float(row["weight"]) == pytest.approx(votes[site] / sum(votes.values()),
                                                         abs=1e-5)
    check_audit(run_dir)


def check_audit(run_dir: Path) -> None:
    """Every reply every hospital sent: only the protocol's allowed records and keys, and an
    audit log at every hospital (a site whose gate was bypassed would have none)."""
    logs = {p.parent.name: p for p in (run_dir / "sites").glob("*/audit.jsonl")}
    assert sorted(logs) == sorted(name.lower() for name in SIZES)
    for log in logs.values():
        seen = set()
        for line in log.read_text().splitlines():
            entry = json.loads(line)
            seen.add(entry["type"])
            assert entry["blocked"] == []
            allowed = REPLY_ALLOWED[entry["type"]]
            for name, record in entry["records"].items():
                keys = record["keys"]
                if ANY_KEY not in allowed[name]:
                    assert set(keys) <= allowed[name], (entry["type"], name, keys)
                else:
                    assert record["type"] == "arrays"
        assert seen == {"query.describe", "query.nyul", "train", "query.test"} | (
            seen & {"query.validate", "query.finished"}), log


@pytest.fixture(scope="module")
def equal_vote_run(caches, tmp_path_factory) -> Path:
    """One equal-vote run as a user starts it (`fedcmr federate`, exit code 0, the AUC
    table), shared by the tests that compare with it. FedAvg end to end: test_resilience."""
    run_dir = tmp_path_factory.mktemp("deployment") / "equal-vote"
    done = subprocess.run(
        [tool("fedcmr"), "-q", "federate", "--cache", *map(str, caches), "--strategy",
         "equal-vote", "--profile", "smoke", "--fold", "0", "--min-subjects", "3",
         "--round-timeout", "300", "--out", str(run_dir)], capture_output=True, text=True,
        timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "total" in done.stdout  # the AUC table
    return run_dir


def test_hospitals_as_separate_processes_leave_nothing_running(equal_vote_run):
    check_run(equal_vote_run, 0.0)
    golden.check("fl_deployment_cnn_equal_vote", equal_vote_run / "predictions.csv")
    assert our_processes(equal_vote_run) == []
    # nothing of the run in shared memory (no site keeps a channel or a folder there)
    began = (equal_vote_run / ".flwr" / "config.toml").stat().st_mtime  # at the start
    assert [p for p in Path("/dev/shm").glob("fedcmr*") if p.stat().st_mtime >= began] == []
    # every message's ClientApp was forked from its site's SuperExec (superexec_main.py)
    for log in (equal_vote_run / "logs").glob("supernode-*.log"):
        text = log.read_text()
        forked = text.count("fedcmr: ClientApp forked")
        assert forked == text.count("Start `flwr-clientapp` process") > 0, log.name
    # every port our processes used is free again
    # (not the clients' ephemeral ports in the SuperLink's access log: TIME_WAIT holds those)
    texts = ["\n".join(line for line in p.read_text().splitlines() if "uvicorn.access" not in line)
             for p in (equal_vote_run / "logs").glob("*.log")]
    texts.append((equal_vote_run / ".flwr" / "config.toml").read_text().replace('"', " "))
    ports = {int(word[10:]) for text in texts for word in text.split()
             if word.startswith("127.0.0.1:") and word[10:].isdigit()}
    assert ports, "no 127.0.0.1:PORT found in the logs or connection: nothing was checked"
    assert [p for p in ports if not port_is_free(p)] == []


def ray_processes() -> set[int]:
    names = {"raylet", "gcs_server"}
    found = set()
    for proc in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            if (proc / "comm").read_text().strip() in names:
                found.add(int(proc.name))
    return found


def test_simulation_runtime_gives_the_deployment_results(caches, equal_vote_run, tmp_path):
    """The same app on Flower's Ray runtime: the same predictions as three SuperNode
    processes (same seeds, one thread per site), the same audit, and no Ray left behind."""
    ray_before = ray_processes()
    run_dir = tmp_path / "simulation"
    echoed: list[str] = []
    run_local_federation(caches, settings("equal-vote", 0.0), run_dir, echo=echoed.append,
                         runtime="simulation")
    check_run(run_dir, 0.0)
    assert any("round 1" in line for line in echoed)  # progress reaches the console
    assert our_processes(run_dir) == []
    assert ray_processes() <= ray_before

    simulated, deployed = scores(run_dir), scores(equal_vote_run)
    assert simulated.keys() == deployed.keys()
    for key, value in simulated.items():
        assert float(value) == pytest.approx(float(deployed[key]), abs=1e-5), key


def test_in_process_runtime_gives_the_deployment_results(caches, equal_vote_run, tmp_path):
    """The same app on Flower's simulation engine inside this process (a study's cells):
    the same predictions as three SuperNode processes, the same checks, with no process and
    no Ray started."""
    import torch

    ray_before, threads = ray_processes(), torch.get_num_threads()
    run_dir = tmp_path / "in-process"
    run_local_federation(caches, settings("equal-vote", 0.0), run_dir, echo=lambda _: None,
                         runtime="in-process")
    assert torch.get_num_threads() == threads  # each site set one thread; restored after
    check_run(run_dir, 0.0)
    assert "run over: told 3 site(s)" in (run_dir / "logs" / "run.log").read_text()
    assert not (run_dir / "logs" / "pids.json").exists()  # nothing was started
    assert ray_processes() <= ray_before
    in_process, deployed = scores(run_dir), scores(equal_vote_run)
    assert in_process.keys() == deployed.keys()
    for key, value in in_process.items():
        assert float(value) == pytest.approx(float(deployed[key]), abs=1e-5), key


def scores(run: Path) -> dict[tuple[str, str], str]:
    with (run / "predictions.csv").open() as handle:
        return {(r["subject"], r["phase"]): r["score"] for r in csv.DictReader(handle)}


def test_secure_server_and_clients_with_tempered_votes_and_refused_nodes(caches, tmp_path):
    """`fedcmr server --secure` with one `fedcmr client --root-certificates --auth-key` per
    hospital, as real sites run them; beside them, hospitals whose security settings do not
    match the coordinator's are each refused, and say what is missing. The sites train the
    tests' toy model begun by the histogram round (tests/toy_model.py): TLS, node
    authentication and the votes are what is checked here, the same for every model."""
    names = [s.name for s in sites_from_caches(caches)]
    certs, other = tmp_path / "certs", tmp_path / "other-certs"
    script = str(REPO / "deploy" / "make_certificates.sh")
    # the coordinator makes its CA and certificate only; each hospital makes its own key
    # pair (`fedcmr keygen`) and hands over the public key alone
    subprocess.run([script, str(certs)], check=True, capture_output=True)
    subprocess.run([script, str(other), "Intruder"], check=True, capture_output=True)
    private = {}
    for name in names:
        made = subprocess.run([tool("fedcmr"), "keygen", "--site", name, "--out",
                               str(tmp_path / "at" / name)], capture_output=True, text=True)
        assert made.returncode == 0, made.stderr
        private[name], public = key_paths(name, tmp_path / "at" / name)
        shutil.copy(public, certs / "sites")
    again = subprocess.run([tool("fedcmr"), "keygen", "--site", names[0], "--out",
                            str(tmp_path / "at" / names[0])], capture_output=True, text=True)
    assert again.returncode == 2 and "exists already" in again.stderr  # never overwritten
    for key in (*private.values(), certs / "superlink.key", certs / "ca.key",
                other / "sites" / "intruder"):
        assert key.stat().st_mode & 0o777 == 0o600, key
    assert sorted(p.name for p in (certs / "sites").iterdir()) == sorted(
        f"{key_paths(n, certs)[0].name}.pub" for n in names)  # no private key there
    run_dir, port = tmp_path / "secure", free_port()
    # one round: the weights, TLS and node authentication are what is checked here; the
    # certificate folder is given relative to where the coordinator runs
    command = server_command(run_dir, port, len(names), "--strategy", "tempered",
                             "--vote-alpha", "0.5", "--epochs", "1", "--model", "toy-nyul",
                             "--secure", "certs")
    command.remove("-q")  # its start-up line says when the sites' keys are registered
    server_log = tmp_path / "server.log"
    with server_log.open("w") as out:
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, text=True,
                                  env=TOY_ENV, start_new_session=True, cwd=tmp_path)
    wait_for(lambda: "SuperLink serving on" in server_log.read_text(), 180,
             "the secure SuperLink", server)
    address, ca = f"127.0.0.1:{port}", str(certs / "ca.crt")
    tries = {"intruder": ["--root-certificates", ca, "--auth-key",
                          str(other / "sites" / "intruder")],  # a key nobody registered
             "no-key": ["--root-certificates", ca],  # TLS, but no node authentication
             "plaintext": []}  # no CA: plaintext against a TLS coordinator
    refused = {name: hospital(name, caches[0], address, tmp_path / "refused" / name,
                              "--max-wait-time", "20", *args, env=TOY_ENV)
               for name, args in tries.items()}
    logs = {name: tmp_path / f"{name}.log" for name in names}
    sites = {name: hospital(name, cache, address, run_dir / "sites" / name.lower(),
                            "--root-certificates", ca, "--auth-key",
                            str(private[name]), "--max-wait-time", "120",
                            log=logs[name], env=TOY_ENV)
             for name, cache in zip(names, caches, strict=True)}
    try:
        server.wait(timeout=900)
    finally:
        if server.poll() is None:
            kill_tree(server.pid)
    assert server.returncode == 0, server_log.read_text()[-4000:]
    for name, proc in sites.items():  # told the run is over, each stops by itself
        assert proc.wait(timeout=120) == 0, (name, logs[name].read_text()[-2000:])
        assert "INSECURE" not in logs[name].read_text()  # TLS, and its node authenticated
    check_run(run_dir, 0.5, predictions=False)  # a real coordinator gets no predictions

    said = {name: finish(proc, 180) for name, proc in refused.items()}
    for name, proc in refused.items():
        assert proc.returncode == 1, (name, said[name][-2000:])
    last = {name: [x for x in out.splitlines() if x.strip()][-1] for name, out in said.items()}
    assert "refused the connection" in last["intruder"] and "--auth-key" in last["intruder"]
    assert "requires node authentication, and this site has no --auth-key" in last["no-key"]
    assert "INSECURE: no --root-certificates" in said["plaintext"]
    assert "then add --root-certificates CA" in last["plaintext"], last["plaintext"]
    assert our_processes(tmp_path) == []


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_kill_stops_every_process_it_started(caches, tmp_path, sig):
    run_dir = tmp_path / "interrupted"
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}
    proc = subprocess.Popen(
        [tool("fedcmr"), "-q", "federate", "--cache", *map(str, caches), "--profile", "smoke",
         "--fold", "0", "--min-subjects", "3", "--out", str(run_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
        # As from a terminal: a shell script's background job (`cmd &`) starts with SIGINT
        # ignored, the launcher would inherit that, and Ctrl-C would not reach it.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and len(our_processes(run_dir)) < len(caches):
            time.sleep(1)  # the SuperNodes are up (their node config names run_dir)
        assert len(our_processes(run_dir)) >= len(caches)
        time.sleep(5)
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    time.sleep(2)
    assert our_processes(run_dir) == [], out[-2000:]
    config = (run_dir / ".flwr" / "config.toml").read_text()
    port = int(config.split("127.0.0.1:")[1].split('"')[0])
    assert port_is_free(port)

"""`docker-compose up --exit-code-from coordinator` of the real compose file, the README's
command as it is: the cohort written once, a coordinator and four hospital containers; the
coordinator killed mid-run makes the command fail soon after, and a rerun with
FEDCMR_RESUME=1 resumes the run to its end. Needs a Docker engine: .ci/run starts one
(deploy/docker_engine.sh); elsewhere the test is skipped with the reason. On CI ($CI set,
as .ci/run runs) a missing engine, client, base image or registry is a failure, not a
skip: the compose run is what CI is there to check."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.docker, pytest.mark.slow]
REPO = Path(__file__).resolve().parent.parent
#: A small package the image's dependencies also pull: fetching it probes the registry.
PROBE_PACKAGE = "packaging"
#: `docker-compose up` must have returned by then (the run itself takes about 5 minutes).
UP_TIMEOUT = 2400
HOSPITALS = ["hospital-vall-d-hebron", "hospital-sagrada-familia", "hospital-santpau",
             "hospital-acdc"]


def cannot_run(reason: str) -> None:
    """Skip with the reason; on CI fail with it."""
    if os.environ.get("CI"):
        pytest.fail(f"on CI the compose test must run: {reason}")
    pytest.skip(reason)


def engine_or_skip() -> None:
    if shutil.which("docker") is None or shutil.which("docker-compose") is None:
        cannot_run("no docker / docker-compose client (deploy/docker_engine.sh installs them)")
    if subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        cannot_run("no Docker engine reachable (DOCKER_HOST unset or engine down); "
                   ".ci/run starts one with deploy/docker_engine.sh")
    base = os.environ.get("FEDCMR_BASE_IMAGE", "python:3.11-slim")
    if subprocess.run(["docker", "image", "inspect", base], capture_output=True).returncode:
        cannot_run(f"base image {base} is not present and no registry may be reachable; "
                   "deploy/docker_engine.sh builds fedcmr-base")


def registry_unreachable() -> str | None:
    """Why the package registry cannot be reached from this machine (None: it can). The
    image build installs from the same registry with the same pip configuration."""
    with tempfile.TemporaryDirectory() as tmp:
        probe = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps",
                                "--no-cache-dir", "--dest", tmp, PROBE_PACKAGE],
                               capture_output=True, text=True, timeout=600)
    if probe.returncode == 0:
        return None
    return (f"`pip download {PROBE_PACKAGE}` failed too: "
            f"{(probe.stdout + probe.stderr).strip()[-400:]}")


def compose(env: dict, *args: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(["docker-compose", "-p", "fedcmrtest", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def container_exits(env: dict) -> dict[str, int]:
    """service -> exit code of each of the project's containers (all of them exited)."""
    ids = compose(env, "ps", "-q", timeout=120).stdout.split()
    shown = subprocess.run(
        ["docker", "inspect", "--format",
         '{{index .Config.Labels "com.docker.compose.service"}} {{.State.Status}} '
         '{{.State.ExitCode}}', *ids], capture_output=True, text=True, timeout=120)
    exits = {}
    for line in shown.stdout.splitlines():
        service, status, code = line.split()
        exits[service] = int(code) if status == "exited" else -1  # -1: still running
    return exits


#: The README's command (docker-compose 1.29 here; `docker compose` takes the same flags).
UP = ["up", "--exit-code-from", "coordinator"]


def wait_for(path: Path, process: subprocess.Popen, timeout: float) -> None:
    """Until `path` exists; fails with the process's output if it ends or time runs out."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"{path} never appeared:\n{process.communicate()[0][-6000:]}")
        time.sleep(1)


def test_compose_up_fails_with_the_coordinator_and_a_rerun_resumes_it(tmp_path):
    """The README's command on a fresh folder: the cohort written once, four hospitals and
    a coordinator. The coordinator is killed (SIGKILL, as the kernel kills for memory) after
    round 1 of 2: `up` returns non-zero soon after, with every container stopped. The same
    command with FEDCMR_RESUME=1 continues after round 1 and returns 0 with the results."""
    engine_or_skip()
    env = {**os.environ, "FEDCMR_DATA": str(tmp_path / "data"),
           "FEDCMR_RUNS": str(tmp_path / "runs"), "FEDCMR_SCALE": "0.1",
           "FEDCMR_PROFILE": "smoke", "FEDCMR_EPOCHS": "2", "FEDCMR_MIN_SUBJECTS": "2",
           "FEDCMR_WORKERS": "2",
           # N4 is not what this test checks (test_prepare_cache, the demo test do), and
           # four hospitals running it on 2 cores was half of the run
           "FEDCMR_PREPARE_ARGS": "--no-n4"}
    build = compose(env, "build", timeout=3600)
    log = build.stdout[-3000:] + build.stderr[-3000:]
    if build.returncode != 0 and (why := registry_unreachable()):
        # only a registry that is really out of reach turns a failed build into a skip; a
        # build that fails while the registry answers is our Dockerfile's fault
        cannot_run(f"the package registry is unreachable ({why}); build log:\n{log[-800:]}")
    assert build.returncode == 0, log
    federated = tmp_path / "runs" / "federated"
    try:
        first = subprocess.Popen(["docker-compose", "-p", "fedcmrtest", *UP], cwd=REPO,
                                 env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 text=True)
        wait_for(federated / "checkpoint" / "fold_0.pt", first, UP_TIMEOUT)  # round 1 saved
        coordinator = compose(env, "ps", "-q", "coordinator", timeout=120).stdout.split()
        subprocess.run(["docker", "kill", *coordinator], check=True, capture_output=True)
        killed = time.monotonic()
        failed_output = first.communicate(timeout=UP_TIMEOUT)[0]
        stopped_after = time.monotonic() - killed
        failed_exits = container_exits(env)
        assert not (federated / "metrics.json").exists()

        rerun = compose({**env, "FEDCMR_RESUME": "1"}, *UP, timeout=UP_TIMEOUT)
        output = rerun.stdout[-6000:] + rerun.stderr[-3000:]
        exits = container_exits(env)
    finally:
        compose(env, "down", "--volumes", "--remove-orphans", timeout=300)
    # the failure: `up` returned the killed coordinator's code, every container stopped
    assert first.returncode == failed_exits["coordinator"] == 137, failed_output[-6000:]
    assert stopped_after < 60, (stopped_after, failed_output[-6000:])
    assert sorted(failed_exits) == sorted(["cohort", "coordinator", *HOSPITALS])
    assert -1 not in failed_exits.values(), failed_exits
    # the rerun: resumed after round 1, finished, 0
    assert rerun.returncode == 0 == exits["coordinator"], output
    assert "fold 0: resuming after round 1" in rerun.stdout, output
    assert -1 not in exits.values(), exits
    assert sorted(p.name for p in (tmp_path / "data" / "sites").iterdir()) == sorted(
        h.removeprefix("hospital-") for h in HOSPITALS)
    metrics = json.loads((federated / "metrics.json").read_text())
    assert set(metrics["auc"]) == {"total", "Vall d'Hebron", "Sagrada Familia", "SantPau",
                                   "ACDC"}
    for hospital in HOSPITALS:
        site = tmp_path / "runs" / "sites" / hospital.removeprefix("hospital-")
        assert (site / "cache" / "manifest.csv").exists()
        assert (site / "output" / "audit.jsonl").exists()
        assert list((site / "output").glob("fold_*/predictions.csv"))

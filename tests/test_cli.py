"""Every command from the command line, with its exit code: 0 when it worked, 2 for bad
input (one line naming the problem and the fix), 1 for a run that failed (one line, no
traceback), 3 for `prepare` with skipped subjects (tests/test_bad_input.py). The command
reference docs/cli.md is generated from the parser and checked to be current."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from cache_factory import write_cohort, write_site_cache
from sklearn.metrics import roc_auc_score

from fedcmr.cli import main
from fedcmr.support.cli_options import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK
from fedcmr.support.flower_env import tool

REPO = Path(__file__).resolve().parent.parent


def fedcmr(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    """The installed `fedcmr` command as a user runs it."""
    return subprocess.run([tool("fedcmr"), *args], capture_output=True, text=True,
                          timeout=timeout)


def test_help_of_every_command_exits_0():
    for command in ("", "synth", "prepare", "centralized", "federate", "server", "client",
                    "demo"):
        with pytest.raises(SystemExit) as stop:
            main([*command.split(), "--help"])
        assert stop.value.code == 0, command


def test_synth_writes_the_cohort_and_refuses_a_foreign_folder(tmp_path, caplog):
    out = tmp_path / "cohort"
    assert main(["-q", "synth", "--out", str(out), "--scale", "0.05", "--workers", "1"]) == 0
    assert (out / "mnms").is_dir() and (out / "acdc" / "training").is_dir()
    foreign = tmp_path / "foreign"
    (foreign / "mnms").mkdir(parents=True)
    (foreign / "mnms" / "patient.nii.gz").write_bytes(b"not ours")
    assert main(["-q", "synth", "--out", str(foreign), "--scale", "0.05"]) == EXIT_BAD_INPUT
    assert "was not written by fedcmr synth" in caplog.text
    assert (foreign / "mnms" / "patient.nii.gz").read_bytes() == b"not ours"


def test_centralized_runs_and_a_failed_run_says_why_in_one_line(tmp_path):
    caches = write_cohort(tmp_path / "caches", {"Alpha": (4, 4), "Bravo": (4, 4)})
    ok = fedcmr("-q", "centralized", "--cache", *map(str, caches), "--profile", "smoke",
                "--fold", "0", "--min-subjects", "2", "--out", str(tmp_path / "run"))
    assert ok.returncode == EXIT_OK, ok.stderr[-2000:]
    assert "total" in ok.stdout  # the AUC table
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["auc"]
    tiny = write_site_cache(tmp_path / "tiny", "Tiny", 1, 1)  # no test split in fold 1
    failed = fedcmr("-q", "centralized", "--cache", str(tiny), "--profile", "smoke",
                    "--fold", "1", "--out", str(tmp_path / "tiny-run"))
    assert failed.returncode == EXIT_FAILED
    assert "fedcmr centralized failed: fold 1: empty train or test split" in failed.stderr
    assert "Traceback" not in failed.stderr


@pytest.mark.parametrize(("argv", "said"), [
    (["centralized", "--cache", "{tmp}/nowhere"], "no manifest"),
    (["centralized", "--cache", "{cache}", "--fold", "7"], "out of range"),
    (["federate", "--cache", "{tmp}/nowhere"], "no manifest"),
    (["federate", "--cache", "{cache}", "--secure", "{tmp}", "--runtime", "simulation"],
     "missing. Fix: deploy/make_certificates.sh"),
    (["federate", "--cache", "{cache}", "--strategy", "tempered"], "needs --vote-alpha"),
    (["server", "--sites", "2", "--secure", "{tmp}"], "missing. Fix: deploy/make_certif"),
    (["client", "--site", "A", "--data", "{tmp}/nowhere", "--superlink", "127.0.0.1:1"],
     "no prepared cache"),
])
def test_bad_input_exits_2_with_the_fix(tmp_path, caplog, argv, said):
    cache = write_site_cache(tmp_path / "cache", "Alpha", 3, 3)
    filled = [a.format(tmp=tmp_path, cache=cache) for a in argv]
    assert main(["-q", *filled, "--out", str(tmp_path / "run")]) == EXIT_BAD_INPUT
    assert said in caplog.text


@pytest.mark.slow
def test_demo_runs_the_readmes_main_job_end_to_end(tmp_path):
    """The README's main job, made small: synthesise, prepare four hospitals, federate."""
    out = tmp_path / "demo"
    done = fedcmr("-q", "demo", "--out", str(out), "--scale", "0.1", "--min-subjects", "2",
                  "--profile", "smoke", "--epochs", "1", "--workers", "2", timeout=1500)
    assert done.returncode == EXIT_OK, done.stdout[-3000:] + done.stderr[-3000:]
    metrics = json.loads((out / "federated" / "metrics.json").read_text())
    assert set(metrics["auc"]) == {"total", "Vall d'Hebron", "Sagrada Familia", "SantPau",
                                   "ACDC"}
    # one table: each model's AUC per centre with its interval, the measures model beside
    lines = done.stdout.splitlines()
    table = lines[[i for i, line in enumerate(lines) if line.startswith("centre ")][-1]:]
    assert "cnn" in table[0] and "measures" in table[0], done.stdout[-3000:]
    rows = {line.split("  ")[0].strip(): line for line in table[1:6]}
    assert set(rows) == set(metrics["auc"]), table
    assert "95% interval by bootstrap over subjects" in table[6]
    beside = json.loads((out / "federated-measures" / "metrics.json").read_text())
    assert json.loads((out / "federated-measures" / "config.json").read_text())[
        "settings"]["run"]["model"] == "measures"
    for name, line in rows.items():  # the printed AUCs are each run's own (exact) AUCs
        for auc in (metrics["auc"][name], beside["auc"][name]):
            if auc is not None:
                assert any(abs(float(cell.split()[0]) - auc) <= 0.07
                           for cell in re.findall(r"\d\.\d{3} \((?:\d\.\d\d-\d\.\d\d|n/a)\)",
                                                  line)), (name, auc, line)
    for cache in ("vall-d-hebron", "sagrada-familia", "santpau", "acdc"):
        assert (out / "cache" / cache / "manifest.csv").exists()
    # the options reached the run: one round (--epochs 1) of the smoke profile
    config = json.loads((out / "federated" / "config.json").read_text())
    assert config["settings"]["run"]["profile"] == "smoke"
    assert config["settings"]["run"]["epochs"] == 1
    assert config["settings"]["run"]["min_subjects"] == 2
    with (out / "federated" / "rounds.csv").open() as handle:
        rounds = {int(r["round"]) for r in csv.DictReader(handle)}
    assert rounds == {1}
    # the reported AUC is that of the predictions the sites kept (to the score bins' error)
    with (out / "federated" / "predictions.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    exact = roc_auc_score([int(r["label"]) for r in rows], [float(r["score"]) for r in rows])
    assert metrics["auc"]["total"] == pytest.approx(exact, abs=0.07)


def test_the_command_reference_is_current():
    """docs/cli.md is generated from the parser (docs/make_cli_reference.py)."""
    sys.path.insert(0, str(REPO / "docs"))
    try:
        from make_cli_reference import reference
    finally:
        sys.path.pop(0)
    assert (REPO / "docs" / "cli.md").read_text() == reference(), (
        "docs/cli.md is stale: run .venv/bin/python docs/make_cli_reference.py")


def test_prepare_exits_0_when_every_subject_is_prepared(tmp_path):
    from mri_factory import write_acdc_patient

    for number, group in ((21, "HCM"), (61, "NOR")):
        write_acdc_patient(tmp_path / "acdc", number, group)
    code = main(["-q", "prepare", "--dataset", "acdc", "--root", str(tmp_path / "acdc"),
                 "--out", str(tmp_path / "cache"), "--no-n4", "--crop", "4,32,32",
                 "--workers", "1"])
    assert code == EXIT_OK and (tmp_path / "cache" / "manifest.csv").exists()

"""A model is a plug-in: a toy model defined in one file under tests/ (toy_model.py), which
fedcmr's code never names, runs through a CDS run, a local federation (SuperLink and one
SuperNode per hospital, as processes) and `fedcmr predict`, found by name through the
registry ($FEDCMR_MODELS, inherited by every process of the federation)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
from pathlib import Path

import pytest
from cache_factory import write_cohort

from fedcmr.common.bundle import BUNDLE_DIR, preprocessing_of_caches
from fedcmr.common.learning.data import load_cache
from fedcmr.common.models import registry
from fedcmr.common.run_config import RunConfig
from fedcmr.support.flower_env import tool

pytestmark = pytest.mark.slow
TESTS = Path(__file__).resolve().parent
SIZES = {"Alpha": (6, 6), "Bravo": (7, 7), "Charlie": (5, 6)}
TOY = "toy=toy_model:Toy"


@pytest.fixture(scope="module")
def toy_env():
    """The toy model known in this process and in every process started from it."""
    saved = {k: os.environ.get(k) for k in (registry.ENV, "PYTHONPATH")}
    os.environ[registry.ENV] = TOY
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS),
                                                              saved["PYTHONPATH"]]))
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="module")
def caches(tmp_path_factory) -> list[Path]:
    return write_cohort(tmp_path_factory.mktemp("caches"), SIZES)


def scores(path: Path) -> dict[tuple[str, str], float]:
    with path.open() as handle:
        return {(r["subject"], r["phase"]): float(r["score"]) for r in csv.DictReader(handle)}


def test_an_unknown_model_is_refused_naming_the_known_ones(monkeypatch):
    monkeypatch.delenv(registry.ENV, raising=False)
    with pytest.raises(ValueError, match=r"unknown model 'toy'; known: cnn, measures"):
        RunConfig(model="toy")
    monkeypatch.setenv(registry.ENV, "toy=no_such_module:Toy")
    with pytest.raises(ValueError, match="cannot be loaded"):
        registry.get("toy")


def test_the_toy_model_runs_through_cds_a_federation_and_predict(toy_env, caches, tmp_path):
    from fedcmr.client.predict import predict_caches
    from fedcmr.lab.centralized import run_centralized
    from fedcmr.lab.local_federation import run_local_federation
    from fedcmr.server.settings import FederationSettings

    assert "toy" in registry.names()
    run = RunConfig(model="toy", profile="smoke", folds=(0,), min_subjects=3,
                    centres=tuple(sorted(SIZES)))
    # CDS: the pooled fit of the plug-in, the baseline's outputs and bundle
    cds = run_centralized(load_cache(caches), run, tmp_path / "cds", progress=False,
                          preprocessing=preprocessing_of_caches(caches))
    assert set(cds["auc"]) == {"total", *SIZES}
    cds_scores = scores(tmp_path / "cds" / "predictions.csv")
    assert cds_scores and all(0.0 < s < 1.0 for s in cds_scores.values())
    # a local federation: every site and the coordinator find "toy" by its name
    fl_dir = tmp_path / "fl"
    metrics = run_local_federation(
        caches, FederationSettings(strategy="fedavg", round_timeout=300, run=run), fl_dir,
        echo=lambda line: None)
    assert metrics["n"]["total"]["frames"] == len(cds_scores)  # the same test frames
    fl_scores = scores(fl_dir / "predictions.csv")
    assert fl_scores.keys() == cds_scores.keys()
    # the federated model was trained (it started from zeros: every score 0.5)
    assert any(abs(s - 0.5) > 1e-6 for s in fl_scores.values())
    rounds = list(csv.DictReader((fl_dir / "rounds.csv").open()))
    assert {r["site"] for r in rounds} == set(SIZES)
    summary = json.loads((fl_dir / "fold_0" / "summary.json").read_text())
    assert summary["best_round"] >= 1
    # what left the sites: no start exchange, the toy's arrays and counts only
    for log in (fl_dir / "sites").glob("*/audit.jsonl"):
        kinds = {json.loads(line)["type"] for line in log.read_text().splitlines()}
        assert "query.nyul" not in kinds and "query.measure_stats" not in kinds
        assert "train" in kinds
    # predict: both bundles give their run's test scores back, in process and by the CLI
    for framework, folder, expected in (("cds", tmp_path / "cds", cds_scores),
                                        ("fl", fl_dir, fl_scores)):
        metadata, report = predict_caches(folder / "fold_0" / BUNDLE_DIR, caches,
                                          tmp_path / f"predict-{framework}")
        assert metadata.model == "toy" and metadata.framework == framework
        predicted = {(r["subject"], r["phase"]): r["score"] for r in report.frames}
        for key, value in expected.items():
            assert predicted[key] == pytest.approx(value, abs=1e-9), (framework, key)
    done = subprocess.run([tool("fedcmr"), "predict", "--model",
                           str(fl_dir / "fold_0" / BUNDLE_DIR), "--cache", *map(str, caches),
                           "--out", str(tmp_path / "cli")], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "toy model" in done.stdout
    assert scores(tmp_path / "cli" / "predictions.csv") == pytest.approx(
        scores(tmp_path / "predict-fl" / "predictions.csv"))

"""The centralised baseline: outputs, the best (not last) model, resume, ED-only."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from cache_factory import write_cohort

from fedcmr.common import run_config
from fedcmr.common.device import placement
from fedcmr.common.learning.data import FrameDataset, load_cache
from fedcmr.common.learning.harmonise import Harmoniser
from fedcmr.common.learning.split import split_frames
from fedcmr.common.learning.training import score
from fedcmr.common.model import build_model
from fedcmr.common.results import read_predictions
from fedcmr.common.run_config import RunConfig
from fedcmr.server.centralized import run_centralized

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    return load_cache(write_cohort(tmp_path_factory.mktemp("c")))


def config(**kw) -> RunConfig:
    centres = ("Alpha", "Bravo", "Charlie", "Delta")
    return RunConfig(profile="smoke", folds=(0,), centres=centres, **kw)


def test_outputs_best_model_and_resume(frames, tmp_path, caplog, monkeypatch):
    cfg = config()
    metrics = run_centralized(frames, cfg, tmp_path, progress=False)
    assert set(metrics["auc"]) == {"total", "Alpha", "Bravo", "Charlie", "Delta"}
    assert metrics["init"][0]["source"] == "random"
    rows = read_predictions(tmp_path / "predictions.csv")
    parts = split_frames(frames, cfg, 0)
    assert len(rows) == len(parts["test"]) == metrics["n"]["total"]["frames"]
    # the saved best model is the one that scored the test set
    with (tmp_path / "fold_0" / "history.csv").open() as handle:
        history = list(csv.DictReader(handle))
    best = min(history, key=lambda h: float(h["val_loss"]))
    assert best["best"] == "True"
    model, _ = build_model("none")
    model.load_state_dict(torch.load(tmp_path / "fold_0" / "best_model.pt"))
    test = FrameDataset(parts["test"], Harmoniser(cfg.prior).fit(parts["train"]),
                        cfg.hyper.input_size)
    rescored = score(model, test, placement())
    by_key = {(r["subject"], r["phase"]): r["score"] for r in rows}
    expected = [by_key[(f.subject, f.entry.phase)] for f in parts["test"]]
    np.testing.assert_allclose(rescored.scores, expected, rtol=1e-4, atol=1e-6)
    # a rerun skips the finished fold and gives the same metrics
    caplog.clear()
    with caplog.at_level("INFO"):
        again = run_centralized(frames, cfg, tmp_path, progress=False)
    assert "already finished" in caplog.text
    assert again["auc"] == metrics["auc"]
    assert json.loads((tmp_path / "metrics.json").read_text())["auc"] == metrics["auc"]
    # a changed profile (looked up by name) invalidates the finished fold
    smoke = run_config.PROFILES["smoke"]
    monkeypatch.setitem(run_config.PROFILES, "smoke",
                        smoke.model_copy(update={"lr_head": smoke.lr_head / 2}))
    caplog.clear()
    with caplog.at_level("INFO"):
        run_centralized(frames, cfg, tmp_path, progress=False)
    assert "already finished" not in caplog.text


def test_ed_only_uses_only_end_diastole(frames, tmp_path):
    cfg = config(phases=("ED",))
    ed = [f for f in frames if f.entry.phase in cfg.phases]
    run_centralized(ed, cfg, tmp_path, progress=False)
    assert {r["phase"] for r in read_predictions(tmp_path / "predictions.csv")} == {"ED"}

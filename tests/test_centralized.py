"""The centralised baseline: outputs, the best (not last) model, resume, ED-only."""

from __future__ import annotations

import csv
import json

import golden
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
from fedcmr.lab.centralized import run_centralized

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
    golden.check("cds_cnn", tmp_path / "predictions.csv")
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
    """Every frame goes in; the run config's phases decide what trains and is tested."""
    cfg = config(phases=("ED",))
    run_centralized(frames, cfg, tmp_path, progress=False)
    rows = read_predictions(tmp_path / "predictions.csv")
    assert {r["phase"] for r in rows} == {"ED"}
    ed = [f for f in frames if f.entry.phase == "ED"]
    assert len(rows) == len(split_frames(ed, cfg, 0)["test"])


def test_the_best_epoch_is_kept_not_the_last(frames, tmp_path, monkeypatch):
    """Scripted validation losses 0.9, 0.3, 0.6: epoch 1's weights score the test set."""
    import copy

    from fedcmr.common.models import cnn  # the CNN's pooled fit scores each epoch

    real = cnn.score
    losses = iter([0.9, 0.3, 0.6])
    states: list[dict] = []

    def scripted(model, dataset, where, *args, **kw):
        result = real(model, dataset, where, *args, **kw)
        loss = next(losses, None)
        if loss is None:  # the test split, after the last epoch
            return result
        states.append(copy.deepcopy(model.state_dict()))
        return result.__class__(loss=loss, labels=result.labels, scores=result.scores)

    monkeypatch.setattr(cnn, "score", scripted)
    run_centralized(frames, config(epochs=3), tmp_path, progress=False)
    with (tmp_path / "fold_0" / "history.csv").open() as handle:
        history = list(csv.DictReader(handle))
    assert [h["best"] for h in history] == ["True", "True", "False"]
    kept = torch.load(tmp_path / "fold_0" / "best_model.pt")
    assert len(states) == 3
    assert all(torch.equal(kept[k], states[1][k]) for k in kept)
    assert not all(torch.equal(kept[k], states[2][k]) for k in kept)


def test_any_changed_setting_or_data_retrains_and_nothing_else(frames, tmp_path, caplog):
    from fedcmr.common.learning.data import CachedFrame

    def rerun(fs, cfg) -> bool:
        caplog.clear()
        with caplog.at_level("INFO"):
            run_centralized(fs, cfg, tmp_path, progress=False)
        return "already finished" not in caplog.text

    assert rerun(frames, config())
    assert not rerun(frames, config())  # the same settings and data: skipped
    assert rerun(frames, config(seed=1))  # a changed setting
    assert rerun(frames, config(seed=1, augment="basic"))
    # the same settings on re-prepared data (one frame's voxels differ): retrained
    changed = [CachedFrame(f.entry, f.image + (1.0 if i == 0 else 0.0), f.labels)
               for i, f in enumerate(frames)]
    assert rerun(changed, config(seed=1, augment="basic"))
    assert not rerun(changed, config(seed=1, augment="basic"))

"""Each training site's released intensity aggregates are kept per fold (the report's
before/after harmonisation figure): in the federation's fold outcome, through the checkpoint
(--resume), in fold_K/summary.json; and per centre in the baseline's harmonisation.json."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from cache_factory import write_cohort
from test_study_runner import make_grid, runner, server_identity  # noqa: F401 (fixture)

from fedcmr.common import nyul
from fedcmr.common.learning.data import load_cache
from fedcmr.common.learning.harmonise import Harmoniser, centre_summaries, harmonisation_record
from fedcmr.common.learning.split import split_frames
from fedcmr.common.run_config import RunConfig
from fedcmr.lab.centralized import run_centralized
from fedcmr.server.checkpoint import Checkpoint, FoldState
from fedcmr.server.fl_outputs import write_fold
from fedcmr.server.settings import FederationSettings
from fedcmr.server.study_runner import FoldOutcome


def released(record: dict, summary: dict) -> None:
    """A site's entry in the record is its summary's sums turned into means."""
    assert record["n_images"] == summary["n_images"]
    assert record["n_subjects"] == summary["n_subjects"]
    assert record["histogram"] == summary["histogram"]
    np.testing.assert_allclose(record["landmarks"],
                               np.asarray(summary["landmark_sum"]) / summary["n_images"])


def test_federated_fold_keeps_every_site_summary_through_checkpoint(tmp_path):
    grid = make_grid(tmp_path / "sites", {"Alpha": (8, 8), "Bravo": (6, 7)})
    study = runner(grid, epochs=1)
    state = study._start_fold(0)  # the histogram round, as a fresh fold starts
    assert sorted(state.site_summaries) == ["Alpha", "Bravo"]
    summaries = [nyul.NyulSummary(**s) for s in state.site_summaries.values()]
    np.testing.assert_allclose(state.landmarks, nyul.combine(summaries), rtol=0, atol=1e-12)
    np.testing.assert_allclose(state.histogram, nyul.combine_histograms(summaries))
    # each site's own counts: its training subjects, two frames (ED, ES) each
    assert all(s.n_images == 2 * s.n_subjects for s in summaries)
    assert len({s.n_subjects for s in summaries}) == 2  # not one pooled count

    # a resumed run reads the state back with the summaries (torch.save / torch.load)
    settings = FederationSettings(sites=2, run=RunConfig(profile="smoke"), resume=True,
                                  out_dir=tmp_path / "run")
    checkpoint = Checkpoint(tmp_path / "run", settings)
    checkpoint.save(state)
    loaded = checkpoint.load(0)
    assert loaded.site_summaries == state.site_summaries
    assert loaded.landmarks == state.landmarks
    outcome = FoldOutcome.of(loaded)
    assert outcome.site_summaries == state.site_summaries
    assert outcome.landmarks == list(state.landmarks)

    # a finished fold's checkpoint (no weights) keeps them too
    study.checkpoint = checkpoint
    study.save_finished(outcome)
    finished = study.finished_fold(0)
    assert finished.site_summaries == state.site_summaries
    assert finished.landmarks == list(state.landmarks)

    write_fold(tmp_path / "run", finished)
    summary = json.loads((tmp_path / "run" / "fold_0" / "summary.json").read_text())
    assert sorted(summary["site_summaries"]) == ["Alpha", "Bravo"]
    for site, record in summary["site_summaries"].items():
        released(record, state.site_summaries[site])
    assert summary["reference_landmarks"] == pytest.approx(list(state.landmarks), abs=1e-12)
    assert summary["reference_histogram"] == pytest.approx(state.histogram)
    assert summary["bin_edges"] == list(nyul.DEFAULT_BIN_EDGES)
    assert summary["percentiles"] == list(nyul.PERCENTILES)


def test_fold_state_without_summaries_still_loads(tmp_path):
    """A checkpoint written before site_summaries existed resumes with none."""
    settings = FederationSettings(sites=1, run=RunConfig(profile="smoke"), resume=True,
                                  out_dir=tmp_path)
    checkpoint = Checkpoint(tmp_path, settings)
    checkpoint.save(FoldState(fold=1, round=3, histogram=[1.0], bin_edges=[0.0, 1.0]))
    values = torch.load(checkpoint.fold_file(1), weights_only=False)
    del values["site_summaries"]
    torch.save(values, checkpoint.fold_file(1))
    state = checkpoint.load(1)
    assert state.site_summaries == {} and state.round == 3
    record = harmonisation_record(state.site_summaries, state.landmarks)
    assert record["site_summaries"] == {} and record["reference_landmarks"] is None


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    return load_cache(write_cohort(tmp_path_factory.mktemp("c")))


def config(**kw) -> RunConfig:
    return RunConfig(profile="smoke", epochs=1, pretrained="none",
                     centres=("Alpha", "Bravo", "Charlie", "Delta"), **kw)


def check_centres(record: dict, train, prior: str) -> None:
    """Each centre's entry is what that centre alone would release; the reference is the
    pooled landmarks, equal to the image-weighted mean of the centres' landmarks."""
    pooled = Harmoniser(prior).fit(train)
    assert record["reference_landmarks"] == pytest.approx(list(pooled.landmarks), abs=1e-9)
    assert sorted(record["site_summaries"]) == sorted({f.entry.centre for f in train})
    for centre, entry in record["site_summaries"].items():
        own = [f for f in train if f.entry.centre == centre]
        released(entry, Harmoniser(prior).summary(own, min_subjects=1).model_dump())
        assert entry["n_subjects"] == len({f.subject for f in own})
    weights = np.array([e["n_images"] for e in record["site_summaries"].values()])
    means = np.array([e["landmarks"] for e in record["site_summaries"].values()])
    np.testing.assert_allclose(weights @ means / weights.sum(), pooled.landmarks, atol=1e-9)


@pytest.mark.parametrize("prior", ["baseline", "structures"])
def test_centre_summaries_record(frames, prior):
    cfg = config(prior=prior)
    train = split_frames(frames, cfg, 0)["train"]
    harmoniser = Harmoniser(prior).fit(train)
    record = harmonisation_record(centre_summaries(harmoniser, train), harmoniser.landmarks)
    check_centres(record, train, prior)


@pytest.mark.slow
def test_centralised_lco_fold_writes_training_centres_only(frames, tmp_path):
    cfg = config(folds=(2,), protocol="lco")
    run_centralized(frames, cfg, tmp_path, progress=False)
    record = json.loads((tmp_path / "fold_2" / "harmonisation.json").read_text())
    assert "Charlie" not in record["site_summaries"]  # the held-out test centre
    check_centres(record, split_frames(frames, cfg, 2)["train"], cfg.prior)

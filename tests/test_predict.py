"""The model bundle and `fedcmr predict`: a finished fold's bundle reproduces that run's test
scores (CDS and FL), raw files give what preparing them and predicting on the cache gives,
and every input the bundle cannot take is refused with one line naming the file and the fix.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import golden
import numpy as np
import pytest
import torch
from cache_factory import write_cohort, write_prep_info, write_site_cache
from mri_factory import write_acdc_patient

from fedcmr.client.data.loaders.acdc import load_acdc
from fedcmr.client.data.prepare import run_prepare
from fedcmr.client.predict import PREDICTIONS, SUBJECTS, predict_caches, prep_config
from fedcmr.common.bundle import (
    BUNDLE_DIR,
    METADATA,
    WEIGHTS,
    BundleError,
    preprocessing_of_caches,
    read_metadata,
)
from fedcmr.common.cache_format import CacheError, load_frame, read_manifest, save_frame
from fedcmr.common.handshake import model_digest
from fedcmr.common.learning.data import load_cache
from fedcmr.common.models import registry
from fedcmr.common.models.bundles import load_bundle
from fedcmr.common.results import read_predictions
from fedcmr.common.run_config import RunConfig
from fedcmr.lab.centralized import run_centralized
from fedcmr.support.cli_options import EXIT_BAD_INPUT, EXIT_OK
from fedcmr.support.flower_env import tool

pytestmark = pytest.mark.slow
SIZES = {"Alpha": (6, 6), "Bravo": (7, 6), "Charlie": (5, 6), "Delta": (6, 7)}


@pytest.fixture(scope="module")
def caches(tmp_path_factory) -> list[Path]:
    return write_cohort(tmp_path_factory.mktemp("caches"), SIZES)


@pytest.fixture(scope="module")
def cds_run(caches, tmp_path_factory) -> Path:
    """One smoke-size centralised fold, run as `fedcmr centralized` does (the caches'
    preprocessing passed in for the bundle)."""
    out = tmp_path_factory.mktemp("cds")
    config = RunConfig(profile="smoke", folds=(0,), centres=tuple(sorted(SIZES)))
    run_centralized(load_cache(caches), config, out, progress=False,
                    preprocessing=preprocessing_of_caches(caches))
    return out


def run_scores(run: Path) -> dict[tuple[str, str, str], float]:
    return {(r["centre"], r["subject"], r["phase"]): r["score"]
            for r in read_predictions(run / "predictions.csv")}


def check_reproduces(run: Path, caches: list[Path], out: Path) -> dict:
    """predict on the caches with the run's fold-0 bundle gives the run's test scores."""
    metadata, report = predict_caches(run / "fold_0" / BUNDLE_DIR, caches, out)
    predicted = {(r["centre"], r["subject"], r["phase"]): r["score"] for r in report.frames}
    expected = run_scores(run)
    assert expected and set(expected) <= set(predicted)
    for key, value in expected.items():
        assert predicted[key] == pytest.approx(value, abs=1e-5), key
    assert len(report.frames) == sum(len(read_manifest(c)) for c in caches)
    assert metadata.metrics.test.n == len(expected)
    return json.loads((run / "fold_0" / BUNDLE_DIR / METADATA).read_text())


def test_cds_bundle_reproduces_the_runs_test_scores(cds_run, caches, tmp_path):
    meta = check_reproduces(cds_run, caches, tmp_path)
    golden.check("cds_cnn_small", cds_run / "predictions.csv")
    golden.check("predict_cds_cnn", tmp_path / PREDICTIONS)
    fold = cds_run / "fold_0"
    harmonisation = json.loads((fold / "harmonisation.json").read_text())
    assert meta["harmonisation"]["landmarks"] == harmonisation["reference_landmarks"]
    assert meta["harmonisation"]["percentiles"] == harmonisation["percentiles"]
    assert meta["framework"] == "cds" and meta["strategy"] is None and meta["fold"] == 0
    assert meta["model"] == "cnn" and meta["model_digest"] == model_digest()
    assert meta["input"] == {"channels": 3, "depth": 4, "height": 24, "width": 24}
    assert meta["preprocessing"]["crop"] == [4, 24, 24]
    assert meta["init"] == {"source": "random", "pretrained": False,
                            "seed": RunConfig().fold_seed(0)}
    assert meta["training"]["config"]["profile"] == "smoke"
    # the bundle's weights are the run's best model (hard-linked: no second copy on disk)
    assert (fold / BUNDLE_DIR / WEIGHTS).stat().st_ino == (fold / "best_model.pt").stat().st_ino
    # subjects.csv: one row per subject, the mean of its frames
    frames = np.genfromtxt(tmp_path / PREDICTIONS, delimiter=",", names=True, dtype=None,
                           encoding="utf-8")
    subjects = np.genfromtxt(tmp_path / SUBJECTS, delimiter=",", names=True, dtype=None,
                             encoding="utf-8")
    first = subjects[0]
    mine = frames[frames["subject"] == first["subject"]]
    assert first["n_frames"] == len(mine) == 2
    assert first["p_hcm"] == pytest.approx(mine["score"].mean(), abs=1e-12)


def test_fl_bundle_reproduces_the_runs_test_scores(caches, tmp_path):
    """One smoke federation on the simulation runtime (about a minute on 2 cores)."""
    from fedcmr.lab.local_federation import run_local_federation
    from fedcmr.server.settings import FederationSettings

    run = RunConfig(profile="smoke", folds=(0,), min_subjects=3)
    settings = FederationSettings(strategy="equal-vote", vote_alpha=0.0, round_timeout=300,
                                  run=run)
    run_dir = tmp_path / "fl"
    run_local_federation(caches, settings, run_dir, echo=lambda line: None,
                         runtime="simulation")
    meta = check_reproduces(run_dir, caches, tmp_path / "predicted")
    golden.check("fl_simulation_cnn", run_dir / "predictions.csv")
    golden.check("predict_fl_cnn", tmp_path / "predicted" / PREDICTIONS)
    summary = json.loads((run_dir / "fold_0" / "summary.json").read_text())
    assert meta["framework"] == "fl" and meta["strategy"] == "equal-vote"
    assert meta["vote_alpha"] == 0.0
    assert meta["harmonisation"]["landmarks"] == summary["reference_landmarks"]
    assert meta["preprocessing"] == json.loads(
        preprocessing_of_caches(caches).model_dump_json())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert meta["metrics"]["test"]["auc"] == pytest.approx(metrics["auc"]["total"])


@pytest.fixture(scope="module")
def acdc_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("raw") / "acdc"
    for number, group in ((21, "HCM"), (22, "HCM"), (61, "NOR")):
        write_acdc_patient(root, number, group)
    return root


def test_raw_files_equal_prepare_then_predict(cds_run, acdc_root, tmp_path):
    """`fedcmr predict --dataset acdc` (the real CLI) == run_prepare with the bundle's
    options + predict on that cache."""
    bundle = cds_run / "fold_0" / BUNDLE_DIR
    out = tmp_path / "raw"
    done = subprocess.run([tool("fedcmr"), "-q", "predict", "--model", str(bundle),
                           "--dataset", "acdc", "--root", str(acdc_root), "--out", str(out),
                           "--workers", "1"], capture_output=True, text=True, timeout=600)
    assert done.returncode == EXIT_OK, done.stderr[-2000:]
    assert "3 subject(s), 6 frame(s)" in done.stdout and "AUC" in done.stdout
    metadata = read_metadata(bundle)
    cache = tmp_path / "cache"
    run_prepare(load_acdc(acdc_root), prep_config(metadata, bundle), cache, progress=False)
    _, report = predict_caches(bundle, [cache], tmp_path / "on-cache")
    for name in (PREDICTIONS, SUBJECTS):
        assert (out / name).read_text() == (tmp_path / "on-cache" / name).read_text()
    assert len(report.frames) == 6 and len(report.subjects) == 3
    prep = json.loads((out / "cache" / "prep.json").read_text())["params"]
    assert prep == prep_config(metadata, bundle).model_dump(mode="json")


# -- bad input ------------------------------------------------------------------------
def copy_bundle(cds_run: Path, dest: Path, **changes) -> Path:
    """The CDS bundle with metadata fields changed (model.pt copied, never linked: a test
    that damages it must not damage the run's)."""
    source = cds_run / "fold_0" / BUNDLE_DIR
    dest.mkdir(parents=True)
    shutil.copyfile(source / WEIGHTS, dest / WEIGHTS)
    meta = json.loads((source / METADATA).read_text())
    (dest / METADATA).write_text(json.dumps({**meta, **changes}))
    return dest


def test_a_cache_prepared_otherwise_is_refused_by_the_cli(cds_run, tmp_path):
    cache = write_site_cache(tmp_path / "other", "Echo", 2, 2, shape=(4, 32, 32))
    done = subprocess.run([tool("fedcmr"), "predict", "--model",
                           str(cds_run / "fold_0" / BUNDLE_DIR), "--cache", str(cache),
                           "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == EXIT_BAD_INPUT
    assert "Traceback" not in done.stderr
    assert str(cache / "prep.json") in done.stderr
    assert "crop 4,32,32 (the bundle: 4,24,24, with --crop 4,24,24)" in done.stderr
    assert f"re-run `fedcmr prepare ... --out {cache}`" in done.stderr
    assert not (tmp_path / "out" / PREDICTIONS).exists()


def test_other_n4_or_spacing_or_no_prep_json_is_refused(cds_run, tmp_path):
    from fedcmr.client.data.prep_config import N4Params, PrepConfig

    bundle = cds_run / "fold_0" / BUNDLE_DIR
    cache = write_site_cache(tmp_path / "c", "Echo", 2, 2)
    write_prep_info(cache, PrepConfig(crop=(4, 24, 24), n4=N4Params(enabled=False)))
    with pytest.raises(CacheError, match=r"n4\.enabled false .*without --no-n4"):
        predict_caches(bundle, [cache], tmp_path / "out")
    write_prep_info(cache, PrepConfig(crop=(4, 24, 24), spacing_mm=(1.5, 1.5, 1.0)))
    with pytest.raises(CacheError, match=r"spacing_mm 1\.5,1\.5,1 .*--spacing 1,1,1"):
        predict_caches(bundle, [cache], tmp_path / "out")
    (cache / "prep.json").unlink()
    with pytest.raises(CacheError, match=r"prep\.json: missing: not a cache written by"):
        predict_caches(bundle, [cache], tmp_path / "out")


@pytest.mark.parametrize(("changes", "message"), [
    ({"bundle_format": 99}, r"bundle format 99, this fedcmr .* reads format 1\. Fix: use the "
                            r"fedcmr version that wrote it"),
    ({"model_digest": "0123456789abcdef"}, r"trained with another model definition .* Fix: "
                                           r"use the fedcmr version that wrote it"),
    ({"prior": "structures", "input": {"channels": 1, "depth": 4, "height": 24, "width": 24}},
     r"input has 1 channels, but prior 'structures' gives 3"),
    ({"weights_sha256": "0" * 64}, r"model\.pt: damaged or replaced"),
    ({"surprise": 1}, r"field surprise: Extra inputs are not permitted"),
])
def test_a_bad_bundle_is_refused_naming_the_file(cds_run, caches, tmp_path, changes, message):
    bundle = copy_bundle(cds_run, tmp_path / "b", **changes)
    with pytest.raises(BundleError, match=message) as caught:
        predict_caches(bundle, caches[:1], tmp_path / "out")
    assert str(bundle) in str(caught.value) and "Fix: " in str(caught.value)


def test_missing_metadata_or_weights(cds_run, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(BundleError, match=r"metadata\.json: missing.* Fix: point --model at"):
        load_bundle(empty)
    with pytest.raises(BundleError, match="no such bundle folder"):
        load_bundle(tmp_path / "nowhere")
    bundle = copy_bundle(cds_run, tmp_path / "b")
    (bundle / WEIGHTS).unlink()
    with pytest.raises(BundleError, match=r"model\.pt: missing"):
        load_bundle(bundle)
    (bundle / METADATA).write_text("{not json")
    with pytest.raises(BundleError, match=r"metadata\.json: damaged"):
        load_bundle(bundle)


def test_a_frame_without_labels_is_refused_for_a_structures_prior(cds_run, tmp_path):
    """`prepare` crops around the labels, so its caches always hold them; a frame whose
    label map is empty (hand-made or damaged) cannot feed a prior cut out of the labels."""
    bundle = cds_run / "fold_0" / BUNDLE_DIR
    metadata = read_metadata(bundle)  # the run's prior is structures
    assert registry.get(metadata.model).needs_labels(metadata)
    cache = write_site_cache(tmp_path / "c", "Echo", 2, 2)
    entry = read_manifest(cache)[0]
    image, labels = load_frame(cache / entry.file)
    save_frame(cache / entry.file, image, np.zeros_like(labels), entry.key)
    with pytest.raises(CacheError, match=rf"{entry.file}: no heart labels .* prior "
                                         r"'structures'.* --prior baseline"):
        predict_caches(bundle, [cache], tmp_path / "out")
    # a baseline bundle takes it (its input is the image alone)
    baseline = copy_bundle(cds_run, tmp_path / "baseline", prior="baseline")
    _, report = predict_caches(baseline, [cache], tmp_path / "out")
    assert len(report.frames) == 8


def test_phases_the_bundle_was_not_trained_on_are_left_out(cds_run, caches, tmp_path):
    bundle = copy_bundle(cds_run, tmp_path / "b", phases=["ED"])
    metadata, report = predict_caches(bundle, caches[:1], tmp_path / "out")
    assert {r["phase"] for r in report.frames} == {"ED"}
    assert report.left_out == {"ES": len(report.frames)}
    assert "left out: 12 ES frame(s)" in report.summary(metadata)


def test_neither_cache_nor_raw_data_is_bad_input(cds_run, tmp_path, caplog):
    from fedcmr.cli import main

    code = main(["-q", "predict", "--model", str(cds_run / "fold_0" / BUNDLE_DIR),
                 "--out", str(tmp_path)])
    assert code == EXIT_BAD_INPUT
    assert "needs either --cache CACHE... or --dataset and --root" in caplog.text


def test_bundle_weights_load_as_the_run_saved_them(cds_run):
    metadata, state = load_bundle(cds_run / "fold_0" / BUNDLE_DIR)
    saved = torch.load(cds_run / "fold_0" / "best_model.pt", weights_only=True)
    assert state.keys() == saved.keys()
    assert all(torch.equal(state[k], saved[k]) for k in saved)


def test_fl_fold_writes_a_bundle_the_sites_scores_come_back_from(caches, tmp_path):
    """write_fold with a federated fold's outcome (no federation run: the weights, landmarks,
    rounds and test counts a fold ends with) and the roster's describe fingerprints: the
    bundle records them, and predict scores a site's frames as the site's own test step
    does (FrameDataset with the fold's landmarks, then score)."""
    from flwr.app import ArrayRecord

    from fedcmr.common.device import placement
    from fedcmr.common.handshake import site_fingerprint
    from fedcmr.common.learning.data import FrameDataset
    from fedcmr.common.learning.harmonise import Harmoniser
    from fedcmr.common.learning.training import score
    from fedcmr.common.model import build_model
    from fedcmr.common.replies import DescribeReply, ScoreCounts
    from fedcmr.server.fl_outputs import FoldBundle, write_fold
    from fedcmr.server.roster import Roster, SiteInfo
    from fedcmr.server.settings import FederationSettings
    from fedcmr.server.study_runner import FoldOutcome

    run = RunConfig(profile="smoke", folds=(0,), centres=("Alpha",))
    frames = load_cache(caches[:1])
    harmoniser = Harmoniser(run.prior).fit(frames)
    model, _ = build_model("none", seed=run.fold_seed(0), quiet=True)
    expected = score(model, FrameDataset(frames, harmoniser, run.hyper.input_size), placement())
    test = ScoreCounts.of(expected.labels, expected.scores, expected.loss)
    outcome = FoldOutcome(
        fold=0, best_round=2, best_arrays=ArrayRecord(model.state_dict()),
        landmarks=list(harmoniser.landmarks), test={"Alpha": test},
        rounds=[{"round": r, "site": "Alpha", "pooled_val_auc_received": r / 10}
                for r in (1, 2, 3)])
    roster = Roster(grid=None, settings=FederationSettings())
    roster.sites["Alpha"] = SiteInfo(node_id=1, name="Alpha", centres=("Alpha",), frames=24)
    roster.described["Alpha"] = DescribeReply(site="Alpha", centres=("Alpha",), frames=24,
                                              subjects=12, fingerprint=site_fingerprint(caches))
    write_fold(tmp_path / "run", outcome, FoldBundle.of(run, "tempered", 0.5, roster))
    bundle = tmp_path / "run" / "fold_0" / BUNDLE_DIR
    metadata = read_metadata(bundle)
    assert (metadata.framework, metadata.strategy, metadata.vote_alpha) == ("fl", "tempered", 0.5)
    assert metadata.metrics.validation.auc == 0.3  # round 3's replies validated round 2's model
    assert metadata.metrics.test.auc == test.auc() and metadata.metrics.test.n == 24
    assert metadata.preprocessing == preprocessing_of_caches(caches)
    assert metadata.harmonisation.landmarks == harmoniser.landmarks
    assert metadata.init.source == "random" and not metadata.init.pretrained
    _, report = predict_caches(bundle, caches[:1], tmp_path / "out")
    by_key = {(r["subject"], r["phase"]): r["score"] for r in report.frames}
    got = [by_key[(f.subject, f.entry.phase)] for f in frames]
    np.testing.assert_allclose(got, expected.scores, rtol=0, atol=1e-5)

"""The measures model's bundle: a centralised fold writes one, `fedcmr predict` reproduces the
run's test scores from the caches' measures.csv (and from raw files, which it prepares and
measures), and a cache or bundle it cannot take is refused naming the file and the fix. The
federated fold's bundle is checked in test_measures_model.py, beside its run."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from cache_factory import write_measured_cohort
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
from fedcmr.common.cache_format import CacheError
from fedcmr.common.learning.data import load_cache
from fedcmr.common.measures import FEATURES, MEASURES_CSV, read_all_measures
from fedcmr.common.models.bundles import load_bundle
from fedcmr.common.results import read_predictions
from fedcmr.common.run_config import RunConfig
from fedcmr.lab.centralized import run_centralized
from fedcmr.support.cli_options import EXIT_OK
from fedcmr.support.flower_env import tool

SIZES = {"Alpha": (6, 6), "Bravo": (7, 7), "Charlie": (5, 6)}


@pytest.fixture(scope="module")
def caches(tmp_path_factory) -> list[Path]:
    return write_measured_cohort(tmp_path_factory.mktemp("caches"), SIZES)


@pytest.fixture(scope="module")
def run(caches, tmp_path_factory) -> Path:
    """The measures model's five CCV folds, as `fedcmr centralized --model measures` runs
    them (the caches' preprocessing passed in for the bundles)."""
    out = tmp_path_factory.mktemp("cds-measures")
    config = RunConfig(model="measures", profile="smoke", centres=tuple(sorted(SIZES)))
    run_centralized(load_cache(caches), config, out, progress=False,
                    preprocessing=preprocessing_of_caches(caches),
                    measures=read_all_measures(caches))
    return out


def reproduces(run: Path, caches: list[Path], out: Path, fold: int = 0) -> dict:
    """predict with the fold's bundle gives the run's test scores of that fold to 1e-5."""
    metadata, report = predict_caches(run / f"fold_{fold}" / BUNDLE_DIR, caches, out)
    predicted = {(r["centre"], r["subject"], r["phase"]): r["score"] for r in report.frames}
    expected = {(r["centre"], r["subject"], r["phase"]): r["score"]
                for r in read_predictions(run / "predictions.csv") if int(r["fold"]) == fold}
    assert expected and set(expected) <= set(predicted)
    for key, value in expected.items():
        assert predicted[key] == pytest.approx(value, abs=1e-5), key
    assert metadata.metrics.test.n == len(expected)
    return json.loads((run / f"fold_{fold}" / BUNDLE_DIR / METADATA).read_text())


def test_every_cds_fold_writes_a_bundle_that_reproduces_its_test_scores(run, caches, tmp_path):
    for fold in range(5):
        meta = reproduces(run, caches, tmp_path / f"p{fold}", fold)
        assert meta["model"] == "measures" and meta["features"] == list(FEATURES)
        assert meta["input"] is None and meta["harmonisation"]["landmarks"] is None
        assert meta["framework"] == "cds" and meta["fold"] == fold
        assert meta["init"]["source"] == "zeros" and not meta["init"]["pretrained"]
        assert meta["preprocessing"] == json.loads(
            preprocessing_of_caches(caches).model_dump_json())
    # a subject's frames share its score, so its row in subjects.csv is that score
    subjects = (tmp_path / "p0" / SUBJECTS).read_text().splitlines()
    assert len(subjects) == 1 + sum(n_hcm + n_nor for n_hcm, n_nor in SIZES.values())


def test_raw_files_are_prepared_measured_and_scored_by_the_cli(run, tmp_path):
    """`fedcmr predict --dataset acdc` with a measures bundle: prepare measures the raw
    label maps into OUT/cache/measures.csv, and the scores equal those on that cache."""
    root = tmp_path / "acdc"
    for number, group in ((21, "HCM"), (61, "NOR")):
        write_acdc_patient(root, number, group)
    bundle = run / "fold_0" / BUNDLE_DIR
    out = tmp_path / "raw"
    done = subprocess.run([tool("fedcmr"), "-q", "predict", "--model", str(bundle),
                           "--dataset", "acdc", "--root", str(root), "--out", str(out),
                           "--workers", "1"], capture_output=True, text=True, timeout=600)
    assert done.returncode == EXIT_OK, done.stderr[-2000:]
    assert "2 subject(s), 4 frame(s)" in done.stdout
    assert "CDS fold-0 measures model" in done.stdout
    assert (out / "cache" / MEASURES_CSV).is_file()
    cache = tmp_path / "cache"
    run_prepare(load_acdc(root), prep_config(read_metadata(bundle), bundle), cache,
                progress=False)
    predict_caches(bundle, [cache], tmp_path / "on-cache")
    for name in (PREDICTIONS, SUBJECTS):
        assert (out / name).read_text() == (tmp_path / "on-cache" / name).read_text()


def test_a_cache_without_measures_is_refused_naming_it(run, caches, tmp_path):
    bundle = run / "fold_0" / BUNDLE_DIR
    cache = tmp_path / "Alpha"
    shutil.copytree(caches[0], cache)
    lines = (cache / MEASURES_CSV).read_text().splitlines()
    (cache / MEASURES_CSV).write_text("\n".join(lines[:-1]) + "\n")  # one subject unmeasured
    gone = lines[-1].split(",")[0]
    with pytest.raises(CacheError, match=rf"{MEASURES_CSV}: no clinical measures for "
                                         rf"subject\(s\) \['{gone}'\].* Fix: prepare the "
                                         "subjects with their LV, MYO and RV label maps"):
        predict_caches(bundle, [cache], tmp_path / "out")
    (cache / MEASURES_CSV).unlink()
    with pytest.raises(CacheError, match=rf"{cache / MEASURES_CSV}: .* Fix: re-run `fedcmr "
                                         rf"prepare \.\.\. --out {cache}`"):
        predict_caches(bundle, [cache], tmp_path / "out")
    assert not (tmp_path / "out" / PREDICTIONS).exists()


def copy_bundle(run: Path, dest: Path, **changes) -> Path:
    source = run / "fold_0" / BUNDLE_DIR
    dest.mkdir(parents=True)
    shutil.copyfile(source / WEIGHTS, dest / WEIGHTS)
    meta = json.loads((source / METADATA).read_text())
    (dest / METADATA).write_text(json.dumps({**meta, **changes}))
    return dest


@pytest.mark.parametrize(("changes", "message"), [
    ({"features": ["lv_edv_ml"]}, r"metadata\.json: the bundle reads the measures "
                                  r"\['lv_edv_ml'\], this fedcmr measures"),
    ({"model_digest": "0123456789abcdef"}, r"another model definition \(measures digest"),
    ({"input": {"channels": 3, "depth": 4, "height": 24, "width": 24}},
     r"metadata.json: a measures bundle has features and no input layout"),
    ({"model": "cnn"}, r"a cnn bundle has an input layout and no features"),
])
def test_a_bad_measures_bundle_is_refused_naming_the_file(run, tmp_path, changes, message):
    bundle = copy_bundle(run, tmp_path / "b", **changes)
    with pytest.raises(BundleError, match=message) as caught:
        load_bundle(bundle)
    assert str(bundle) in str(caught.value) and "Fix: " in str(caught.value)


def test_arrays_of_the_wrong_length_are_refused(run, tmp_path):
    bundle = copy_bundle(run, tmp_path / "b")
    state = torch.load(bundle / WEIGHTS, weights_only=True)
    state["coef"] = state["coef"][:3]
    torch.save(state, bundle / WEIGHTS)
    meta = json.loads((bundle / METADATA).read_text())
    (bundle / METADATA).write_text(json.dumps({**meta, "weights_sha256": ""}))
    with pytest.raises(BundleError, match=r"model\.pt: not a measures model's arrays"):
        load_bundle(bundle)

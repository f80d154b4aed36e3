"""The cache contract: shapes and columns, no work on a rerun, only the affected stage redone,
and nothing half-written after a crash."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from mri_factory import write_acdc_patient

import fedcmr.client.data.prepare as prepare_mod
from fedcmr.client.data.loaders.acdc import load_acdc
from fedcmr.client.data.prep_config import N4Params, PrepConfig
from fedcmr.client.data.prepare import run_prepare
from fedcmr.client.data.preprocess import crop_around, label_centre
from fedcmr.common.cache_format import MANIFEST_COLUMNS, load_frame, read_manifest
from fedcmr.common.labels import Structure


@pytest.fixture
def cohort(tmp_path) -> Path:
    for number, group in ((21, "HCM"), (22, "HCM"), (61, "NOR")):
        write_acdc_patient(tmp_path / "acdc", number, group)
    return tmp_path / "acdc"


@pytest.fixture
def n4_calls(monkeypatch) -> list[int]:
    calls: list[int] = []
    real = prepare_mod.n4_correct

    def counting(image, params):
        calls.append(1)
        return real(image, params)

    monkeypatch.setattr(prepare_mod, "n4_correct", counting)
    return calls


def small(**kw) -> PrepConfig:
    return PrepConfig(crop=(4, 32, 32), n4=N4Params(enabled=False), **kw)


def test_manifest_and_frames_follow_the_contract(cohort, tmp_path):
    report = run_prepare(load_acdc(cohort), PrepConfig(n4=N4Params(enabled=False)),
                         tmp_path / "cache", progress=False)
    assert report.frames == 6 and not report.skipped
    with (tmp_path / "cache" / "manifest.csv").open() as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames) == MANIFEST_COLUMNS
        rows = list(reader)
    assert {(r["subject"], r["phase"]) for r in rows} == {
        (f"patient0{n}", p) for n in (21, 22, 61) for p in ("ED", "ES")}
    assert {r["label"] for r in rows if r["subject"] == "patient061"} == {"0"}
    for row in rows:
        assert not Path(row["file"]).is_absolute()
        image, labels = load_frame(tmp_path / "cache" / row["file"])
        assert image.shape == labels.shape == (10, 150, 150)
        assert image.dtype == np.float32 and labels.dtype == np.uint8
        assert set(np.unique(labels)) == {0, 1, 2, 3}
        # the heart sits in the middle of the window (the phantom is smaller than the crop)
        centre = label_centre(labels)
        assert all(abs(c - n // 2) <= 1 for c, n in zip(centre[1:], (150, 150), strict=True))


def test_rerun_does_no_work_and_rewrites_nothing(cohort, tmp_path, n4_calls):
    cache = tmp_path / "cache"
    config = PrepConfig(crop=(4, 32, 32))
    assert run_prepare(load_acdc(cohort), config, cache, progress=False).computed == 6
    assert len(n4_calls) == 6
    mtimes = {p: p.stat().st_mtime_ns for p in (cache / "frames").rglob("*.npz")}
    again = run_prepare(load_acdc(cohort), config, cache, progress=False)
    assert again.computed == 0 and len(n4_calls) == 6
    assert {p: p.stat().st_mtime_ns for p in (cache / "frames").rglob("*.npz")} == mtimes


def test_changed_crop_redoes_only_the_geometry_stage(cohort, tmp_path, n4_calls):
    cache = tmp_path / "cache"
    run_prepare(load_acdc(cohort), PrepConfig(crop=(4, 32, 32)), cache, progress=False)
    assert len(n4_calls) == 6
    report = run_prepare(load_acdc(cohort), PrepConfig(crop=(6, 40, 40)), cache, progress=False)
    assert report.computed == 6 and len(n4_calls) == 6  # N4 reused
    image, _ = load_frame(cache / read_manifest(cache)[0].file)
    assert image.shape == (6, 40, 40)
    run_prepare(load_acdc(cohort), PrepConfig(crop=(6, 40, 40), n4=N4Params(shrink_factor=2)),
                cache, progress=False)
    assert len(n4_calls) == 12  # an N4 parameter redoes N4


def test_changed_spacing_redoes_only_the_geometry_stage(cohort, tmp_path, n4_calls):
    cache = tmp_path / "cache"
    run_prepare(load_acdc(cohort), PrepConfig(crop=(4, 32, 32)), cache, progress=False)
    keys = {e.file: e.key for e in read_manifest(cache)}
    before = load_frame(cache / read_manifest(cache)[0].file)[0]
    coarse = PrepConfig(crop=(4, 32, 32), spacing_mm=(2.0, 2.0, 1.0))
    report = run_prepare(load_acdc(cohort), coarse, cache, progress=False)
    assert report.computed == 6 and len(n4_calls) == 6  # resampled anew, N4 reused
    after = {e.file: e.key for e in read_manifest(cache)}
    assert after.keys() == keys.keys() and all(after[f] != keys[f] for f in keys)
    image = load_frame(cache / read_manifest(cache)[0].file)[0]
    assert image.shape == before.shape and not np.array_equal(image, before)
    info = json.loads((cache / "prep.json").read_text())
    assert info["params"]["spacing_mm"] == [2.0, 2.0, 1.0]


def test_interrupted_run_leaves_nothing_a_rerun_would_trust(cohort, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    real = prepare_mod.resample_frame
    calls = []

    def crash_on_third(*args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(prepare_mod, "resample_frame", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        run_prepare(load_acdc(cohort), small(), cache, progress=False)
    assert not (cache / "manifest.csv").exists()
    assert not list(cache.rglob("*.tmp*"))
    finished = list((cache / "frames").rglob("*.npz"))
    assert len(finished) == 2
    monkeypatch.setattr(prepare_mod, "resample_frame", real)
    report = run_prepare(load_acdc(cohort), small(), cache, progress=False)
    assert (report.frames, report.computed) == (6, 4)


def test_corrupt_cached_frame_is_recomputed(cohort, tmp_path):
    cache = tmp_path / "cache"
    run_prepare(load_acdc(cohort), small(), cache, progress=False)
    victim = cache / read_manifest(cache)[0].file
    victim.write_bytes(victim.read_bytes()[:100])
    assert run_prepare(load_acdc(cohort), small(), cache, progress=False).computed == 1
    image, labels = load_frame(victim)
    assert image.shape == (4, 32, 32) and (labels == Structure.LV).any()


def test_crop_pads_where_the_window_leaves_the_image():
    array = np.arange(5 * 6 * 7, dtype=np.float32).reshape(5, 6, 7)
    out = crop_around(array, (0, 0, 0), (4, 4, 4))
    assert out.shape == (4, 4, 4)
    assert out[2, 2, 2] == array[0, 0, 0] and out[0, 0, 0] == 0


def test_real_acdc_sample_prepares_to_the_contract(acdc_sample, tmp_path):
    report = run_prepare(load_acdc(acdc_sample), PrepConfig(), tmp_path / "cache", workers=2,
                         progress=False)
    assert report.frames == 8 and not report.skipped
    for entry in read_manifest(tmp_path / "cache"):
        image, labels = load_frame(tmp_path / "cache" / entry.file)
        assert image.shape == (10, 150, 150) and labels.shape == (10, 150, 150)
        assert np.isfinite(image).all() and image.max() > 0
        assert set(np.unique(labels)) == {0, 1, 2, 3}

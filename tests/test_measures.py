"""Clinical measures: against independent computations on real ACDC files, on hearts whose
true dimensions are known (built here and by the synthetic cohort), and in `prepare`."""

from __future__ import annotations

import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from mri_factory import MNMS_HEADER, mnms_row, write_3d, write_acdc_patient, write_mnms_subject

from fedcmr.client.data.errors import DataError
from fedcmr.client.data.loaders.acdc import load_acdc
from fedcmr.client.data.loaders.mnms import load_mnms
from fedcmr.client.data.measures import measure_phase, measure_subject
from fedcmr.client.data.prep_config import N4Params, PrepConfig
from fedcmr.client.data.prepare import STAGES_DIR, run_prepare
from fedcmr.common.cache_format import read_manifest
from fedcmr.common.frames import SubjectRecord
from fedcmr.common.labels import Structure
from fedcmr.common.measures import read_measures
from fedcmr.lab import synthetic as sc

LV, MYO, RV = Structure.LV, Structure.MYO, Structure.RV


# --------------------------------------------------------------------------- (a) real ACDC


def _info(folder: Path) -> dict[str, str]:
    return dict(line.split(": ", 1) for line in (folder / "Info.cfg").read_text().splitlines())


def _independent(folder: Path) -> dict[str, float]:
    """Volumes from nibabel: raw ACDC values (3 LV, 2 MYO, 1 RV) x the header's voxel size."""
    info = _info(folder)
    out = {}
    for phase in ("ED", "ES"):
        gt = nib.load(folder / f"{folder.name}_frame{int(info[phase]):02d}_gt.nii.gz")
        voxel_ml = float(np.prod(gt.header.get_zooms()[:3])) / 1000
        raw = np.asarray(gt.dataobj)
        for name, value in (("lv", 3), ("myo", 2), ("rv", 1)):
            out[f"{name}_{phase}"] = float((raw == value).sum()) * voxel_ml
    bsa = math.sqrt(float(info["Height"]) * float(info["Weight"]) / 3600)
    mass = out["myo_ED"] * 1.05
    return {"lv_edv_ml": out["lv_ED"], "lv_esv_ml": out["lv_ES"],
            "lv_ef": 1 - out["lv_ES"] / out["lv_ED"], "lv_mass_g": mass,
            "rv_edv_ml": out["rv_ED"], "rv_esv_ml": out["rv_ES"],
            "rv_ef": 1 - out["rv_ES"] / out["rv_ED"], "bsa_m2": bsa,
            "lv_mass_index_g_m2": mass / bsa, "height_cm": float(info["Height"])}


def test_real_acdc_measures_equal_an_independent_count(acdc_sample, tmp_path):
    subjects = load_acdc(acdc_sample).subjects
    assert len(subjects) == 4
    measured = {}
    for record in subjects:
        row, computed = measure_subject(record, tmp_path / f"{record.subject}.json")
        assert computed
        expected = _independent(acdc_sample / "training" / record.subject)
        for name, value in expected.items():
            assert getattr(row, name) == pytest.approx(value, rel=1e-6), (record.subject, name)
        measured[record.subject] = row
    # the maximal ED wall separates the sample's two HCM from its two NOR subjects
    hcm = [m.max_wall_ed_mm for m in measured.values() if m.label == 1]
    nor = [m.max_wall_ed_mm for m in measured.values() if m.label == 0]
    assert min(hcm) > max(nor) and max(nor) > 8  # and normal walls are not implausibly thin


# --------------------------------------------------------------------------- (b) known hearts


def ring_slice(shape: tuple[int, int], spacing: tuple[float, float], r_in: float, wall: float,
               bump: float = 0.0, bump_half_angle: float = 0.0) -> np.ndarray:
    """One short-axis slice (y, x): a cavity of radius r_in mm, a wall of `wall` mm, thicker
    by `bump` mm within +-bump_half_angle of the +x direction (a septal thickening), and an
    RV cavity beside it. Pixel centres at index x spacing."""
    y, x = np.mgrid[0 : shape[0], 0 : shape[1]].astype(float)
    cy, cx = (shape[0] // 2) * spacing[0], (shape[1] // 2) * spacing[1]
    dy, dx = y * spacing[0] - cy, x * spacing[1] - cx
    r, angle = np.hypot(dx, dy), np.arctan2(dy, dx)
    epi = r_in + wall + bump * (np.abs(angle) <= bump_half_angle)
    out = np.zeros(shape, np.uint8)
    out[r < r_in] = LV
    out[(r >= r_in) & (r < epi)] = MYO
    out[(np.hypot(dx + r_in + wall + 12, dy) < 10) & (out == 0)] = RV
    return out


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (1.5, 1.5, 8.0), (1.0, 2.0, 6.0)])
def test_concentric_wall_and_volumes(spacing):
    sx, sy, sz = spacing  # (x, y, z) as SimpleITK gives it; arrays are (z, y, x)
    shape = (int(120 / sy), int(120 / sx))
    stack = np.stack([ring_slice(shape, (sy, sx), 20, 8)] * 6)
    m = measure_phase(stack, spacing)
    pixel = max(sx, sy)
    assert m.max_wall_mm == pytest.approx(8, abs=pixel)
    assert m.mean_wall_mm == pytest.approx(8, abs=pixel)
    height = 6 * sz
    assert m.lv_ml == pytest.approx(math.pi * 20**2 * height / 1000, rel=0.03)
    assert m.myo_ml == pytest.approx(math.pi * (28**2 - 20**2) * height / 1000, rel=0.03)
    assert m.slices == 6


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (1.5, 1.5, 8.0)])
def test_eccentric_septal_thickening(spacing):
    sx, sy, _ = spacing
    shape = (int(140 / sy), int(140 / sx))
    sl = ring_slice(shape, (sy, sx), 20, 8, bump=6, bump_half_angle=math.pi / 6)
    m = measure_phase(sl[None], spacing)
    assert m.max_wall_mm == pytest.approx(14, abs=sx)
    # length-weighted mean of the epicardium: 300 deg at 8 mm, 60 deg at 14 mm, two radial
    # sides of 6 mm whose thickness runs from 8 to 14 mm
    arcs = {8: 300 / 360 * 2 * math.pi * 28, 14: 60 / 360 * 2 * math.pi * 34, 11: 2 * 6}
    expected = sum(t * length for t, length in arcs.items()) / sum(arcs.values())
    assert m.mean_wall_mm == pytest.approx(expected, abs=sx)


def test_per_slice_summaries_and_caps_without_cavity_are_skipped():
    spacing = (1.25, 1.25, 10.0)
    shape = (96, 96)
    walls = (6.0, 8.0, 12.0)
    slices = [ring_slice(shape, spacing[:2], 18, w) for w in walls]
    cap = np.where(ring_slice(shape, spacing[:2], 18, 4) > 0, np.uint8(MYO), np.uint8(0))
    stack = np.stack([np.zeros(shape, np.uint8), *slices, cap])  # empty base, apical cap
    m = measure_phase(stack, spacing)
    assert m.slices == 3
    assert m.max_wall_mm == pytest.approx(12, abs=1.25)
    assert m.mean_wall_mm == pytest.approx(np.mean(walls), abs=1.25)


def test_ejection_fraction_from_two_phases(tmp_path):
    spacing = (1.5, 1.5, 8.0)
    shape = (80, 80)
    ed = np.stack([ring_slice(shape, spacing[:2], 25, 8)] * 5)
    es = np.stack([ring_slice(shape, spacing[:2], 18, 11)] * 5)
    folder = tmp_path / "s"
    paths = {p: write_3d(folder / f"{p}.nii.gz", a, spacing) for p, a in (("ED", ed), ("ES", es))}
    record = _record(paths, paths)
    row, _ = measure_subject(record, tmp_path / "stage.json")
    # discs of 12 and 17 pixel radius miss pi r^2 by up to 3.5% (lattice points in a
    # circle), which moves a 0.48 EF by up to 0.025
    assert row.lv_ef == pytest.approx(1 - 18**2 / 25**2, abs=0.03)
    assert row.max_wall_es_mm == pytest.approx(11, abs=1.5)
    assert row.bsa_m2 == pytest.approx(math.sqrt(170 * 65 / 3600))
    assert row.lv_mass_index_g_m2 == pytest.approx(row.lv_mass_g / row.bsa_m2)


def test_a_phase_without_lv_cavity_is_a_data_error_naming_the_file(tmp_path):
    spacing = (1.5, 1.5, 8.0)
    ed = np.stack([ring_slice((80, 80), spacing[:2], 25, 8)] * 3)
    es = np.where(ed == LV, np.uint8(0), ed)
    paths = {p: write_3d(tmp_path / f"{p}_gt.nii.gz", a, spacing) for p, a in
             (("ED", ed), ("ES", es))}
    with pytest.raises(DataError) as err:
        measure_subject(_record(paths, paths), tmp_path / "stage.json")
    assert err.value.file == str(paths["ES"]) and "LV cavity (label 1)" in err.value.problem
    assert not (tmp_path / "stage.json").exists()


def _record(images: dict[str, Path], labels: dict[str, Path]) -> SubjectRecord:
    return SubjectRecord.model_validate({
        "subject": "s1", "centre": "c", "vendor": "v", "diagnosis": 1,
        "label_map": {"lv": 1, "myo": 2, "rv": 3}, "height_cm": "170", "weight_kg": 65,
        "frames": {p: {"image": images[p], "labels": labels[p]} for p in ("ED", "ES")}})


def test_body_size_blank_unreadable_or_implausible_is_unknown():
    base = {"subject": "s", "centre": "c", "vendor": "v", "diagnosis": 0,
            "label_map": {"lv": 1, "myo": 2, "rv": 3}, "frames": {}}
    for height in ("", "nan", "tall", "1.75", None):
        assert SubjectRecord.model_validate({**base, "height_cm": height}).height_cm is None
    assert SubjectRecord.model_validate({**base, "weight_kg": " 71.5"}).weight_kg == 71.5


# --------------------------------------------------------------------------- (c) synthetic cohort


def test_synthetic_cohort_maximal_ed_wall_matches_the_plan():
    """The plan's maximal ED wall thickness (Heart.t_max) against max_wall_ed_mm on the
    rendered label maps. Measured (seed 0, scale 0.1, 19 NOR/HCM subjects): r = 0.998, error
    +0.09 +- 0.45 mm, range -0.61..+1.06 mm, always under one pixel: each boundary of the hard
    labels is placed to +-half a pixel, and the thickest point lies on a measured slice."""
    plans = [p for p in sc.plan_cohort(0, 0.1) if p.pathology in ("NOR", "HCM")]
    truth, measured = [], []
    for plan in plans:
        labels = sc.render_labels(plan, plan.ed)
        m = measure_phase(labels, (plan.spacing, plan.spacing, plan.dz))
        assert abs(m.max_wall_mm - plan.heart.t_max) <= plan.spacing, plan.name
        truth.append(plan.heart.t_max)
        measured.append(m.max_wall_mm)
    assert np.corrcoef(truth, measured)[0, 1] > 0.99


# --------------------------------------------------------------------------- (d) prepare


@pytest.fixture
def acdc_cohort(tmp_path) -> Path:
    for number, group in ((21, "HCM"), (22, "HCM"), (61, "NOR")):
        write_acdc_patient(tmp_path / "acdc", number, group)
    return tmp_path / "acdc"


def small() -> PrepConfig:
    return PrepConfig(crop=(4, 32, 32), n4=N4Params(enabled=False))


def _stage_times(cache: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in (cache / STAGES_DIR / "measures").glob("*.json")}


def test_prepare_writes_measures_for_the_manifest_and_reuses_them(acdc_cohort, tmp_path):
    cache = tmp_path / "cache"
    first = run_prepare(load_acdc(acdc_cohort), small(), cache, progress=False)
    assert first.measured == 3
    rows = read_measures(cache)
    assert set(rows) == {e.subject for e in read_manifest(cache)} == {
        "patient021", "patient022", "patient061"}
    assert all(r.height_cm == 180 and r.bsa_m2 == pytest.approx(2.0) for r in rows.values())
    stages = _stage_times(cache)
    assert len(stages) == 3
    text = (cache / "measures.csv").read_text()

    again = run_prepare(load_acdc(acdc_cohort), small(), cache, progress=False)
    assert again.computed == 0 and again.measured == 0
    assert _stage_times(cache) == stages and (cache / "measures.csv").read_text() == text

    # an old cache: frames there, measures not; only the measures are computed, the same
    for path in stages:
        path.unlink()
    (cache / "measures.csv").unlink()
    old = run_prepare(load_acdc(acdc_cohort), small(), cache, progress=False)
    assert old.computed == 0 and old.measured == 3
    assert (cache / "measures.csv").read_text() == text


def test_prepare_skips_a_subject_without_myocardium_and_reads_mnms_body_size(tmp_path):
    root = tmp_path / "mnms"
    for code in ("AAA111", "BBB222"):
        write_mnms_subject(root, code)
    broken = root / "Training/Labeled/BBB222/BBB222_sa_gt.nii.gz"
    image = nib.load(broken)
    data = np.asarray(image.dataobj).copy()
    data[..., 2][data[..., 2] == 2] = 0  # no myocardium at ES (time index 2)
    nib.save(nib.Nifti1Image(data, image.affine, image.header), broken)
    (root / "211230_M&Ms_Dataset_information_diagnosis_opendataset.csv").write_text(
        MNMS_HEADER + mnms_row("AAA111") + mnms_row("BBB222"))
    report = run_prepare(load_mnms(root), small(), tmp_path / "cache", progress=False)
    assert [e.subject for e in report.skipped] == ["BBB222"]
    assert report.skipped[0].file == str(broken) and "myocardium" in report.skipped[0].problem
    rows = read_measures(tmp_path / "cache")
    assert set(rows) == {"AAA111"} and {e.subject for e in read_manifest(tmp_path / "cache")} \
        == {"AAA111"}
    assert (rows["AAA111"].height_cm, rows["AAA111"].weight_kg) == (170, 70)

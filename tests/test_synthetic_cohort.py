"""The synthetic cohort must look, on disk, exactly like the real M&Ms and ACDC releases."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from sklearn.metrics import roc_auc_score

from fedcmr.common.centres import MNMS_DEFAULT_CENTRES, MNMS_VENDORS, TABLE1_COUNTS
from fedcmr.common.labels import ACDC_LABELS, MNMS_LABELS, LabelMap
from fedcmr.lab import synthetic as sc
from fedcmr.lab.synthetic.layouts import _prepare

SCALE = 0.05  # two subjects per centre and class, plus the skipped pathologies


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> sc.SynthSummary:
    out = tmp_path_factory.mktemp("synth")
    return sc.synthesize(out, seed=0, scale=SCALE, workers=2, progress=False)


def read(path: Path) -> tuple[sitk.Image, np.ndarray]:
    img = sitk.ReadImage(str(path))
    return img, sitk.GetArrayFromImage(img)


def csv_rows(summary: sc.SynthSummary) -> list[dict[str, str]]:
    with summary.mnms_csv.open(newline="") as f:
        return list(csv.DictReader(f))


def mnms_folder(summary: sc.SynthSummary, code: str) -> Path:
    found = [p for p in summary.mnms_dir.glob(f"*/{code}") if p.is_dir()]
    found += [p for p in summary.mnms_dir.glob(f"*/*/{code}") if p.is_dir()]
    assert len(found) == 1, code
    return found[0]


def acdc_info(folder: Path) -> dict[str, str]:
    lines = folder.joinpath("Info.cfg").read_text().splitlines()
    return dict(line.split(": ", 1) for line in lines)


def acdc_folders(summary: sc.SynthSummary) -> list[Path]:
    return sorted(summary.acdc_dir.glob("training/patient*"))


def centre_of(row: dict[str, str]) -> str:
    return MNMS_DEFAULT_CENTRES[row["Centre"]].name


# --------------------------------------------------------------------------- layout, metadata


def test_counts_follow_table1_and_scale(cohort: sc.SynthSummary) -> None:
    full = sc.class_counts(1.0)
    for centre, (nor, hcm) in TABLE1_COUNTS.items():
        assert (full[centre]["NOR"], full[centre]["HCM"]) == (nor, hcm)
        assert cohort.centres[centre].nor == max(2, round(nor * SCALE))
        assert cohort.centres[centre].hcm == max(2, round(hcm * SCALE))
    assert sum(c.other for c in cohort.centres.values()) >= 1
    assert sum(full[c]["DCM"] + full[c]["HHD"] for c in full) == 8
    rows = csv_rows(cohort)
    for centre in ("Vall d'Hebron", "Sagrada Familia", "SantPau"):
        mine = [r["Pathology"] for r in rows if centre_of(r) == centre]
        assert mine.count("NOR") == cohort.centres[centre].nor
        assert mine.count("HCM") == cohort.centres[centre].hcm
    groups = [acdc_info(f)["Group"] for f in acdc_folders(cohort)]
    assert groups.count("NOR") == cohort.centres["ACDC"].nor
    assert groups.count("HCM") == cohort.centres["ACDC"].hcm
    with pytest.raises(ValueError):
        sc.class_counts(1.5)


def test_mnms_layout_and_csv(cohort: sc.SynthSummary) -> None:
    header = cohort.mnms_csv.read_text().splitlines()[0]
    assert header == "External code,VendorName,Vendor,Centre,ED,ES,Age,Pathology,Sex,Height,Weight"
    assert cohort.mnms_csv.name == "211230_M&Ms_Dataset_information_diagnosis_opendataset.csv"
    rows = csv_rows(cohort)
    assert {r["Pathology"] for r in rows} >= {"NOR", "HCM", "HHD"}
    for row in rows:
        code = row["External code"]
        assert len(code) == 6 and code.isalnum() and code.isupper()
        folder = mnms_folder(cohort, code)
        assert folder.parent.relative_to(cohort.mnms_dir).as_posix() in {
            "Training/Labeled", "Validation", "Testing",
        }  # fmt: skip
        assert {p.name for p in folder.iterdir()} == {f"{code}_sa.nii.gz", f"{code}_sa_gt.nii.gz"}
        info = MNMS_DEFAULT_CENTRES[row["Centre"]]
        assert MNMS_VENDORS[row["Vendor"]] == row["VendorName"] == info.vendor
        assert info.name in TABLE1_COUNTS
        assert row["Sex"] in {"M", "F"} and 18 <= int(row["Age"]) <= 80
        float(row["Height"]), float(row["Weight"])


def test_acdc_layout_and_info(cohort: sc.SynthSummary) -> None:
    names = [f.name for f in acdc_folders(cohort)]
    assert {"patient001", "patient021", "patient022", "patient061", "patient062"} <= set(names)
    for folder in acdc_folders(cohort):
        info = acdc_info(folder)
        assert list(info) == ["ED", "ES", "Group", "Height", "NbFrame", "Weight"]
        number = int(folder.name[-3:])
        expected = {"DCM": range(1, 21), "HCM": range(21, 41), "NOR": range(61, 81)}
        assert number in expected[info["Group"]]
        ed, es, frames = int(info["ED"]), int(info["ES"]), int(info["NbFrame"])
        assert 1 <= ed <= frames and 1 <= es <= frames and ed != es
        assert info["Height"].count(".") == 1 and info["Weight"].count(".") == 1
        files = {p.name for p in folder.iterdir()}
        stem = folder.name
        assert files == {
            "Info.cfg", f"{stem}_4d.nii.gz",
            f"{stem}_frame{ed:02d}.nii.gz", f"{stem}_frame{ed:02d}_gt.nii.gz",
            f"{stem}_frame{es:02d}.nii.gz", f"{stem}_frame{es:02d}_gt.nii.gz",
        }  # fmt: skip


def test_ed_after_es_happens_in_mnms_only() -> None:
    plans = sc.plan_cohort(0, 1.0)
    assert any(p.ed > p.es for p in plans if p.dataset == "mnms")
    assert all(p.ed == 0 for p in plans if p.dataset == "acdc")
    assert len({p.name for p in plans}) == len(plans)


# --------------------------------------------------------------------------- frames and labels


def labelled_frames(labels: np.ndarray) -> list[int]:
    return [t for t in range(labels.shape[0]) if labels[t].any()]


def test_mnms_frames_and_geometry(cohort: sc.SynthSummary) -> None:
    for row in csv_rows(cohort):
        folder = mnms_folder(cohort, row["External code"])
        img, image = read(folder / f"{folder.name}_sa.nii.gz")
        gt, labels = read(folder / f"{folder.name}_sa_gt.nii.gz")
        assert img.GetDimension() == 4 and image.dtype == np.int16 and labels.dtype == np.uint8
        ed, es = int(row["ED"]), int(row["ES"])
        assert 0 <= ed < image.shape[0] and 0 <= es < image.shape[0]
        assert labelled_frames(labels) == sorted({ed, es})
        assert_same_geometry(img, gt)
        scanner = sc.SCANNERS[centre_of(row)]
        check_spacing(img.GetSpacing()[:3], scanner)
        direction = np.asarray(img.GetDirection()).reshape(4, 4)[:3, :3]
        assert np.allclose(direction @ direction.T, np.eye(3), atol=1e-5)
        assert not np.allclose(direction, np.eye(3))  # oblique short-axis planes
        assert 0 < image.max() < 32767


def test_acdc_frames_and_geometry(cohort: sc.SynthSummary) -> None:
    for folder in acdc_folders(cohort):
        info = acdc_info(folder)
        img4, cine = read(folder / f"{folder.name}_4d.nii.gz")
        assert cine.shape[0] == int(info["NbFrame"]) and cine.dtype == np.int16
        for key in ("ED", "ES"):
            stem = folder / f"{folder.name}_frame{int(info[key]):02d}"
            img, image = read(stem.with_name(stem.name + ".nii.gz"))
            gt, labels = read(stem.with_name(stem.name + "_gt.nii.gz"))
            assert img.GetDimension() == 3 and labels.dtype == np.uint8
            assert labels.any()
            assert np.array_equal(image, cine[int(info[key]) - 1])  # 1-based frame numbers
            assert_same_geometry(img, gt)
            assert img.GetDirection() == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
            assert img.GetSpacing() == img4.GetSpacing()[:3]
            check_spacing(img.GetSpacing(), sc.SCANNERS["ACDC"])


def assert_same_geometry(a: sitk.Image, b: sitk.Image) -> None:
    assert a.GetSize() == b.GetSize()
    assert np.allclose(a.GetSpacing(), b.GetSpacing())
    assert np.allclose(a.GetOrigin(), b.GetOrigin())
    assert np.allclose(a.GetDirection(), b.GetDirection())


def check_spacing(spacing: tuple[float, ...], scanner: sc.Scanner) -> None:
    lo, hi = scanner.spacing_mm
    assert spacing[0] == pytest.approx(spacing[1])
    assert lo - 1e-4 <= spacing[0] <= hi + 1e-4
    assert min(scanner.slice_mm) - 1e-4 <= spacing[2] <= max(scanner.slice_mm) + 1e-4


def enclosed(labels: np.ndarray, value: int, allowed: set[int]) -> bool:
    """Every in-plane 4-neighbour of a `value` voxel is one of `allowed` (or itself)."""
    mask = labels == value
    ok = np.isin(labels, [value, *allowed])
    padded = np.pad(ok, ((0, 0), (1, 1), (1, 1)), constant_values=False)
    neighbours_ok = (
        padded[:, :-2, 1:-1] & padded[:, 2:, 1:-1] & padded[:, 1:-1, :-2] & padded[:, 1:-1, 2:]
    )
    return bool(mask.any()) and bool(np.all(neighbours_ok[mask]))


def check_numbering(labels: np.ndarray, label_map: LabelMap) -> None:
    assert set(np.unique(labels)) <= {0, label_map.lv, label_map.myo, label_map.rv}
    # The LV cavity is the label the myocardium fully encloses; the RV cavity is not.
    assert enclosed(labels, label_map.lv, {label_map.myo})
    assert not enclosed(labels, label_map.rv, {label_map.myo})
    assert not enclosed(labels, label_map.myo, {label_map.lv})


def test_label_numbering_per_dataset(cohort: sc.SynthSummary) -> None:
    for row in csv_rows(cohort):
        folder = mnms_folder(cohort, row["External code"])
        _, labels = read(folder / f"{folder.name}_sa_gt.nii.gz")
        for t in (int(row["ED"]), int(row["ES"])):
            check_numbering(labels[t], MNMS_LABELS)
    for folder in acdc_folders(cohort):
        for gt in folder.glob("*_gt.nii.gz"):
            check_numbering(read(gt)[1], ACDC_LABELS)


def test_es_cavity_smaller_and_wall_thicker() -> None:
    for plan in sc.plan_cohort(0, SCALE)[:6]:
        ed, es = sc.render_labels(plan, plan.ed), sc.render_labels(plan, plan.es)
        assert (es == 1).sum() < 0.6 * (ed == 1).sum()  # internal numbering: 1 = LV
        assert sc.max_wall_thickness_mm(es, plan.spacing) > sc.max_wall_thickness_mm(
            ed, plan.spacing
        )


# --------------------------------------------------------------------------- determinism


def test_files_match_an_independent_render(cohort: sc.SynthSummary) -> None:
    """Same seed, other process and worker count -> identical voxels; another seed differs."""
    plans = sc.plan_cohort(0, SCALE)
    first_mnms = next(p for p in plans if p.dataset == "mnms")
    first_acdc = next(p for p in plans if p.dataset == "acdc")
    again = sc.render_subject(first_mnms)
    path = cohort.out / first_mnms.folder / f"{first_mnms.name}_sa.nii.gz"
    assert np.array_equal(read(path)[1], again.image)
    gt = cohort.out / first_mnms.folder / f"{first_mnms.name}_sa_gt.nii.gz"
    assert np.array_equal(read(gt)[1], again.labels)  # M&Ms numbering is the internal one
    acdc = sc.render_subject(first_acdc, [first_acdc.ed])
    path = cohort.out / first_acdc.folder / f"{first_acdc.name}_frame01.nii.gz"
    assert np.array_equal(read(path)[1], acdc.image[0])
    other = sc.plan_cohort(1, SCALE)[0]
    assert other.name != first_mnms.name
    assert not np.array_equal(sc.render_subject(other, [0]).image[0], again.image[0])
    assert [p.name for p in plans] == [
        p.name
        for p in sc.plan_cohort(0, 1.0)
        if p.index < sc.class_counts(SCALE)[p.centre][p.pathology]
    ]  # a smaller scale keeps a prefix of every class


def test_summary_lists_what_was_written(cohort: sc.SynthSummary) -> None:
    on_disk = sorted(p for p in cohort.out.rglob("*") if p.is_file())
    assert on_disk == cohort.files
    assert cohort.bytes_written == sum(p.stat().st_size for p in on_disk)


# --------------------------------------------------------------------------- disease signal


def test_wall_thickness_separates_classes_imperfectly(cohort: sc.SynthSummary) -> None:
    """Maximal ED wall thickness from the label maps: AUC high but not perfect (full cohort)."""
    plans = [p for p in sc.plan_cohort(0, 1.0) if p.pathology in ("NOR", "HCM")]
    thickness = np.array([sc.max_wall_thickness_mm(sc.render_labels(p, p.ed), p.spacing)
                          for p in plans])  # fmt: skip
    hcm = np.array([p.pathology == "HCM" for p in plans])
    auc = roc_auc_score(hcm, thickness)
    assert 0.8 <= auc <= 0.97
    assert thickness[hcm].mean() > thickness[~hcm].mean() + 3
    assert thickness[~hcm].max() > thickness[hcm].min()  # overlap
    assert 6 <= np.median(thickness[~hcm]) <= 12 and np.median(thickness[hcm]) >= 13
    # The written files carry the same evidence as the in-memory render.
    for row in csv_rows(cohort)[:4]:
        plan = next(p for p in sc.plan_cohort(0, SCALE) if p.name == row["External code"])
        folder = mnms_folder(cohort, plan.name)
        labels = read(folder / f"{plan.name}_sa_gt.nii.gz")[1][plan.ed]
        assert sc.max_wall_thickness_mm(labels, plan.spacing) == pytest.approx(
            sc.max_wall_thickness_mm(sc.render_labels(plan, plan.ed), plan.spacing)
        )


def test_never_clears_foreign_data_but_replaces_its_own(tmp_path: Path) -> None:
    foreign = tmp_path / "mnms" / "real.csv"
    foreign.parent.mkdir()
    foreign.write_text("x")
    with pytest.raises(FileExistsError):
        sc.synthesize(tmp_path, scale=SCALE, progress=False)
    assert foreign.exists()
    (tmp_path / sc.MARKER_NAME).write_text("{}")
    stale = tmp_path / "acdc" / "training" / "patient099" / "Info.cfg"
    stale.parent.mkdir(parents=True)
    stale.write_text("Group: NOR\n")
    _prepare(tmp_path)
    assert not foreign.exists() and not stale.exists()
    assert (tmp_path / "acdc" / "training").is_dir()

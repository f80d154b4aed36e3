"""Every kind of bad input: one clear line naming the file, the subject skipped, the rest
prepared, the exit code telling, and the input tree left exactly as it was."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np
import pytest
from mri_factory import (
    MNMS_HEADER,
    mnms_row,
    phantom,
    skew_header,
    write_3d,
    write_4d,
    write_mnms_subject,
)

from fedcmr.cli import main
from fedcmr.support.cli_options import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_SKIPPED


def tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        h.update(str(path.relative_to(root)).encode())
        if path.is_file():
            h.update(path.read_bytes())
    return h.hexdigest()


def make_cohort(root: Path, bad_rows: list[str]) -> Path:
    """Two good M&Ms subjects plus whatever bad ones a test adds."""
    write_mnms_subject(root, "GOOD01")
    write_mnms_subject(root, "GOOD02", part="Testing")
    csv_path = root / "211230_M&Ms_Dataset_information_diagnosis_opendataset.csv"
    csv_path.write_text(MNMS_HEADER + mnms_row("GOOD01") + mnms_row("GOOD02", pathology="NOR")
                        + "".join(bad_rows))
    return csv_path


def prepare(root: Path, out: Path, *extra: str) -> int:
    return main(["-q", "prepare", "--dataset", "mnms", "--root", str(root), "--out", str(out),
                 "--no-n4", "--crop", "4,32,32", "--workers", "1", *extra])


def skipped_rows(out: Path) -> list[dict[str, str]]:
    with (out / "skipped.csv").open() as handle:
        return list(csv.DictReader(handle))


def _truncated(root: Path) -> None:
    folder = write_mnms_subject(root, "BAD001")
    data = (folder / "BAD001_sa.nii.gz").read_bytes()
    (folder / "BAD001_sa.nii.gz").write_bytes(data[: len(data) // 3])


def _missing_labels(root: Path) -> None:
    (write_mnms_subject(root, "BAD001") / "BAD001_sa_gt.nii.gz").unlink()


def _empty_mask(root: Path) -> None:
    folder = write_mnms_subject(root, "BAD001")
    image, labels = phantom(1, 2, 3)
    write_4d(folder / "BAD001_sa_gt.nii.gz", [np.zeros_like(labels)] * 4)


def _geometry(root: Path) -> None:
    folder = write_mnms_subject(root, "BAD001")
    _, labels = phantom(1, 2, 3)
    write_4d(folder / "BAD001_sa_gt.nii.gz", [labels[:, :40, :40]] * 4)


def _unknown_labels(root: Path) -> None:
    folder = write_mnms_subject(root, "BAD001")
    _, labels = phantom(1, 2, 3)
    labels[0, 0, 0] = 7
    write_4d(folder / "BAD001_sa_gt.nii.gz", [labels] * 4)


def _not_nifti(root: Path) -> None:
    folder = write_mnms_subject(root, "BAD001")
    (folder / "BAD001_sa.nii.gz").write_text("this is not an image")


def _nan_image(root: Path) -> None:
    folder = write_mnms_subject(root, "BAD001")
    image, _ = phantom(1, 2, 3)
    write_4d(folder / "BAD001_sa.nii.gz", [np.full(image.shape, np.nan, np.float32)] * 4)


def _blank_image(root: Path) -> None:
    folder = write_mnms_subject(root, "BAD001")
    image, _ = phantom(1, 2, 3)
    write_4d(folder / "BAD001_sa.nii.gz", [np.zeros(image.shape, np.float32)] * 4)


def _sheared_header(root: Path) -> None:
    folder = write_mnms_subject(root, "BAD001")
    for name in ("BAD001_sa.nii.gz", "BAD001_sa_gt.nii.gz"):
        skew_header(folder / name, 5.0)


CASES = {
    # ITK reads NaN voxels of a NIfTI file as 0; a float file is read again to see them
    "nan-image": (_nan_image, mnms_row("BAD001"), "BAD001_sa.nii.gz",
                  "image holds NaN or Inf values"),
    "blank-image": (_blank_image, mnms_row("BAD001"), "BAD001_sa.nii.gz", "image is blank"),
    "truncated": (_truncated, mnms_row("BAD001"), "BAD001_sa.nii.gz", "truncated"),
    "not-nifti": (_not_nifti, mnms_row("BAD001"), "BAD001_sa.nii.gz", "cannot be read"),
    "missing-labels": (_missing_labels, mnms_row("BAD001"), "BAD001_sa_gt.nii.gz", "missing"),
    "empty-mask": (_empty_mask, mnms_row("BAD001"), "BAD001_sa_gt.nii.gz", "empty"),
    "geometry": (_geometry, mnms_row("BAD001"), "BAD001_sa_gt.nii.gz", "geometry"),
    "unknown-labels": (_unknown_labels, mnms_row("BAD001"), "BAD001_sa_gt.nii.gz",
                       "unknown label values [7]"),
    "frame-outside": (lambda r: write_mnms_subject(r, "BAD001"), mnms_row("BAD001", es=9),
                      "BAD001_sa.nii.gz", "outside the series"),
    "sheared-header": (_sheared_header, mnms_row("BAD001"), "BAD001_sa.nii.gz",
                       "direction cosines are not orthonormal: its sform axes are 5 degrees"),
    "no-series": (lambda r: None, mnms_row("BAD001"), "BAD001_sa.nii.gz", "no image series"),
    "listed-twice": (lambda r: write_mnms_subject(r, "BAD001"),
                     mnms_row("BAD001") + mnms_row("BAD001"), ".csv", "listed 2 times"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_subject_is_skipped_reported_and_the_rest_prepared(case, tmp_path, caplog):
    make_bad, row, file_part, problem = CASES[case]
    root, out = tmp_path / "data", tmp_path / "cache"
    make_bad(root)
    make_cohort(root, [row])
    before = tree_digest(root)

    assert prepare(root, out) == EXIT_SKIPPED
    (skip,) = skipped_rows(out)
    assert skip["subject"] == "BAD001"
    assert skip["file"].endswith(file_part) and problem in skip["problem"], skip
    assert skip["fix"]
    warning = next(r.getMessage() for r in caplog.records if "BAD001" in r.getMessage())
    assert file_part in warning and "Fix:" in warning and "\n" not in warning
    with (out / "manifest.csv").open() as handle:
        subjects = {row["subject"] for row in csv.DictReader(handle)}
    assert subjects == {"GOOD01", "GOOD02"}
    assert tree_digest(root) == before, "the input tree was modified"


def test_a_centre_left_with_one_class_after_skips_is_warned_with_the_fix(tmp_path, caplog):
    """GOOD01 (HCM) prepares; BAD001, the centre's only NOR subject, has an empty mask and
    is skipped: the centre's cache would hold HCM only, and prepare says so."""
    root = tmp_path / "data"
    _empty_mask(root)
    write_mnms_subject(root, "GOOD01")
    (root / "211230_M&Ms_Dataset_information_diagnosis_opendataset.csv").write_text(
        MNMS_HEADER + mnms_row("GOOD01") + mnms_row("BAD001", pathology="NOR"))
    with caplog.at_level("WARNING"):
        assert prepare(root, tmp_path / "cache") == EXIT_SKIPPED
    (line,) = [r.getMessage() for r in caplog.records if "holds no" in r.getMessage()]
    assert "holds no NOR subject after 1 skipped subject(s)" in line and "Fix:" in line


def test_strict_turns_a_skip_into_failure(tmp_path):
    root = tmp_path / "data"
    _empty_mask(root)
    make_cohort(root, [mnms_row("BAD001")])
    assert prepare(root, tmp_path / "cache", "--strict") == EXIT_FAILED


def test_csv_without_a_needed_column_names_it(tmp_path, caplog):
    root = tmp_path / "data"
    write_mnms_subject(root, "GOOD01")
    (root / "M&Ms Dataset Information.csv").write_text("External code,Vendor,Centre,ED\n"
                                                       "GOOD01,B,2,0\n")
    assert prepare(root, tmp_path / "cache") == EXIT_BAD_INPUT
    assert "missing column es" in caplog.text and "M&Ms Dataset Information.csv" in caplog.text
    assert "pathology" in caplog.text


def test_cache_inside_the_input_root_is_refused(tmp_path, caplog):
    root = tmp_path / "data"
    make_cohort(root, [])
    before = tree_digest(root)
    assert prepare(root, root / "cache") == EXIT_BAD_INPUT
    assert "outside the data folder" in caplog.text
    assert tree_digest(root) == before


def acdc_with_bad_info(tmp_path: Path, info: str) -> dict[str, str]:
    """Two ACDC patients, the second with this Info.cfg: prepare skips it (exit 3); its
    skipped.csv row."""
    from mri_factory import write_acdc_patient

    write_acdc_patient(tmp_path / "acdc", 21, "HCM", ed=1, es=3, frames=5)
    folder = write_acdc_patient(tmp_path / "acdc", 22, "HCM")
    (folder / "Info.cfg").write_text(info)
    code = main(["-q", "prepare", "--dataset", "acdc", "--root", str(tmp_path / "acdc"),
                 "--out", str(tmp_path / "cache"), "--no-n4", "--crop", "4,32,32"])
    assert code == EXIT_SKIPPED
    (skip,) = skipped_rows(tmp_path / "cache")
    assert skip["subject"] == "patient022" and skip["file"].endswith("Info.cfg")
    return skip


def test_acdc_frame_number_outside_the_series(tmp_path):
    skip = acdc_with_bad_info(tmp_path, "ED: 1\nES: 31\nGroup: HCM\nNbFrame: 30\n")
    assert "outside the series" in skip["problem"]


def test_site_folder_geometry_mismatch_is_reported(tmp_path):
    image, labels = phantom(1, 2, 3)
    site = tmp_path / "site"
    write_3d(site / "a.nii.gz", image)
    write_3d(site / "a_seg.nii.gz", labels, spacing=(1.0, 1.0, 8.0))
    (site / "manifest.csv").write_text("subject,label,ed_image,ed_labels,es_image,es_labels\n"
                                       "s1,NOR,a.nii.gz,a_seg.nii.gz,a.nii.gz,a_seg.nii.gz\n")
    code = main(["-q", "prepare", "--dataset", "folder", "--root", str(site / "manifest.csv"),
                 "--out", str(tmp_path / "cache"), "--label-numbers", "lv=1,myo=2,rv=3",
                 "--no-n4", "--crop", "4,32,32"])
    assert code == EXIT_SKIPPED
    (skip,) = skipped_rows(tmp_path / "cache")
    assert "spacing" in skip["problem"] and skip["file"].endswith("a_seg.nii.gz")


def test_acdc_info_cfg_without_a_group_is_skipped_and_named(tmp_path):
    skip = acdc_with_bad_info(tmp_path, "ED: 1\nES: 3\nNbFrame: 4\n")
    assert "no 'Group:' line" in skip["problem"] and "Group: NOR" in skip["fix"]


def test_a_few_nan_voxels_on_disk_are_refused_though_itk_reads_them_as_zero(tmp_path):
    """Four NaN voxels in one frame of a float 4D file: ITK reads them as 0 (the defence
    off: they would train as dark voxels); the frame is refused, the others pass."""
    import SimpleITK as sitk

    from fedcmr.client.data.errors import DataError
    from fedcmr.client.data.frame_io import check_signal
    from fedcmr.common.frames import FrameSource

    folder = write_mnms_subject(tmp_path, "BAD001")
    image, _ = phantom(1, 2, 3)
    frames = [image.astype(np.float32) + 1.0 for _ in range(4)]
    frames[2][0, 0, :4] = np.nan
    write_4d(folder / "BAD001_sa.nii.gz", frames)
    path = folder / "BAD001_sa.nii.gz"
    read = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    assert np.isfinite(read).all() and (read == 0).sum() >= 4  # what ITK alone makes of it
    source = FrameSource(image=path, labels=folder / "BAD001_sa_gt.nii.gz", time_index=2)
    with pytest.raises(DataError, match="BAD001_sa.nii.gz: image holds NaN or Inf values at "
                                        "frame 2"):
        check_signal(sitk.ReadImage(str(path))[:, :, :, 2], source)
    for index in (0, 1, 3):
        check_signal(sitk.ReadImage(str(path))[:, :, :, index],
                     FrameSource(image=path, labels=source.labels, time_index=index))


def test_non_finite_voxels_are_refused_naming_the_file():
    """Images from other readers may hold NaN or Inf in memory."""
    import SimpleITK as sitk

    from fedcmr.client.data.errors import DataError
    from fedcmr.client.data.frame_io import check_signal
    from fedcmr.common.frames import FrameSource

    source = FrameSource(image=Path("scan.nii.gz"), labels=Path("seg.nii.gz"), time_index=2)
    for bad in (np.nan, np.inf):
        image = sitk.GetImageFromArray(np.array([[[0.0, 1.0, bad]]], np.float32))
        with pytest.raises(DataError, match="scan.nii.gz: image holds NaN or Inf values at "
                                            "frame 2"):
            check_signal(image, source)
    check_signal(sitk.GetImageFromArray(np.array([[[0.0, 1.0]]], np.float32)), source)


def test_slightly_non_orthonormal_header_is_read_with_a_warning(tmp_path, caplog):
    """ITK refuses direction cosines a rounding error away from orthonormal when there is no
    qform to fall back on; fedcmr reads such a file with the nearest rotation, and says so."""
    import SimpleITK as sitk

    from fedcmr.client.data.frame_io import read_volume

    root = tmp_path / "data"
    folder = write_mnms_subject(root, "SKEW01")
    image_path = folder / "SKEW01_sa.nii.gz"
    for path in (image_path, folder / "SKEW01_sa_gt.nii.gz"):
        skew_header(path, 0.05)
    with pytest.raises(RuntimeError, match="orthonormal direction cosines"):
        sitk.ReadImage(str(image_path))  # the file really is one ITK refuses
    image = read_volume(image_path, "image")
    direction = np.array(image.GetDirection()).reshape(4, 4)[:3, :3]
    assert np.allclose(direction @ direction.T, np.eye(3), atol=1e-9)
    lean = np.radians(0.05)  # the nearest rotation splits the shear between x and y
    assert np.allclose(direction[:2, :2], [[1, -lean / 2], [lean / 2, 1]], atol=1e-5)
    warning = next(r.getMessage() for r in caplog.records if "SKEW01" in r.getMessage())
    assert str(image_path) in warning and "0.05 degrees from perpendicular" in warning

    make_cohort(root, [mnms_row("SKEW01")])
    assert prepare(root, tmp_path / "cache") == 0
    with (tmp_path / "cache" / "manifest.csv").open() as handle:
        subjects = {row["subject"] for row in csv.DictReader(handle)}
    assert subjects == {"GOOD01", "GOOD02", "SKEW01"}

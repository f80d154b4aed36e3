"""ACDC's release parts: the paper's 100 training subjects by default, the testing part or
both on request; the part comes from the training/ or testing/ folder, else the numbering."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from mri_factory import write_acdc_patient

from fedcmr.cli import main
from fedcmr.client.data.errors import DatasetError
from fedcmr.client.data.loaders.acdc import load_acdc
from fedcmr.common.cache_format import read_manifest
from fedcmr.support.cli_options import EXIT_BAD_INPUT, EXIT_OK

#: Patients of each part, as the release numbers them (training 1-100, testing 101-150).
TRAINING = {21: "HCM", 22: "HCM", 61: "NOR", 1: "DCM"}
TESTING = {121: "HCM", 141: "NOR", 142: "NOR"}


def write_release(root: Path, flat: bool = False) -> Path:
    """A small ACDC release: training/ and testing/ (or every patient straight under the
    root, `flat`); the testing part's Info.cfg carries Group, as the real one does."""
    for number, group in {**TRAINING, **TESTING}.items():
        folder = write_acdc_patient(root, number, group)  # written under training/
        part = "training" if number <= 100 else "testing"
        if flat or part == "testing":
            (root / ("" if flat else part)).mkdir(exist_ok=True)
            shutil.move(folder, root / ("" if flat else part) / folder.name)
    if flat:
        (root / "training").rmdir()
    return root


def subjects(root: Path, part: str = "training") -> list[str]:
    return sorted(s.subject for s in load_acdc(root, part).subjects)  # type: ignore[arg-type]


@pytest.mark.parametrize("flat", [False, True], ids=["folders", "flat"])
def test_the_default_is_the_training_part_and_the_others_work(tmp_path, flat):
    root = write_release(tmp_path / "acdc", flat)
    assert (root / "testing").is_dir() != flat
    default = load_acdc(root)
    assert sorted(s.subject for s in default.subjects) == ["patient021", "patient022",
                                                           "patient061"]
    assert default.excluded == {"group DCM": 1,
                                "ACDC part testing (--acdc-part training)": 3}
    assert subjects(root, "testing") == ["patient121", "patient141", "patient142"]
    assert subjects(root, "all") == ["patient021", "patient022", "patient061", "patient121",
                                     "patient141", "patient142"]
    assert not load_acdc(root, "all").skipped


def test_the_folder_decides_before_the_number(tmp_path):
    """A testing/ folder holding a patient numbered like training (a re-numbered copy): the
    folder wins; a root that is itself the testing/ folder is the testing part."""
    root = write_release(tmp_path / "acdc")
    shutil.move(root / "training" / "patient022", root / "testing" / "patient022")
    assert subjects(root) == ["patient021", "patient061"]
    assert "patient022" in subjects(root, "testing")
    assert subjects(root / "testing", "testing") == ["patient022", "patient121", "patient141",
                                                     "patient142"]


def test_a_patient_in_no_part_is_skipped_unless_all_parts_are_asked_for(tmp_path):
    root = write_release(tmp_path / "acdc", flat=True)
    folder = root / "volunteer"  # neither in a part folder nor numbered
    shutil.move(root / "patient061", folder)
    for path in folder.glob("patient061*"):
        path.rename(folder / path.name.replace("patient061", "volunteer"))
    result = load_acdc(root)
    (skip,) = result.skipped
    assert skip.subject == "volunteer" and "in no ACDC part" in skip.problem
    assert "training/ or testing/" in skip.fix and "--acdc-part all" in skip.fix
    everything = load_acdc(root, "all")
    assert not everything.skipped and "volunteer" in subjects(root, "all")


def test_a_root_without_the_part_says_which_parts_it_has_and_the_fix(tmp_path):
    root = write_release(tmp_path / "acdc")
    shutil.rmtree(root / "training")
    with pytest.raises(DatasetError, match=rf"{root}: no ACDC subject of the training part "
                                           r"\(found 3 of the testing part\)\. Fix: .*"
                                           r"--acdc-part testing or all"):
        load_acdc(root)
    assert subjects(root, "testing") == ["patient121", "patient141", "patient142"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"empty: no ACDC patient folder .*Fix: point "
                                           "--root at the ACDC release"):
        load_acdc(tmp_path / "empty", "all")
    with pytest.raises(DatasetError, match="part 'validation': unknown"):
        load_acdc(root, "validation")  # type: ignore[arg-type]


def test_prepare_takes_the_training_part_and_prints_its_counts(tmp_path, caplog):
    root = write_release(tmp_path / "acdc")
    common = ["--dataset", "acdc", "--no-n4", "--crop", "4,32,32", "--workers", "1"]
    with caplog.at_level("INFO", logger="fedcmr"):
        code = main(["prepare", *common, "--root", str(root), "--out", str(tmp_path / "cache")])
    assert code == EXIT_OK
    assert {e.subject for e in read_manifest(tmp_path / "cache")} == {
        "patient021", "patient022", "patient061"}
    assert "not in the study: 3 subject(s) with ACDC part testing" in caplog.text
    assert [line.split() for line in caplog.messages if "NOR" in line and "HCM" in line] == [
        ["ACDC", "NOR", "1", "HCM", "2"]]
    caplog.clear()
    code = main(["-q", "prepare", *common, "--acdc-part", "testing", "--root",
                 str(root / "training"), "--out", str(tmp_path / "cache-testing")])
    assert code == EXIT_BAD_INPUT
    assert "no ACDC subject of the testing part" in caplog.text


def test_the_real_sample_is_the_training_part(acdc_sample):
    assert len(subjects(acdc_sample)) == 4
    with pytest.raises(DatasetError, match="no ACDC subject of the testing part"):
        load_acdc(acdc_sample, "testing")

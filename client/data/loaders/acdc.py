"""ACDC (MICCAI 2017): patientNNN/Info.cfg with 1-based ED/ES frame numbers naming the files.

A full release has a training part (training/patient001-100) and a testing part
(testing/patient101-150); the testing part's Info.cfg carries Group too. The paper used the
100 training subjects (Table 1: 20 NOR, 20 HCM), so the training part is the default.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Literal, get_args

from fedcmr.client.data.errors import DataError, DatasetError
from fedcmr.client.data.loaders.result import LoadResult
from fedcmr.common.centres import ACDC_CENTRE, ACDC_VENDOR
from fedcmr.common.frames import FrameSource, SubjectRecord
from fedcmr.common.labels import ACDC_LABELS, parse_diagnosis


def parse_info_cfg(path: Path) -> dict[str, str]:
    """`Key: value` lines of an Info.cfg."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise DataError(path, f"cannot be read ({exc.strerror})", "check file permissions") \
            from None
    info = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            info[key.strip()] = value.strip()
    return info


def _frame_number(info: dict[str, str], key: str, cfg: Path) -> int:
    try:
        number = int(float(info[key]))
    except KeyError:
        raise DataError(cfg, f"has no '{key}:' line", f"add the 1-based {key} frame number") \
            from None
    except ValueError:
        raise DataError(cfg, f"{key} value {info[key]!r} is not a frame number",
                        f"write the 1-based {key} frame number") from None
    frames = info.get("NbFrame")
    if number < 1 or (frames and frames.isdigit() and number > int(frames)):
        raise DataError(cfg, f"{key} frame {number} is outside the series (1..{frames})",
                        f"correct {key} (ACDC frame numbers are 1-based)")
    return number


def _subject(cfg: Path, info: dict[str, str]) -> SubjectRecord | None:
    patient = cfg.parent.name
    if not info.get("Group"):
        raise DataError(cfg, "has no 'Group:' line (the diagnosis)",
                        "add the subject's diagnosis, e.g. 'Group: NOR' or 'Group: HCM'")
    diagnosis = parse_diagnosis(info["Group"])
    if diagnosis is None:
        return None
    frames = {}
    for phase in ("ED", "ES"):
        stem = cfg.parent / f"{patient}_frame{_frame_number(info, phase, cfg):02d}"
        frames[phase] = FrameSource(image=stem.with_name(stem.name + ".nii.gz"),
                                    labels=stem.with_name(stem.name + "_gt.nii.gz"))
    return SubjectRecord(subject=patient, centre=ACDC_CENTRE, vendor=ACDC_VENDOR,
                         diagnosis=diagnosis, label_map=ACDC_LABELS, frames=frames,
                         height_cm=info.get("Height"), weight_kg=info.get("Weight"))


AcdcPart = Literal["training", "testing", "all"]
ACDC_PARTS: tuple[str, ...] = get_args(AcdcPart)
#: The part `fedcmr prepare --dataset acdc` takes unless told otherwise: the paper's.
DEFAULT_ACDC_PART: AcdcPart = "training"
#: The official numbering of each part, for patient folders outside training/ and testing/.
PART_NUMBERS = {"training": range(1, 101), "testing": range(101, 151)}


def acdc_part(patient: Path, root: Path) -> str | None:
    """The release part of a patient folder: the nearest enclosing training/ or testing/
    folder (from the patient folder up to the root itself), else the official numbering
    (patient001-100 training, patient101-150 testing); None when neither tells."""
    inside = patient.relative_to(root).parts[:-1] if patient != root else ()
    for name in (*reversed(inside), root.resolve().name):
        if name.lower() in PART_NUMBERS:
            return name.lower()
    number = re.fullmatch(r"patient(\d+)", patient.name, re.IGNORECASE)
    if number:
        return next((part for part, numbers in PART_NUMBERS.items()
                     if int(number[1]) in numbers), None)
    return None


def load_acdc(root: Path, part: AcdcPart = DEFAULT_ACDC_PART) -> LoadResult:
    """The patient folders of one release part under `root` (or of both: "all"); NOR and
    HCM kept. The other part's subjects are counted as excluded; a root with no subject of
    the part asked for is a DatasetError naming the root, the part and the fix."""
    if part not in ACDC_PARTS:
        raise DatasetError(f"ACDC part {part!r}: unknown. Fix: --acdc-part "
                           f"{'|'.join(ACDC_PARTS)}")
    result = LoadResult()
    found: Counter = Counter()
    for cfg in sorted(root.rglob("Info.cfg")):
        where = acdc_part(cfg.parent, root)
        found[where] += 1
        if part != "all" and where != part:
            if where is None:
                result.skipped.append(DataError(
                    cfg.parent, "is in no ACDC part: neither under training/ or testing/ nor "
                    "numbered patient001-150", "move it under training/ or testing/, or use "
                    "--acdc-part all", subject=cfg.parent.name))
            else:
                result.excluded[f"ACDC part {where} (--acdc-part {part})"] += 1
            continue
        try:
            info = parse_info_cfg(cfg)
            record = _subject(cfg, info)
        except DataError as err:
            result.skipped.append(err.for_subject(cfg.parent.name))
            continue
        if record is None:
            result.excluded[f"group {info.get('Group', '?')}"] += 1
        else:
            result.subjects.append(record)
    if not (found[part] if part != "all" else sum(found.values())):
        raise DatasetError(_no_subjects(root, part, found))
    result.drop_duplicates(str(root))
    return result


def _no_subjects(root: Path, part: str, found: Counter) -> str:
    if not found:
        return (f"{root}: no ACDC patient folder (patientNNN/Info.cfg) under it. Fix: point "
                "--root at the ACDC release (the folder holding training/ and testing/)")
    seen = ", ".join(f"{n} of the {p or 'unknown'} part" for p, n in sorted(
        found.items(), key=lambda kv: str(kv[0])))
    others = " or ".join(p for p in ACDC_PARTS if p != part and (found[p] or p == "all"))
    return (f"{root}: no ACDC subject of the {part} part (found {seen}). Fix: point --root "
            f"at the release holding {part}/, or choose --acdc-part {others}")

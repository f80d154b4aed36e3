"""ACDC (MICCAI 2017): patientNNN/Info.cfg with 1-based ED/ES frame numbers naming the files."""

from __future__ import annotations

from pathlib import Path

from fedcmr.client.errors import DataError
from fedcmr.client.loaders.result import LoadResult
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
                         diagnosis=diagnosis, label_map=ACDC_LABELS, frames=frames)


def load_acdc(root: Path) -> LoadResult:
    """Every patient folder under `root` (training/ and testing/ alike); NOR and HCM kept."""
    result = LoadResult()
    for cfg in sorted(root.rglob("Info.cfg")):
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
    result.drop_duplicates(str(root))
    return result

"""Split a multi-centre dataset into one plain site folder per centre (manifest.csv + files),
as each hospital would hold its own data. Used for the compose demo and the per-site guide:
every hospital container mounts only its own folder."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from fedcmr.client.data.loaders.acdc import load_acdc
from fedcmr.client.data.loaders.mnms import load_mnms
from fedcmr.common.atomic import write_csv
from fedcmr.common.centres import slug
from fedcmr.common.frames import SubjectRecord


def _place(src: Path, folder: Path, subject: str) -> str:
    """Hard-link where possible (no extra disk), else copy; returns the manifest path."""
    dst = folder / subject / src.name
    dst.parent.mkdir(parents=True, exist_ok=True)
    if not dst.exists():
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)
    return f"{subject}/{src.name}"


def _row(record: SubjectRecord, folder: Path) -> dict[str, str]:
    ed, es = record.frames["ED"], record.frames["ES"]
    row = {"subject": record.subject, "label": record.diagnosis.name,
           "centre": record.centre, "vendor": record.vendor,
           "lv": str(record.label_map.lv), "myo": str(record.label_map.myo),
           "rv": str(record.label_map.rv)}
    s = record.subject
    if ed.time_index is not None:  # 4D cine
        row.update(image=_place(ed.image, folder, s), labels=_place(ed.labels, folder, s),
                   ed_index=str(ed.time_index), es_index=str(es.time_index))
    else:
        for phase, frame in (("ed", ed), ("es", es)):
            row[f"{phase}_image"] = _place(frame.image, folder, s)
            row[f"{phase}_labels"] = _place(frame.labels, folder, s)
    return row


def write_site_folders(root: Path, out: Path) -> dict[str, Path]:
    """root holds mnms/ and/or acdc/; returns centre -> its site folder under out."""
    records: list[SubjectRecord] = []
    if (root / "mnms").exists():
        records += load_mnms(root / "mnms", centres=["all"]).subjects
    if (root / "acdc").exists():
        records += load_acdc(root / "acdc").subjects
    by_centre: dict[str, list[SubjectRecord]] = {}
    for record in records:
        by_centre.setdefault(record.centre, []).append(record)
    folders = {}
    for centre, group in sorted(by_centre.items()):
        folder = out / slug(centre)
        rows = [_row(r, folder) for r in sorted(group, key=lambda r: r.subject)]
        write_csv(folder / "manifest.csv", dict.fromkeys(k for row in rows for k in row), rows)
        folders[centre] = folder
    return folders

"""Writing the cohort in the real M&Ms and ACDC on-disk layouts.

`write_subject` renders one subject and writes its NIfTI files (and, for ACDC, its Info.cfg)
under its dataset's folder layout; `synthesize` plans the whole cohort, clears a previous
synthetic cohort (never foreign data), writes the marker, every subject (optionally in a spawn
pool) and the M&Ms metadata CSV, and returns a `SynthSummary`. Text files are written
atomically through fedcmr.common.atomic.
"""

from __future__ import annotations

import csv
import json
import multiprocessing
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from pydantic import BaseModel
from tqdm import tqdm

from fedcmr.common.atomic import atomic_open, write_text
from fedcmr.common.labels import LabelMap
from fedcmr.lab.synthetic.plan import plan_cohort
from fedcmr.lab.synthetic.render import render_subject
from fedcmr.lab.synthetic.scanners import CENTRE_ORDER, SCANNERS, Dataset
from fedcmr.lab.synthetic.subject import SubjectPlan

#: The M&Ms metadata file name of the public release (the loader looks for it).
MNMS_CSV_NAME = "211230_M&Ms_Dataset_information_diagnosis_opendataset.csv"
MNMS_CSV_HEADER = (
    "External code", "VendorName", "Vendor", "Centre", "ED", "ES",
    "Age", "Pathology", "Sex", "Height", "Weight",
)  # fmt: skip
#: Written at the output root; only folders under a marked root are ever cleared.
MARKER_NAME = ".fedcmr-synthetic.json"


def _image(array: np.ndarray, plan: SubjectPlan) -> sitk.Image:
    """A SimpleITK image with the subject's geometry (3D or 4D with a unit time step)."""
    img = sitk.GetImageFromArray(array, isVector=False)
    d3 = np.asarray(plan.direction).reshape(3, 3)
    if array.ndim == 4:
        d4 = np.eye(4)
        d4[:3, :3] = d3
        img.SetSpacing((plan.spacing, plan.spacing, plan.dz, 1.0))
        img.SetOrigin((*plan.origin, 0.0))
        img.SetDirection(tuple(d4.ravel()))
    else:
        img.SetSpacing((plan.spacing, plan.spacing, plan.dz))
        img.SetOrigin(plan.origin)
        img.SetDirection(tuple(d3.ravel()))
    return img


def _write(array: np.ndarray, plan: SubjectPlan, path: Path) -> Path:
    sitk.WriteImage(_image(array, plan), str(path), True)
    return path


def _to_source(labels: np.ndarray, label_map: LabelMap) -> np.ndarray:
    lut = np.array([0, label_map.lv, label_map.myo, label_map.rv], np.uint8)
    return lut[labels]


def acdc_info(plan: SubjectPlan) -> str:
    """Info.cfg text exactly as the real ACDC files have it (1-based ED/ES)."""
    return (
        f"ED: {plan.ed + 1}\nES: {plan.es + 1}\nGroup: {plan.pathology}\n"
        f"Height: {plan.height:.1f}\nNbFrame: {plan.frames}\nWeight: {plan.weight:.1f}\n"
    )


def mnms_row(plan: SubjectPlan) -> list[str]:
    """The subject's row in the M&Ms metadata CSV (0-based ED/ES, centre as a number)."""
    sc = plan.scanner
    return [
        plan.name, sc.vendor, sc.vendor_letter, sc.centre_number, str(plan.ed), str(plan.es),
        str(plan.age), plan.pathology, plan.sex, f"{plan.height:.0f}", f"{plan.weight:.1f}",
    ]  # fmt: skip


def write_subject(plan: SubjectPlan, out: Path) -> list[Path]:
    """Render one subject and write its files in its dataset's real layout."""
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    rendered = render_subject(plan)
    folder = out / plan.folder
    folder.mkdir(parents=True, exist_ok=True)
    labels = _to_source(rendered.labels, plan.label_map)
    if plan.dataset == "mnms":
        return [
            _write(rendered.image, plan, folder / f"{plan.name}_sa.nii.gz"),
            _write(labels, plan, folder / f"{plan.name}_sa_gt.nii.gz"),
        ]
    paths = [folder / "Info.cfg"]
    write_text(paths[0], acdc_info(plan))
    for t in sorted({plan.ed, plan.es}):
        stem = f"{plan.name}_frame{t + 1:02d}"
        paths.append(_write(rendered.image[t], plan, folder / f"{stem}.nii.gz"))
        paths.append(_write(labels[t], plan, folder / f"{stem}_gt.nii.gz"))
    paths.append(_write(rendered.image, plan, folder / f"{plan.name}_4d.nii.gz"))
    return paths


class CentreSummary(BaseModel):
    """Subjects written for one centre."""

    centre: str
    dataset: Dataset
    vendor: str
    nor: int
    hcm: int
    other: int  # pathologies outside the study (loaders must skip them)


class SynthSummary(BaseModel):
    """What `synthesize` wrote."""

    out: Path
    centres: dict[str, CentreSummary]
    mnms_dir: Path
    mnms_csv: Path
    acdc_dir: Path
    files: list[Path]
    bytes_written: int
    seconds: float


def _summarise(plans: list[SubjectPlan]) -> dict[str, CentreSummary]:
    out: dict[str, CentreSummary] = {}
    for centre in CENTRE_ORDER:
        mine = [p.pathology for p in plans if p.centre == centre]
        sc = SCANNERS[centre]
        out[centre] = CentreSummary(
            centre=centre,
            dataset=sc.dataset,
            vendor=sc.vendor,
            nor=mine.count("NOR"),
            hcm=mine.count("HCM"),
            other=len(mine) - mine.count("NOR") - mine.count("HCM"),
        )
    return out


def _write_csv(plans: list[SubjectPlan], path: Path) -> Path:
    rows = sorted(mnms_row(p) for p in plans if p.dataset == "mnms")
    with atomic_open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(MNMS_CSV_HEADER)
        writer.writerows(rows)
    return path


def _prepare(out: Path) -> None:
    """Clear a previous synthetic cohort (so no stale subject survives); never foreign data."""
    used = [d for d in (out / "mnms", out / "acdc") if d.exists() and any(d.iterdir())]
    if used and not (out / MARKER_NAME).exists():
        raise FileExistsError(f"{used[0]} is not empty and was not written by fedcmr synth")
    for d in used:
        shutil.rmtree(d)
    (out / "mnms").mkdir(parents=True, exist_ok=True)
    (out / "acdc" / "training").mkdir(parents=True, exist_ok=True)


def synthesize(
    out: Path, seed: int = 0, scale: float = 1.0, workers: int = 1, progress: bool = True
) -> SynthSummary:
    """Write the synthetic cohort under `out` (mnms/ and acdc/ in the real layouts)."""
    start = time.perf_counter()
    out = Path(out)
    plans = plan_cohort(seed, scale)
    _prepare(out)
    marker = out / MARKER_NAME
    write_text(marker, json.dumps({"generator": __package__, "seed": seed, "scale": scale}) + "\n")
    bar = tqdm(total=len(plans), desc="synth", unit="subject", disable=not progress)
    files: list[Path] = []
    if workers > 1:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
            for paths in pool.map(write_subject, plans, [out] * len(plans)):
                files.extend(paths)
                bar.update()
    else:
        for plan in plans:
            files.extend(write_subject(plan, out))
            bar.update()
    bar.close()
    csv_path = _write_csv(plans, out / "mnms" / MNMS_CSV_NAME)
    files = sorted([*files, csv_path, marker])
    return SynthSummary(
        out=out,
        centres=_summarise(plans),
        mnms_dir=out / "mnms",
        mnms_csv=csv_path,
        acdc_dir=out / "acdc",
        files=files,
        bytes_written=sum(p.stat().st_size for p in files),
        seconds=round(time.perf_counter() - start, 2),
    )

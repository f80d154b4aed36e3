"""`fedcmr study`: every cell of the grid, each claimed, run and recorded once, however many
processes work on the study folder and however often they are stopped.

A process takes the next cell that is neither done (result.json) nor claimed by a live
process, runs it, and moves on; when none is left it waits for the cells others are
running (taking over any whose claimant dies), then writes results.csv and the report.
A cell found half-written (its claimant died) is redone from scratch.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fedcmr.common.atomic import write_csv, write_json
from fedcmr.common.metrics import auc_text
from fedcmr.lab.study import layout
from fedcmr.lab.study.cells import CellSpec, data_digest, expand
from fedcmr.lab.study.claims import is_claimed, try_claim
from fedcmr.lab.study.config import StudyConfig
from fedcmr.lab.study.run_cell import StudyData, run_cell

log = logging.getLogger("fedcmr.study")
#: Seconds between checks while other processes run the last cells.
WAIT_POLL = 2.0


def study_data(config: StudyConfig, out: Path, caches: Sequence[Path] | None,
               progress: bool = True) -> StudyData:
    """The study's caches (given, the config's, or a synthetic cohort in DIR/cohort), its
    sites and the digest of what they hold."""
    from fedcmr.common.cache_format import read_manifest
    from fedcmr.lab.sites import sites_from_caches
    from fedcmr.lab.study.cohort import synthetic_caches

    chosen = list(caches or config.caches)
    if not chosen:
        chosen = synthetic_caches(out / "cohort", config.synthetic.scale, config.synthetic.seed,
                                  progress=progress)
    for cache in chosen:
        if not (Path(cache) / "manifest.csv").exists():
            raise FileNotFoundError(f"{cache}: not a prepared cache (no manifest.csv). Fix: "
                                    "run fedcmr prepare into it, or correct the path")
    sites = {s.name: tuple(s.centres) or tuple(sorted({e.centre for c in s.caches
                                                       for e in read_manifest(c)}))
             for s in sites_from_caches(chosen, per=config.site_per)}
    policy = resolve_policy(config.site_policy) if config.site_policy else None
    return StudyData(caches=tuple(Path(c).resolve() for c in chosen),
                     site_per=config.site_per, sites=sites, digest=data_digest(chosen),
                     runtime=config.runtime, site_policy=policy, bootstrap=config.bootstrap)


def resolve_policy(text: str) -> Path:
    """A policy file as given, else relative to the fedcmr source folder (the shipped
    deploy/synthetic-site-policy.toml)."""
    from fedcmr.common.app_bundle import app_dir

    path = Path(text)
    if path.exists():
        return path.resolve()
    shipped = app_dir() / text
    if shipped.exists():
        return shipped
    raise FileNotFoundError(f"site_policy {text}: no such file. Fix: correct the study "
                            "config's site_policy")


@dataclass
class Study:
    config: StudyConfig
    out: Path
    data: StudyData
    cells: list[CellSpec]
    #: The cells that failed in this process (key -> reason): not tried again here.
    failed: dict[str, str] = field(default_factory=dict)

    @classmethod
    def open(cls, config: StudyConfig, out: Path, data: StudyData,
             only: dict[str, set[str]] | None = None) -> Study:
        everything = expand(config, data.sites, data.digest)
        cells = [c for c in everything if c.matches(only or {})]
        if not cells:
            raise ValueError("no cell of the study matches --only "
                             + " ".join(f"{k}={','.join(sorted(v))}"
                                        for k, v in (only or {}).items()))
        write_json(out / layout.STUDY_JSON, {
            "name": config.name, "description": config.description,
            "config": config.model_dump(mode="json"), "profile": config.profile,
            "runtime": config.runtime, "caches": [str(c) for c in data.caches],
            "data": data.digest, "site_per": data.site_per,
            "sites": [{"name": n, "centres": list(c)} for n, c in data.sites.items()],
            "centres": sorted({c for cs in data.sites.values() for c in cs}),
            "cells": [c.key for c in everything]})
        for cell in everything:
            path = layout.cell_dir(out, cell.key) / layout.CELL_JSON
            if not path.exists():
                write_json(path, {**cell.model_dump(mode="json"), "key": cell.key,
                                  "strategy": cell.strategy})
        return cls(config, out, data, cells)

    # -- state -------------------------------------------------------------------------
    def done(self, cell: CellSpec) -> bool:
        """result.json is written last and atomically, in the folder named by the key."""
        return (layout.cell_dir(self.out, cell.key) / layout.RESULT_JSON).exists()

    def report_progress(self) -> None:
        """Cells done, running, left, and the time left: each unfinished cell at the mean
        time of finished cells of its kind (CDS or FL), shared by the processes running."""
        times: dict[bool, list[float]] = {True: [], False: []}
        left: list[CellSpec] = []
        running = 0
        for cell in self.cells:
            path = layout.cell_dir(self.out, cell.key) / layout.RESULT_JSON
            if path.exists():
                times[cell.federated].append(json.loads(path.read_text())["wall_s"])
            else:
                left.append(cell)
                running += is_claimed(path.parent)
        every = times[True] + times[False]
        eta = None
        if every:
            mean = {k: sum(v) / len(v) if v else sum(every) / len(every)
                    for k, v in times.items()}
            eta = sum(mean[c.federated] for c in left) / max(1, running)
        remaining = "unknown until a cell finishes" if eta is None else _duration(eta)
        log.info("cells: %d done, %d running, %d left of %d; about %s left", len(every),
                 running, len(left) - running, len(self.cells), remaining)

    # -- work --------------------------------------------------------------------------
    def work(self) -> None:
        """Run cells until every one is done, failed here, or running elsewhere; then wait
        for those running elsewhere (taking over any whose claimant dies)."""
        self.report_progress()
        while True:
            pending = [c for c in self.cells if not self.done(c) and c.key not in self.failed]
            if not pending:
                return
            ran = False
            for cell in pending:
                claim = try_claim(layout.cell_dir(self.out, cell.key))
                if claim is None:
                    continue
                with claim:
                    if not self.done(cell):  # another process may have finished it
                        self._run(cell)
                        ran = True
                break
            if not ran:
                time.sleep(WAIT_POLL)  # the rest run elsewhere

    def _run(self, cell: CellSpec) -> None:
        log.info("cell %s: running (%s)", cell.key, "federated, " + self.data.runtime
                 if cell.federated else "centralised")
        outcome = run_claimed(cell, self.data, self.out)
        self.note(cell, outcome)

    def note(self, cell: CellSpec, outcome: dict) -> None:
        """Log a cell's outcome (run_claimed's); a failed cell is not tried again here."""
        folder = layout.cell_dir(self.out, cell.key)
        if outcome["status"] == "failed":
            self.failed[cell.key] = outcome["error"]
            log.error("cell %s failed: %s (log: %s); the study goes on, and a rerun "
                      "retries it", cell.key, outcome["error"], folder / "cell.log")
            return
        total = outcome["result"]["rows"][0]
        log.info("cell %s: done in %.0f s, total AUC %s", cell.key, outcome["result"]["wall_s"],
                 auc_text(total["auc"]))
        self.report_progress()

    # -- results -----------------------------------------------------------------------
    def gather(self) -> Path:
        """results.csv from every finished cell of the study folder's grid."""
        everything = json.loads((self.out / layout.STUDY_JSON).read_text())["cells"]
        rows = []
        for key in everything:
            path = layout.cell_dir(self.out, key) / layout.RESULT_JSON
            if path.exists():
                rows.extend(json.loads(path.read_text())["rows"])
        target = self.out / layout.RESULTS_CSV
        write_csv(target, layout.RESULT_COLUMNS, rows)
        return target


def run_claimed(cell: CellSpec, data: StudyData, out: Path, **where) -> dict:
    """Run a cell this process has claimed: the attempt recorded first (pid, time and
    `where`, e.g. the Ray node), failed.json left on failure. Returns {"status": "done",
    "result": result.json's content} or {"status": "failed", "error": why}."""
    folder = layout.cell_dir(out, cell.key)
    with (folder / "attempts.jsonl").open("a", encoding="utf-8") as handle:
        handle.write(json.dumps({"pid": os.getpid(), "at": time.time(), **where}) + "\n")
    try:
        result = run_cell(cell, data, folder)
    except Exception as err:  # one failed cell must not stop the study
        write_json(folder / "failed.json", {"key": cell.key, "error": str(err)})
        return {"status": "failed", "error": str(err)}
    (folder / "failed.json").unlink(missing_ok=True)
    return {"status": "done", "result": result}


def start_workers(n: int, argv: Sequence[str], threads: int) -> list[subprocess.Popen]:
    """N more processes of the same study (`--worker`): each claims cells like this one,
    and each dies with this process (PR_SET_PDEATHSIG), SIGKILL included. On a machine with
    several GPUs, worker i uses GPU i modulo their number (this process GPU 0)."""
    import torch

    gpus = torch.cuda.device_count()
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "FEDCMR_STUDY_THREADS": str(threads)}
    code = "from fedcmr.cli import main; import sys; sys.exit(main(sys.argv[1:]))"
    return [subprocess.Popen([sys.executable, "-c", code, *argv, "--worker"],
                             env={**env, "CUDA_VISIBLE_DEVICES": str(i % gpus)} if gpus > 1
                             else env, preexec_fn=_die_with_parent) for i in range(1, n + 1)]


def _die_with_parent() -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _duration(seconds: float) -> str:
    minutes = seconds / 60
    return f"{seconds:.0f} s" if minutes < 2 else f"{minutes:.0f} min"

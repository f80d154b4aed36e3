"""The files of a study folder DIR, the one place that names them (writer and report).

DIR/study.json                  the resolved study config and its sites
DIR/cells/<key>/cell.json       one cell's settings (CellSpec)
DIR/cells/<key>/claim.json      who runs it now (pid, host, started, heartbeat)
DIR/cells/<key>/run/            the run folder (centralised or federated outputs)
DIR/cells/<key>/result.json     written last: the cell is done (rows, wall time)
DIR/results.csv                 one row per cell and test centre, plus "total"
DIR/report.md, DIR/report.html  the report; DIR/figures/*.png its figures
"""

from __future__ import annotations

from pathlib import Path

STUDY_JSON = "study.json"
CELLS = "cells"
CELL_JSON = "cell.json"
CLAIM_JSON = "claim.json"
RUN_DIR = "run"
RESULT_JSON = "result.json"
RESULTS_CSV = "results.csv"
REPORT_MD = "report.md"
REPORT_HTML = "report.html"
FIGURES = "figures"

#: results.csv, in this order. `centre` is a test centre's name or "total".
RESULT_COLUMNS = (
    "key", "model", "framework", "strategy", "vote_alpha", "prior", "augment", "protocol", "folds",
    "seed", "phases", "profile", "sites", "centre", "auc", "ci_low", "ci_high", "n_frames",
    "n_subjects", "n_hcm", "n_nor", "wall_s")


def cell_dir(study: Path, key: str) -> Path:
    return study / CELLS / key

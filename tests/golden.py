"""Predictions pinned: a run's predictions.csv compared with the copy an earlier version of
fedcmr wrote for the same test (tests/golden/NAME.csv): frames and labels exactly, scores
to float rounding (1e-12).

The copies were written by the code before the models became plug-ins (#26), by running
the tests that call `check` with FEDCMR_WRITE_GOLDEN=1; a refactor that changes any score,
frame or label fails them. A deliberate change of the learning rewrites them the same way
(say so in the commit)."""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

GOLDEN = Path(__file__).parent / "golden"
WRITE = os.environ.get("FEDCMR_WRITE_GOLDEN") == "1"
#: How far a score may move: float rounding only (a real change moves scores by far more).
SCORE_TOLERANCE = 1e-12


def _rows(path: Path) -> list[dict[str, str]]:
    with Path(path).open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    return sorted(rows, key=lambda r: tuple(r.get(k, "") for k in (
        "fold", "centre", "subject", "phase")))


def check(name: str, predictions: Path) -> None:
    """`predictions` (a predictions.csv) holds exactly the frames, labels and scores (as
    written, every digit) of tests/golden/NAME.csv."""
    golden = GOLDEN / f"{name}.csv"
    if WRITE:
        GOLDEN.mkdir(exist_ok=True)
        shutil.copyfile(predictions, golden)
        return
    assert golden.is_file(), f"{golden} missing: run the test with FEDCMR_WRITE_GOLDEN=1"
    want, have = _rows(golden), _rows(predictions)
    assert [r.keys() for r in have[:1]] == [r.keys() for r in want[:1]], name
    assert len(have) == len(want), (name, len(have), len(want))
    for a, b in zip(have, want, strict=True):
        same = {k: v for k, v in a.items() if k != "score"}
        assert same == {k: v for k, v in b.items() if k != "score"}, (name, a, b)
        # every digit float32 scores have; float64 scores (the measures model) to 1e-12:
        # the same code gave 0.1276527350021613 and ...6112 in two runs (one ulp: the
        # order of a BLAS sum on the simulation runtime's workers)
        assert abs(float(a["score"]) - float(b["score"])) <= SCORE_TOLERANCE, (name, a, b)

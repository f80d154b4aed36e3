"""The demo's table (lab/demo_table.py): the AUC is sklearn's, the interval agrees with a
plain bootstrap over subjects written here, and a class of one subject gets no interval."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from fedcmr.lab.demo_table import auc_with_interval, interval_table


def predictions(rng: np.random.Generator, centre: str, n_hcm: int, n_nor: int) -> list[dict]:
    """Two frames (ED, ES) per subject, HCM scored higher on average."""
    rows = []
    for i in range(n_hcm + n_nor):
        label = int(i < n_hcm)
        for phase in ("ED", "ES"):
            rows.append({"subject": f"{centre}-{i}", "centre": centre, "phase": phase,
                         "fold": 0, "label": label,
                         "score": float(rng.normal(0.6 if label else 0.4, 0.2))})
    return rows


def naive_interval(rows: list[dict], draws: int, rng: np.random.Generator) -> tuple[float, float]:
    by_class = {c: sorted({r["subject"] for r in rows if r["label"] == c}) for c in (0, 1)}
    frames = {}
    for r in rows:
        frames.setdefault(r["subject"], []).append(r)
    aucs = []
    for _ in range(draws):
        drawn = [s for c in (0, 1) for s in rng.choice(by_class[c], len(by_class[c]))]
        sample = [r for s in drawn for r in frames[s]]
        aucs.append(roc_auc_score([r["label"] for r in sample], [r["score"] for r in sample]))
    low, high = np.quantile(aucs, [0.025, 0.975])
    return float(low), float(high)


def test_the_auc_is_sklearns_and_the_interval_a_bootstrap_over_subjects():
    rows = predictions(np.random.default_rng(0), "A", 12, 10)
    auc, low, high = auc_with_interval(rows)
    assert auc == pytest.approx(roc_auc_score([r["label"] for r in rows],
                                              [r["score"] for r in rows]), abs=1e-12)
    want_low, want_high = naive_interval(rows, 4000, np.random.default_rng(1))
    assert low == pytest.approx(want_low, abs=0.05) and high == pytest.approx(want_high, abs=0.05)
    assert low < auc < high


def test_one_subject_in_a_class_gets_no_interval_and_one_class_no_auc(tmp_path):
    rng = np.random.default_rng(2)
    rows = predictions(rng, "Big", 6, 6) + predictions(rng, "Tiny", 1, 2)
    rows += [{**r, "centre": "OneClass", "subject": f"x{r['subject']}"}
             for r in predictions(rng, "OneClass", 2, 0)]
    assert auc_with_interval([r for r in rows if r["centre"] == "Tiny"])[1:] == (None, None)
    assert auc_with_interval([r for r in rows if r["centre"] == "OneClass"]) is None
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        with (tmp_path / name / "predictions.csv").open("w", newline="") as handle:
            writer = csv.DictWriter(handle, ["subject", "centre", "phase", "fold", "label",
                                             "score"])
            writer.writeheader()
            writer.writerows(rows)
    table = interval_table({"a": tmp_path / "a", "b": tmp_path / "b"}, n_boot=200).splitlines()
    assert table[0].split()[:6] == ["centre", "frames", "HCM", "NOR", "a", "b"]
    lines = {line.split("  ")[0]: line for line in table[1:5]}
    assert "n/a (one class)" in lines["OneClass"] and lines["Tiny"].count("(n/a)") == 2
    assert lines["total"].split()[1:4] == [str(len(rows)), "18", str(len(rows) - 18)]

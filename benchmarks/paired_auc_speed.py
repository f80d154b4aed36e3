"""How long the study report's paired bootstrap takes (lab/study/stats.py
`paired_auc_test`: 2,000 subject-level resamples of 400 frames), here and now.

    python benchmarks/paired_auc_speed.py

Prints the figure and writes benchmarks/results/paired_auc_speed.json (the median of 5
runs; the report runs one test per pair of set-ups it compares).
"""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

import numpy as np

from fedcmr.common.atomic import write_json
from fedcmr.lab.study.stats import paired_auc_test

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    rng = np.random.default_rng(12)
    subjects = np.repeat(np.arange(200), 2)
    labels = (subjects % 2).astype(float)
    scores = rng.normal(labels, 1.0)
    times = []
    for _ in range(5):
        start = time.perf_counter()
        paired_auc_test(labels, scores, scores[::-1].copy(), subjects)
        times.append(time.perf_counter() - start)
    result = {"frames": int(len(labels)), "subjects": 200, "resamples": 2000,
              "median_s": round(statistics.median(times), 4), "runs": len(times),
              "cpus": os.cpu_count()}
    print(json.dumps(result))
    write_json(ROOT / "benchmarks" / "results" / "paired_auc_speed.json", result)


if __name__ == "__main__":
    main()

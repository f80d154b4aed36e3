"""What a study grid costs at the paper's size: frames trained and scored per cell from the
real splits of Table 1's cohort, times the measured cost per frame.

    python benchmarks/study_cost.py [--config studies/paper.toml] [--epochs 30]
        [--train-step benchmarks/results/train_step.json] [--mfu 0.25,0.4]
        [--overheads benchmarks/results/round_overhead_study.json] [--runtime in-process]
        [--round-overhead S] [--run-overhead S] [--gpus 1,2,4,8]

Per-frame seconds come from benchmarks/train_step_benchmark.py's measurement at the paper's
input (3 x 10 x 150 x 150) on this machine. A GPU's time is estimated from the step's FLOPs
(about 293 GFLOP per training frame, a third of that per scored frame) at a model FLOP
utilisation (MFU) band of an H200's 790 dense bf16 TFLOP/s, since no GPU could be had when
this was written. Each federated exchange and each FL cell add the runtime's overhead beyond
compute as benchmarks/round_overhead.py measured it (`--overheads`; in-process: its
`in_process_fit`, a fixed cost per cell and a cost per round fitted from two runs, charged
per exchange, so a little high for the 3 exchanges per fold that are not rounds; another
`--runtime`: its train exchange's `beyond_compute` and its `outside_exchanges_s`), unless
given with --round-overhead / --run-overhead. Cells are independent, so N GPUs (one cell
each, `fedcmr study --ray`) take the total over N. Prints the figures and writes
benchmarks/results/study_cost_<study name>.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fedcmr.common.atomic import write_json
from fedcmr.common.centres import TABLE1_COUNTS
from fedcmr.common.learning.split import centre_split
from fedcmr.lab.study.cells import expand
from fedcmr.lab.study.config import StudyConfig

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "study_cost.json"  # named per study
TRAIN_GFLOP = 293.0  # forward + backward of one 3 x 10 x 150 x 150 frame (fvcore count)
SCORE_GFLOP = TRAIN_GFLOP / 3
H200_TFLOPS = 790.0


def split_sizes(cell) -> dict[str, int]:
    """Frames per split of one fold, from Table 1's subject counts and the real splits."""
    config = cell.run_config()
    n = {"train": 0, "val": 0, "test": 0}
    for centre in cell.centres:
        nor, hcm = TABLE1_COUNTS[centre]
        labels = {f"{centre}-{i}": int(i >= nor) for i in range(nor + hcm)}
        for fold in cell.folds:
            for part in centre_split(labels, centre, config, fold).values():
                n[part] += len(cell.phases)
    return n


def cell_cost(cell, epochs: int) -> dict[str, float]:
    """Frames trained and scored: every epoch (round) trains on the training frames and
    scores the validation frames (FL: each site validates the model it received); the best
    model scores the test frames once."""
    n = split_sizes(cell)
    return {"train_frames": epochs * n["train"],
            "score_frames": epochs * n["val"] + n["test"],
            # each fold: its rounds, the histogram round, the final validation and the test
            "exchanges": (epochs + 3) * len(cell.folds) if cell.federated else 0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "studies" / "paper.toml")
    parser.add_argument("--epochs", type=int, default=30,
                        help="mean epochs (rounds) per fold: the paper stopped at 20-30")
    parser.add_argument("--train-step", type=Path,
                        default=ROOT / "benchmarks" / "results" / "train_step.json")
    parser.add_argument("--mfu", default="0.25,0.4", help="GPU model FLOP utilisation band")
    parser.add_argument("--overheads", type=Path,
                        default=ROOT / "benchmarks" / "results" / "round_overhead_study.json")
    parser.add_argument("--runtime", default="in-process",
                        help="the --overheads mode to read (in-process, simulation, fork)")
    parser.add_argument("--round-overhead", type=float, default=None,
                        help="seconds per federated exchange beyond compute (default: read "
                             "from --overheads)")
    parser.add_argument("--run-overhead", type=float, default=None,
                        help="seconds per federated cell outside its exchanges (default: "
                             "read from --overheads)")
    parser.add_argument("--gpus", default="1,2,4,8", help="GPU counts to give the time for")
    args = parser.parse_args()
    overheads = json.loads(args.overheads.read_text())
    measured_overheads = overheads["modes"][args.runtime]
    fitted = overheads.get("in_process_fit") if args.runtime == "in-process" else None
    if args.round_overhead is None:
        args.round_overhead = fitted["per_round_s"] if fitted else \
            measured_overheads["exchanges"]["train"]["mean_s"]["beyond_compute"]
    if args.run_overhead is None:
        args.run_overhead = fitted["fixed_per_run_s"] if fitted else \
            measured_overheads["outside_exchanges_s"]
    config = StudyConfig.load(args.config)
    centres = sorted(TABLE1_COUNTS)
    cells = expand(config, {c: (c,) for c in centres}, "cost")
    totals = {"train_frames": 0.0, "score_frames": 0.0, "exchanges": 0.0}
    for cell in cells:
        for k, v in cell_cost(cell, args.epochs).items():
            totals[k] += v
    measured = json.loads(args.train_step.read_text())
    paper = next(r for r in measured["rows"] if r["profile"] == "paper")
    cpu_s = (totals["train_frames"] * paper["train_s_per_sample"]
             + totals["score_frames"] * paper["score_s_per_sample"])
    flops = (totals["train_frames"] * TRAIN_GFLOP + totals["score_frames"] * SCORE_GFLOP) * 1e9
    fl_cells = sum(c.federated for c in cells)
    overhead_s = totals["exchanges"] * args.round_overhead + fl_cells * args.run_overhead
    gpu = {}
    for mfu in (float(m) for m in args.mfu.split(",")):
        compute = flops / (H200_TFLOPS * 1e12 * mfu)
        total = compute + overhead_s
        gpu[f"mfu_{mfu:g}"] = {"compute_h": round(compute / 3600, 2),
                               "with_overhead_h": round(total / 3600, 2),
                               "on_n_gpus_h": {n: round(total / n / 3600, 2) for n in
                                               (int(g) for g in args.gpus.split(","))}}
    result = {"config": str(args.config), "cells": len(cells),
              "federated_cells": fl_cells, "epochs_per_fold": args.epochs,
              **{k: int(v) for k, v in totals.items()}, "pflop": round(flops / 1e15, 1),
              "cpu": {"machine": f"{measured['cpus']} cores, torch {measured['torch']}",
                      "train_s_per_frame": paper["train_s_per_sample"],
                      "score_s_per_frame": paper["score_s_per_sample"],
                      "compute_days": round(cpu_s / 86400, 1)},
              "runtime": args.runtime, "overheads_from": str(args.overheads),
              "round_overhead_s": args.round_overhead, "run_overhead_s": args.run_overhead,
              "overhead_h": round(overhead_s / 3600, 2), "h200": gpu}
    print(json.dumps(result, indent=2))
    target = RESULTS.with_name(f"study_cost_{config.name}.json")
    write_json(target, result)
    print(f"written to {target}")


if __name__ == "__main__":
    main()

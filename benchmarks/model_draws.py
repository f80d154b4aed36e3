"""#14's comparison over synthetic cohort draws: the CNN (CDS, CCV, quick profile, network
seeds), the measures model (CDS and FL), and each clinical measure alone, side by side.

Reads finished runs; runs nothing. The layout it expects (what #14's runs wrote):

  DRAWS/cnn/d{draw}_s{seed}/metrics.json           fedcmr centralized --seed S
  DRAWS/pretrain/d{draw}_s{seed}/metrics.json      python -m fedcmr.lab.measures_pretraining
  DRAWS/measures_d{draw}/results.csv               fedcmr study --config studies/measures.toml
  --cohort ROOT (one per draw, in draw order)      ROOT/cache/<centre>/ (measures.csv)

Every AUC is frame-level over the pooled CCV test predictions (each subject is tested once,
so every subject of the cohort counts). The pretraining is judged by the paired difference
(pretrained minus plain, same draw and network seed): the rule, fixed before the last runs,
keeps it only if the mean over the pairs is above zero by more than two standard errors.
A measure alone scores each frame with its subject's value (larger = HCM). Prints a markdown
table; writes benchmarks/results/model_draws.json.

  python benchmarks/model_draws.py --draws runs/draws \
      --cohort runs/small/cohort runs/draws/draw1 runs/draws/draw2
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from statistics import mean, stdev

import numpy as np

from fedcmr.common.atomic import write_json
from fedcmr.common.cache_format import read_manifest
from fedcmr.common.measures import FEATURES, read_all_measures
from fedcmr.common.metrics import auc

RESULTS = Path(__file__).parent / "results" / "model_draws.json"


def total_auc(path: Path) -> float | None:
    if not path.exists():
        return None
    return json.loads(path.read_text())["auc"]["total"]


def study_auc(path: Path, framework: str) -> float | None:
    if not path.exists():
        return None
    with path.open() as handle:
        for row in csv.DictReader(handle):
            if row["framework"] == framework and row["centre"] == "total" and row["auc"]:
                return float(row["auc"])
    return None


def measure_aucs(root: Path) -> dict[str, float]:
    caches = sorted(p for p in (root / "cache").iterdir() if (p / "manifest.csv").exists())
    measures = read_all_measures(caches)
    frames = [e for c in caches for e in read_manifest(c)]
    labels = np.array([e.label for e in frames])
    return {name: float(auc(labels, np.array([getattr(measures[e.subject], name)
                                              for e in frames]))) for name in FEATURES}


def summarise(draws: Path, cohorts: list[Path], seeds: list[int]) -> dict:
    out: dict = {"draws": []}
    for d, root in enumerate(cohorts):
        singles = measure_aucs(root)
        best = max(singles, key=singles.get)
        out["draws"].append({
            "draw": d, "cohort": str(root),
            "cnn": {s: total_auc(draws / "cnn" / f"d{d}_s{s}" / "metrics.json") for s in seeds},
            "cnn_measures_pretrained": {s: total_auc(draws / "pretrain" / f"d{d}_s{s}" /
                                                     "metrics.json") for s in seeds},
            "measures_cds": study_auc(draws / f"measures_d{d}" / "results.csv", "cds"),
            "measures_fl": study_auc(draws / f"measures_d{d}" / "results.csv", "fedavg"),
            "max_wall_ed_mm": singles["max_wall_ed_mm"],
            "best_measure": best, "best_measure_auc": singles[best], "single_measures": singles})

    def spread(values: list[float | None]) -> dict | None:
        got = [v for v in values if v is not None]
        if not got:
            return None
        return {"mean": mean(got), "sd": stdev(got) if len(got) > 1 else 0.0, "n": len(got)}

    rows = out["draws"]
    pairs = [r["cnn_measures_pretrained"][s] - r["cnn"][s] for r in rows for s in seeds
             if r["cnn_measures_pretrained"].get(s) is not None and r["cnn"].get(s) is not None]
    out["mean"] = {
        "cnn": spread([v for r in rows for v in r["cnn"].values()]),
        "cnn_measures_pretrained": spread([v for r in rows
                                           for v in r["cnn_measures_pretrained"].values()]),
        "cnn_seed0": spread([r["cnn"].get(0) for r in rows]),
        "measures_cds": spread([r["measures_cds"] for r in rows]),
        "measures_fl": spread([r["measures_fl"] for r in rows]),
        "max_wall_ed_mm": spread([r["max_wall_ed_mm"] for r in rows]),
        "best_measure": spread([r["best_measure_auc"] for r in rows]),
        "pretraining_gain": spread(pairs),
    }
    gain = out["mean"]["pretraining_gain"]
    out["pretraining_kept"] = bool(gain and gain["n"] > 1 and
                                   gain["mean"] > 2 * gain["sd"] / gain["n"] ** 0.5)
    return out


def fmt(value) -> str:
    return "" if value is None else f"{value:.3f}"


def table(summary: dict, seeds: list[int]) -> str:
    head = (["draw"] + [f"CNN seed {s}" for s in seeds]
            + [f"CNN + measures pretraining, seed {s}" for s in seeds]
            + ["measures CDS", "measures FL", "max ED wall", "best measure"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in summary["draws"]:
        cells = ([str(r["draw"])] + [fmt(r["cnn"].get(s)) for s in seeds]
                 + [fmt(r["cnn_measures_pretrained"].get(s)) for s in seeds]
                 + [fmt(r["measures_cds"]), fmt(r["measures_fl"]), fmt(r["max_wall_ed_mm"]),
                    f"{r['best_measure']} {fmt(r['best_measure_auc'])}"])
        lines.append("| " + " | ".join(cells) + " |")
    m = summary["mean"]

    def ms(key: str) -> str:
        v = m.get(key)
        return "" if v is None else f"{v['mean']:.3f} ± {v['sd']:.3f} (n={v['n']})"
    gap = [""] * (len(seeds) - 1)
    lines.append("| mean ± SD | " + " | ".join(
        [f"CNN, all seeds: {ms('cnn')}", *gap, f"pretrained, all seeds: "
         f"{ms('cnn_measures_pretrained')}", *gap, ms("measures_cds"), ms("measures_fl"),
         ms("max_wall_ed_mm"), ms("best_measure")]) + " |")
    lines.append(f"\npretraining gain per (draw, seed) pair: {ms('pretraining_gain')}; "
                 f"kept by the rule: {'yes' if summary['pretraining_kept'] else 'no'}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--draws", type=Path, default=Path("runs/draws"))
    parser.add_argument("--cohort", type=Path, nargs="+", required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    args = parser.parse_args()
    summary = summarise(args.draws, args.cohort, args.seeds)
    print(table(summary, args.seeds))
    write_json(RESULTS, summary)
    print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()

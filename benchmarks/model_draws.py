"""#14's comparison over synthetic cohort draws: the CNN (CDS, CCV, quick profile, network
seeds), the measures model (CDS and FL), and each clinical measure alone, side by side.

Reads finished runs; runs nothing. The layout it expects (what #14's runs wrote):

  DRAWS/cnn/d{draw}_s{seed}/metrics.json           fedcmr centralized --seed S
  DIR/d{draw}_s{seed}/metrics.json                 each CNN variant (--variant NAME=DIR);
                                                   default measures_pretrained=DRAWS/pretrain
                                                   (python -m fedcmr.lab.measures_pretraining)
  DRAWS/measures_d{draw}/results.csv               fedcmr study --config studies/measures.toml
  --cohort ROOT (one per draw, in draw order)      ROOT/cache/<centre>/ (measures.csv)

Every AUC is frame-level over the pooled CCV test predictions (each subject is tested once,
so every subject of the cohort counts). Each CNN variant is judged by the paired difference
(variant minus plain, same draw and network seed): the rule, fixed before the runs it judges,
keeps it only if the mean over the pairs is above zero by more than two standard errors.
A measure alone scores each frame with its subject's value (larger = HCM). Prints a markdown
table; writes benchmarks/results/model_draws.json.

--reuse PREVIOUS.json takes each figure whose run is not on disk (a finished run's folder
deleted, a machine lost) from an earlier results file, and lists what it took in the output
(`reused`), so a new variant is judged against the same plain runs without re-running them.

  python benchmarks/model_draws.py --draws runs/draws \
      --cohort runs/small/cohort runs/draws/draw1 runs/draws/draw2 \
      --variant measures_pretrained=runs/draws/pretrain --variant whole_ventricle=runs/slab/cnn

(The committed results came from the whole-ventricle cohorts, runs/slab/d0 d1 d2, with
--reuse of the earlier file for the plain, pretrained and measures-model runs.)
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


def fill_from(row: dict, previous: dict) -> list[str]:
    """Fill the run figures `row` lacks from the same draw's `previous` row; what was taken."""
    taken = []
    for key, value in row.items():
        if not (key == "cnn" or key.startswith("cnn_") or key.startswith("measures_")):
            continue
        if isinstance(value, dict):
            for seed, got in value.items():
                old = previous.get(key, {}).get(str(seed))
                if got is None and old is not None:
                    value[seed] = old
                    taken.append(f"{key} seed {seed}")
        elif value is None and previous.get(key) is not None:
            row[key] = previous[key]
            taken.append(key)
    return taken


def summarise(draws: Path, cohorts: list[Path], seeds: list[int],
              variants: dict[str, Path], reuse: Path | None = None) -> dict:
    out: dict = {"draws": [], "variants": {k: str(v) for k, v in variants.items()}}
    before = {r["draw"]: r for r in json.loads(reuse.read_text())["draws"]} if reuse else {}
    for d, root in enumerate(cohorts):
        singles = measure_aucs(root)
        best = max(singles, key=singles.get)
        out["draws"].append({
            "draw": d, "cohort": str(root),
            "cnn": {s: total_auc(draws / "cnn" / f"d{d}_s{s}" / "metrics.json") for s in seeds},
            **{f"cnn_{k}": {s: total_auc(v / f"d{d}_s{s}" / "metrics.json") for s in seeds}
               for k, v in variants.items()},
            "measures_cds": study_auc(draws / f"measures_d{d}" / "results.csv", "cds"),
            "measures_fl": study_auc(draws / f"measures_d{d}" / "results.csv", "fedavg"),
            "max_wall_ed_mm": singles["max_wall_ed_mm"],
            "best_measure": best, "best_measure_auc": singles[best], "single_measures": singles})
        if d in before:
            out["draws"][-1]["reused"] = fill_from(out["draws"][-1], before[d])
    if reuse:
        out["reused_from"] = str(reuse)

    def spread(values: list[float | None]) -> dict | None:
        got = [v for v in values if v is not None]
        if not got:
            return None
        return {"mean": mean(got), "sd": stdev(got) if len(got) > 1 else 0.0, "n": len(got)}

    rows = out["draws"]
    out["mean"] = {
        "cnn": spread([v for r in rows for v in r["cnn"].values()]),
        **{f"cnn_{k}": spread([v for r in rows for v in r[f"cnn_{k}"].values()])
           for k in variants},
        "cnn_seed0": spread([r["cnn"].get(0) for r in rows]),
        "measures_cds": spread([r["measures_cds"] for r in rows]),
        "measures_fl": spread([r["measures_fl"] for r in rows]),
        "max_wall_ed_mm": spread([r["max_wall_ed_mm"] for r in rows]),
        "best_measure": spread([r["best_measure_auc"] for r in rows]),
    }
    out["gain"], out["kept"] = {}, {}
    for k in variants:
        pairs = [r[f"cnn_{k}"][s] - r["cnn"][s] for r in rows for s in seeds
                 if r[f"cnn_{k}"].get(s) is not None and r["cnn"].get(s) is not None]
        gain = out["gain"][k] = spread(pairs)
        out["kept"][k] = bool(gain and gain["n"] > 1 and
                              gain["mean"] > 2 * gain["sd"] / gain["n"] ** 0.5)
    return out


def fmt(value) -> str:
    return "" if value is None else f"{value:.3f}"


def table(summary: dict, seeds: list[int]) -> str:
    variants = list(summary["variants"])
    head = (["draw"] + [f"CNN seed {s}" for s in seeds]
            + [f"CNN {k}, seed {s}" for k in variants for s in seeds]
            + ["measures CDS", "measures FL", "max ED wall", "best measure"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in summary["draws"]:
        cells = ([str(r["draw"])] + [fmt(r["cnn"].get(s)) for s in seeds]
                 + [fmt(r[f"cnn_{k}"].get(s)) for k in variants for s in seeds]
                 + [fmt(r["measures_cds"]), fmt(r["measures_fl"]), fmt(r["max_wall_ed_mm"]),
                    f"{r['best_measure']} {fmt(r['best_measure_auc'])}"])
        lines.append("| " + " | ".join(cells) + " |")

    def ms(v: dict | None) -> str:
        return "" if v is None else f"{v['mean']:.3f} ± {v['sd']:.3f} (n={v['n']})"
    m, gap = summary["mean"], [""] * (len(seeds) - 1)
    lines.append("| mean ± SD | " + " | ".join(
        [f"all seeds: {ms(m['cnn'])}", *gap]
        + [c for k in variants for c in (f"all seeds: {ms(m[f'cnn_{k}'])}", *gap)]
        + [ms(m[k]) for k in ("measures_cds", "measures_fl", "max_wall_ed_mm",
                              "best_measure")]) + " |")
    lines.append("")
    for k in variants:
        lines.append(f"{k}: gain per (draw, seed) pair {ms(summary['gain'][k])}; kept by the "
                     f"rule: {'yes' if summary['kept'][k] else 'no'}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--draws", type=Path, default=Path("runs/draws"))
    parser.add_argument("--cohort", type=Path, nargs="+", required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--variant", action="append", metavar="NAME=DIR",
                        help="a CNN variant's runs, DIR/d{draw}_s{seed}/ (repeatable; "
                             "default: measures_pretrained=DRAWS/pretrain)")
    parser.add_argument("--reuse", type=Path, default=None, metavar="PREVIOUS.json",
                        help="take the figures of runs not on disk from an earlier results "
                             "file (listed under `reused` in the output)")
    args = parser.parse_args()
    pairs = args.variant or [f"measures_pretrained={args.draws / 'pretrain'}"]
    if any("=" not in p for p in pairs):
        parser.error("--variant takes NAME=DIR, e.g. whole_ventricle=runs/slab/cnn")
    variants = {k: Path(v) for k, v in (p.split("=", 1) for p in pairs)}
    summary = summarise(args.draws, args.cohort, args.seeds, variants, args.reuse)
    print(table(summary, args.seeds))
    write_json(RESULTS, summary)
    print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()

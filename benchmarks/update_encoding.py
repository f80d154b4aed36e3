"""What sending each site's update as float16 deltas (update-encoding fp16-delta) saves in
bytes and costs in AUC, against fp32 (issue #15).

Bytes: r3d_18's state dict at full size (build_model("none")), encoded both ways
(common/update_codec.py): the bytes of one train reply's weights, per site and round.
Instant. The runs' rounds.csv (update_bytes) gives the same figure as it was sent.

AUC: the same federation (simulation runtime, fedavg, fold 0, quick profile, one seed)
with fp32 and with fp16-delta, on each cohort draw's four prepared hospitals. A run whose
metrics.json exists is kept (the script resumes); results are written after each run. A run
in which a site was lost or missed a round (on a shared machine Ray kills actors when
memory runs short) is run again, up to --tries times; `--wait-free-gb` waits for that much
available memory before each run.

    python benchmarks/update_encoding.py --cohort runs/small/cohort runs/draws/draw1 \
        runs/draws/draw2 [--epochs N] [--out runs/update-encoding] [--bytes-only]

Decision rule (#15): fp16-delta may become the default only if it costs no more than
MAX_AUC_COST in total AUC, averaged over the draws.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import shutil
import time
from pathlib import Path
from statistics import mean

import torch

from fedcmr.common.atomic import write_json
from fedcmr.common.model import build_model
from fedcmr.common.run_config import RunConfig, UpdateEncoding
from fedcmr.common.update_codec import encode, update_bytes
from fedcmr.lab.local_federation import run_local_federation
from fedcmr.server.settings import FederationSettings

RESULTS = Path(__file__).resolve().parent / "results" / "update_encoding.json"
REPO = Path(__file__).resolve().parent.parent
CENTRES = ("acdc", "sagrada-familia", "santpau", "vall-d-hebron")
ENCODINGS: tuple[UpdateEncoding, ...] = ("fp32", "fp16-delta")
MAX_AUC_COST = 0.005


def full_size_bytes() -> dict:
    """One site's train reply weights at r3d_18's full size, each encoding: the global
    model of seed 0 as received, a model of seed 1 standing in for the trained one (a
    delta's size does not depend on its values)."""
    received = build_model("none", seed=0, quiet=True)[0].state_dict()
    trained = build_model("none", seed=1, quiet=True)[0].state_dict()
    sizes = {e: update_bytes(encode(trained, received, e)) for e in ENCODINGS}
    params = sum(v.numel() for v in trained.values() if v.is_floating_point())
    return {"float_parameters": params, "bytes": sizes,
            "ratio": sizes["fp16-delta"] / sizes["fp32"]}


def sent_bytes(run_dir: Path) -> dict[str, float]:
    """Mean update_bytes per site and round in a run's rounds.csv, by site."""
    per_site: dict[str, list[int]] = {}
    with (run_dir / "rounds.csv").open() as handle:
        for row in csv.DictReader(handle):
            if row.get("update_bytes"):
                per_site.setdefault(row["site"], []).append(int(row["update_bytes"]))
    return {site: mean(v) for site, v in sorted(per_site.items())}


def available_gb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 2 ** 20
    return float("inf")


def clean(metrics: dict) -> bool:
    """Every site took part in every round and the test."""
    sites = metrics.get("sites") or {}
    return not sites.get("lost") and not sites.get("losses")


def model_gap(runs: dict) -> float | None:
    """||w_fp16 - w_fp32|| / ||w_fp32|| between the two runs' best models (float tensors):
    how far the encodings' trajectories drifted apart."""
    paths = [Path(runs[e]["run_dir"]) / "fold_0" / "best_model.pt" for e in ENCODINGS
             if e in runs and runs[e].get("run_dir")]
    if len(paths) < 2 or not all(p.exists() for p in paths):
        return None
    full, half = (torch.load(p, weights_only=True) for p in paths)
    keys = [k for k, v in full.items() if v.is_floating_point()]
    num = sum(float(((half[k].double() - full[k].double()) ** 2).sum()) for k in keys)
    den = sum(float((full[k].double() ** 2).sum()) for k in keys)
    return math.sqrt(num / den)


def federate(cohort: Path, encoding: UpdateEncoding, out: Path, args: argparse.Namespace,
             log) -> dict:
    """One run (kept when its metrics.json exists and no site was lost); its AUCs, bytes
    and time."""
    for attempt in range(1, args.tries + 1):
        done = out / "metrics.json"
        if done.exists() and clean(json.loads(done.read_text())):
            break
        if done.exists():
            log(f"{out.name}: a site was lost or missed a round; run again")
        shutil.rmtree(out, ignore_errors=True)  # an unfinished or incomplete run
        while available_gb() < args.wait_free_gb:
            log(f"waiting for {args.wait_free_gb} GB of available memory "
                f"({available_gb():.1f} GB now)")
            time.sleep(60)
        run = RunConfig(profile=args.profile, folds=(0,), seed=args.seed, epochs=args.epochs,
                        update_encoding=encoding)
        settings = FederationSettings(strategy=args.strategy, run=run)
        start = time.perf_counter()
        try:
            run_local_federation([cohort / "cache" / c for c in CENTRES], settings, out,
                                 echo=log, runtime="simulation",
                                 site_policy=REPO / "deploy" / "synthetic-site-policy.toml")
        except Exception as err:  # noqa: BLE001 - a failed try is logged and run again
            log(f"{out.name}: try {attempt} failed: {type(err).__name__}: {err}")
        log(f"{out.name}: try {attempt}, {time.perf_counter() - start:.0f} s")
    if not (out / "metrics.json").exists():
        return {"encoding": encoding, "auc": None, "clean": False}
    metrics = json.loads((out / "metrics.json").read_text())
    best = json.loads((out / "fold_0" / "summary.json").read_text())["best_round"]
    return {"encoding": encoding, "auc": metrics["auc"], "elapsed_s": metrics.get("elapsed_s"),
            "clean": clean(metrics), "best_round": best, "run_dir": str(out),
            "update_bytes_per_site_round": sent_bytes(out)}


def summarise(draws: list[dict]) -> dict:
    """Per draw the total AUC each way and fp16-delta's cost (fp32 - fp16-delta)."""
    rows = []
    for d in draws:
        auc = {e: d["runs"][e]["auc"]["total"] for e in ENCODINGS
               if e in d["runs"] and d["runs"][e]["clean"]}
        cost = auc["fp32"] - auc["fp16-delta"] if len(auc) == 2 else None
        rows.append({"draw": d["draw"], "auc_total": auc, "auc_cost": cost,
                     "best_round": {e: r.get("best_round") for e, r in d["runs"].items()},
                     "best_model_relative_gap": model_gap(d["runs"])})
    costs = [r["auc_cost"] for r in rows if r["auc_cost"] is not None]
    mean_cost = mean(costs) if costs else None
    return {"per_draw": rows, "mean_auc_cost": mean_cost, "draws_compared": len(costs),
            "max_auc_cost": MAX_AUC_COST,
            "fp16_delta_may_be_default": (None if len(costs) < len(draws) or not costs
                                          else mean_cost <= MAX_AUC_COST)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cohort", type=Path, nargs="*", default=[],
                        help="cohort roots, each with cache/<centre>/")
    parser.add_argument("--encoding", choices=ENCODINGS, nargs="+", default=list(ENCODINGS),
                        help="the encodings to run (default: both)")
    parser.add_argument("--out", type=Path, default=Path("runs/update-encoding"))
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--epochs", type=int, default=0, help="rounds (0: the profile's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--strategy", default="fedavg")
    parser.add_argument("--tries", type=int, default=3)
    parser.add_argument("--wait-free-gb", type=float, default=0.0)
    parser.add_argument("--bytes-only", action="store_true")
    args = parser.parse_args()

    def log(text: str) -> None:
        print(time.strftime("%H:%M:%S"), text, flush=True)

    result: dict = {"full_size": full_size_bytes(), "profile": args.profile,
                    "epochs": args.epochs or RunConfig(profile=args.profile).hyper.max_epochs,
                    "fold": 0, "seed": args.seed, "strategy": args.strategy,
                    "runtime": "simulation", "draws": []}
    sizes = result["full_size"]["bytes"]
    log(f"r3d_18 update per site and round: fp32 {sizes['fp32']} B, fp16-delta "
        f"{sizes['fp16-delta']} B ({result['full_size']['ratio']:.3f})")
    if args.bytes_only:
        return
    for d, cohort in enumerate(args.cohort):
        draw = {"draw": d, "cohort": str(cohort), "runs": {}}
        result["draws"].append(draw)
        for encoding in args.encoding:
            draw["runs"][encoding] = federate(cohort, encoding,
                                              args.out / f"d{d}_{encoding}", args, log)
            done = draw["runs"][encoding]
            log(f"draw {d} {encoding}: total AUC {(done['auc'] or {}).get('total')}, clean "
                f"{done['clean']}")
            result["summary"] = summarise(result["draws"])
            write_json(RESULTS, result)
    result["summary"] = summarise(result["draws"])
    write_json(RESULTS, result)
    log(json.dumps(result["summary"], indent=1))
    log(f"written: {RESULTS}")


if __name__ == "__main__":
    main()

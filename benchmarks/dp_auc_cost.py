"""What differential privacy for the weights costs in AUC on the synthetic cohort: the same
federation (simulation runtime, the demo's four prepared hospitals) without DP, with
clipping only, and with clipping plus noise of several multipliers.

    python benchmarks/dp_auc_cost.py --cache runs/demo/cache/* [--epochs 6] [--clip 1.0]
        [--noise 0,0.01,1]

The caches are what `fedcmr demo` prepares (runs/demo/cache/). Prints a table and writes
benchmarks/results/dp_auc_cost.json; each run's folder is kept under --out.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from fedcmr.common.atomic import write_json

RESULTS = Path(__file__).resolve().parent / "results" / "dp_auc_cost.json"
REPO = Path(__file__).resolve().parent.parent


def federate(caches: list[Path], out: Path, args: argparse.Namespace,
             clip: float, noise: float) -> dict:
    command = [str(Path(sys.executable).with_name("fedcmr")), "-q", "federate",
               "--runtime", "simulation", "--cache", *map(str, caches), "--profile",
               args.profile, "--fold", "0", "--epochs", str(args.epochs), "--site-policy",
               str(REPO / "deploy" / "synthetic-site-policy.toml"), "--dp-clip", str(clip),
               "--dp-noise", str(noise), "--out", str(out)]
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    metrics = json.loads((out / "metrics.json").read_text())
    privacy = metrics.get("privacy") or {}
    return {"dp_clip": clip, "dp_noise": noise, "auc": metrics["auc"],
            "epsilon": privacy.get("epsilon"), "delta": privacy.get("delta"),
            "seconds": round(time.perf_counter() - start, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, nargs="+", required=True)
    parser.add_argument("--out", type=Path, default=Path("runs/dp-auc-cost"))
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--clip", type=float, default=1.0)
    parser.add_argument("--noise", default="0,0.01,1",
                        help="noise multipliers to try with --clip (0: clipping only)")
    args = parser.parse_args()
    settings = [(0.0, 0.0)] + [(args.clip, float(z)) for z in args.noise.split(",")]
    runs = []
    for clip, noise in settings:
        name = "no-dp" if clip == 0 else f"clip{clip:g}-noise{noise:g}"
        runs.append(federate(args.cache, args.out / name, args, clip, noise))
        r = runs[-1]
        print(f"{name:22s} total AUC {r['auc'].get('total')}  epsilon {r['epsilon']}  "
              f"({r['seconds']} s)", flush=True)
    write_json(RESULTS, {"profile": args.profile, "epochs": args.epochs, "fold": 0,
                         "caches": [str(c) for c in args.cache], "runs": runs})
    print(f"written: {RESULTS}")


if __name__ == "__main__":
    main()

"""What it costs to start a ClientApp for one message, the way Flower does it (a fresh
`flwr-clientapp` process that imports torch, torchvision and Flower) and the way fedcmr's
SuperExec does it (client/runtime/superexec_main.py: a fork of a process that imported them once).

    python benchmarks/clientapp_start.py [--repeats 5] [--federation]

Each start ends once the ClientApp's own module (fedcmr.client.site.client_app) is imported,
the point at which the message's work begins. With --federation it also times one small
`fedcmr federate` run (three sites, smoke profile, fold 0) in each mode, minutes on 2 cores.
Prints a table and writes benchmarks/results/clientapp_start.json.
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fedcmr.client.runtime.superexec_main import PRELOAD, START_ENV
from fedcmr.common.atomic import write_json

RESULTS = Path(__file__).resolve().parent / "results" / "clientapp_start.json"
APP = "fedcmr.client.site.client_app"
REPO = Path(__file__).resolve().parent.parent


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def fresh(repeats: int) -> tuple[list[float], list[float]]:
    """A new interpreter per start, as `flwr-clientapp` is."""
    code = "; ".join(f"import {name}" for name in (*PRELOAD, APP))
    walls, cpus = [], []
    for _ in range(repeats):
        cpu, start = _children_cpu(), time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True)
        walls.append(time.perf_counter() - start)
        cpus.append(_children_cpu() - cpu)
    return walls, cpus


def forked(repeats: int) -> tuple[list[float], list[float]]:
    """A fork of this process once it has imported PRELOAD, as fedcmr's SuperExec does."""
    for name in PRELOAD:
        importlib.import_module(name)
    walls, cpus = [], []
    for _ in range(repeats):
        cpu, start = _children_cpu(), time.perf_counter()
        if (pid := os.fork()) == 0:
            importlib.import_module(APP)
            os._exit(0)
        os.waitpid(pid, 0)
        walls.append(time.perf_counter() - start)
        cpus.append(_children_cpu() - cpu)
    return walls, cpus


def federation(mode: str, caches: list[Path], out: Path) -> float:
    env = dict(os.environ, **{START_ENV: mode})
    start = time.perf_counter()
    subprocess.run([str(Path(sys.executable).with_name("fedcmr")), "-q", "federate", "--cache",
                    *map(str, caches), "--profile", "smoke", "--fold", "0", "--min-subjects",
                    "3", "--site-policy", str(REPO / "deploy" / "synthetic-site-policy.toml"),
                    "--out", str(out / mode)], check=True, env=env,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--federation", action="store_true",
                        help="also time one small fedcmr federate run in each mode")
    args = parser.parse_args()
    result = {"machine": {"cores": os.cpu_count(), "python": platform.python_version(),
                          "processor": platform.processor()},
              "repeats": args.repeats, "starts": {}}
    for name, way in (("fresh process (Flower)", fresh), ("fork (fedcmr)", forked)):
        walls, cpus = way(args.repeats)
        result["starts"][name] = {"wall_s": round(statistics.median(walls), 3),
                                  "cpu_s": round(statistics.median(cpus), 3)}
        print(f"{name:24s} median {statistics.median(walls):6.2f} s wall, "
              f"{statistics.median(cpus):6.2f} s CPU per ClientApp start")
    if args.federation:
        sys.path.insert(0, str(REPO / "tests"))
        from cache_factory import write_cohort

        with tempfile.TemporaryDirectory() as tmp:
            caches = write_cohort(Path(tmp) / "caches",
                                  {"Alpha": (6, 6), "Bravo": (7, 7), "Charlie": (5, 6)})
            result["federation_s"] = {}
            for mode in ("exec", "fork"):
                took = federation(mode, caches, Path(tmp))
                result["federation_s"][mode] = round(took, 1)
                print(f"fedcmr federate, 3 sites, smoke, {START_ENV}={mode}: {took:6.1f} s")
    write_json(RESULTS, result)
    print(f"written: {RESULTS}")


if __name__ == "__main__":
    main()

"""Peak memory of a four-site federation on one machine: `fedcmr federate` (a SuperLink and
the ServerApp, one SuperNode per hospital with its SuperExec and the ClientApps it forks),
full-size r3d_18 (33 M parameters, 133 MB in fp32) at the smoke profile's 4 x 24 x 24 crop,
the tests' four ring-frame caches.

    python benchmarks/memory.py [--rounds 2] [--interval 0.5] [--out FILE]

Every `interval` seconds it reads the proportional set size (Pss in /proc/PID/smaps_rollup:
each shared page counted once over the processes that share it, so the sum is what the run
holds) of every process under the launcher, and sums it, by role and in all. Writes
benchmarks/results/memory.json (`peak_rss_total_gb`: the peak of that sum; `at_peak_gb`: each
role's share at that moment; `peak_by_role_gb`: each role's own peak) and memory.png (the
sum over time, by role). Run it alone: another job's memory pressure changes the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fedcmr.common.atomic import write_json
from fedcmr.support.flower_env import tool

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # the tests' caches and /proc reader
RESULTS = HERE / "results" / "memory.json"
SIZES = {"Alpha": (6, 6), "Bravo": (7, 7), "Charlie": (5, 6), "Delta": (6, 7)}
#: The issue's target for the whole run (#29).
TARGET_GB = 4.0
#: Roles by what a process's command line holds, the first match wins.
ROLES = (("serverapp", "flwr-serverapp"), ("superlink", "flower-superlink"),
         ("superexec", "flower-superexec"), ("clientapp", "flwr-clientapp"),
         ("supernode", "flower-supernode"), ("launcher", "federate"))


def role(pid: int, table: dict[int, tuple[int, str, str]]) -> str:
    """The process's role; a ClientApp forked by a SuperExec (client/runtime/superexec_main.py)
    keeps its parent's command line, so a SuperExec's child is a ClientApp."""
    parent, _, cmdline = table.get(pid, (0, "", ""))
    name = next((name for name, marker in ROLES if marker in cmdline), "other")
    if name == "superexec" and "flower-superexec" in table.get(parent, (0, "", ""))[2]:
        return "clientapp"
    return name


def pss_kb(pid: int) -> int:
    """The process's proportional set size in kB (0 once it is gone)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return 0


def sample(root: int) -> dict[str, float]:
    """GB held by each role of the process tree under `root` (root included), from one
    read of /proc (the tests' process_tools)."""
    from process_tools import descendants, processes

    table = processes()
    held: dict[str, float] = {}
    for pid in [root, *descendants(root, table)]:
        name = role(pid, table)
        held[name] = held.get(name, 0.0) + pss_kb(pid) / 1024**2
    return held


def make_caches(root: Path) -> list[Path]:
    from cache_factory import write_cohort  # the tests' ring-frame caches

    return write_cohort(root, SIZES)


def plot(samples: list[tuple[float, dict[str, float]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    roles = sorted({r for _, held in samples for r in held})
    times = [t for t, _ in samples]
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.stackplot(times, [[held.get(r, 0.0) for _, held in samples] for r in roles],
                 labels=roles)
    ax.axhline(TARGET_GB, color="black", linestyle="--", linewidth=1, label="target")
    ax.set_xlabel("seconds since start")
    ax.set_ylabel("GB (proportional set size)")
    ax.set_title("Four-site federation, full r3d_18, smoke crop")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--interval", type=float, default=0.5)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="memory-") as tmp:
        root = Path(tmp)
        caches = make_caches(root / "caches")
        command = [tool("fedcmr"), "-q", "federate", "--cache", *map(str, caches),
                   "--profile", "smoke", "--fold", "0", "--min-subjects", "3",
                   "--epochs", str(args.rounds), "--pretrained", "none",
                   "--site-policy", str(HERE.parent / "deploy" / "synthetic-site-policy.toml"),
                   "--out", str(root / "run")]
        started = time.monotonic()
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
        samples: list[tuple[float, dict[str, float]]] = []
        while proc.poll() is None:
            samples.append((round(time.monotonic() - started, 2), sample(proc.pid)))
            time.sleep(args.interval)
        out = proc.stdout.read() if proc.stdout else ""
        elapsed = time.monotonic() - started
    if proc.returncode != 0:
        sys.exit(f"the federation failed ({proc.returncode}):\n{out[-3000:]}")
    totals = [sum(held.values()) for _, held in samples]
    at = max(range(len(samples)), key=totals.__getitem__)
    roles = sorted({r for _, held in samples for r in held})
    results = {
        "machine": {"cores": os.cpu_count(), "python": platform.python_version()},
        "run": {"sites": len(SIZES), "rounds": args.rounds, "profile": "smoke",
                "model": "cnn (r3d_18, 33 M parameters)", "runtime": "deployment",
                "elapsed_s": round(elapsed, 1)},
        "measure": "Pss from /proc/PID/smaps_rollup, summed over the launcher's process "
                   f"tree, every {args.interval} s",
        "samples": len(samples),
        "peak_rss_total_gb": round(totals[at], 2),
        "peak_at_s": samples[at][0],
        "at_peak_gb": {r: round(samples[at][1].get(r, 0.0), 2) for r in roles},
        "peak_by_role_gb": {r: round(max(h.get(r, 0.0) for _, h in samples), 2)
                            for r in roles},
        "target_gb": TARGET_GB,
        "met": totals[at] <= TARGET_GB,
    }
    write_json(args.out, results)
    plot(samples, args.out.with_suffix(".png"))
    for key in ("peak_rss_total_gb", "peak_at_s", "at_peak_gb", "peak_by_role_gb", "met"):
        print(f"{key}: {results[key]}")
    print(f"written to {args.out} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()

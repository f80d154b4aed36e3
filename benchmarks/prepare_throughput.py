"""Throughput of `fedcmr prepare` (N4, 1 mm resampling, crop, clinical measures) as a site
runs it, with --workers 1 and 2; with --demo also the README's main command, `fedcmr demo`.

Every measured run is the real command in a fresh process writing into a new, empty cache
folder, so no prepare stage (N4, crop, measures) is reused between runs. Inputs: the four
real ACDC subjects ($FEDCMR_ACDC_SAMPLE, else /work/shared/data/acdc-sample; read in place)
and a synthetic cohort (`fedcmr synth`, not timed) prepared as its M&Ms and its ACDC part.
Input files are read once before measuring, so that no run pays the disk for the others.

Per run: wall time, CPU time of the children (user + system, RUSAGE_CHILDREN), frames
prepared (rows of the written manifest.csv), frames/min, frames/min/core (frames/min over
min(workers, cores)), frames per CPU-minute, the largest process's RSS, and the 1-minute
load average before it: with load above --max-load the run waits up to --max-wait seconds
for it to drop, and both figures are recorded (other work on the cores slows every run).

    python benchmarks/prepare_throughput.py [--acdc DIR] [--synthetic-scale F]
        [--inputs acdc,synthetic-mnms,synthetic-acdc] [--demo] [--out FILE]

Sections not measured in a run (`prepare` with --inputs '', the demo without --demo) are
kept from an existing --out file; each section records when it was measured.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

from fedcmr.common.atomic import write_json

DEFAULT_ACDC = Path("/work/shared/data/acdc-sample")
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "prepare_throughput.json"
INPUTS = ("acdc", "synthetic-mnms", "synthetic-acdc")
#: prepare's closing line: "N frames of M subjects ready in CACHE (C computed, R reused)".
COMPUTED = re.compile(r"frames of \d+ subjects ready in .* \((\d+) computed, \d+ reused\)")
README_COMMAND = ("python3 -m venv .venv && .venv/bin/pip install -e '.[simulation]' && "
                  ".venv/bin/fedcmr demo --out runs/demo")
#: `fedcmr demo` log lines that open each stage (the first stage opens at the start).
DEMO_STAGES = (("startup", None), ("synthesis", "synthesising a four-centre cohort"),
               ("prepare", "preparing each hospital's data"),
               ("federation", "federating four hospitals"),
               ("measures beside", "model beside it"))
NOTES = ("prepare runs SimpleITK filters on cpu_count // workers threads per worker process, "
         "so --workers 1 already uses every core inside N4 and resampling; frames/min/core "
         "follows the definition above, frames_per_cpu_min is the throughput per core actually "
         "busy. peak_tree_rss_mb sums the RSS of the whole process tree (pages shared after "
         "fork are counted once per process); max_rss_mb is the largest single process.")


def fedcmr_command() -> str:
    """The `fedcmr` console script beside this interpreter (the venv's), else on PATH."""
    beside = Path(sys.executable).parent / "fedcmr"
    found = str(beside) if beside.exists() else shutil.which("fedcmr")
    if not found:
        raise SystemExit("no fedcmr command: pip install -e . first")
    return found


def usable_cores() -> int:
    return len(os.sched_getaffinity(0))


def wait_for_quiet(max_load: float = 1.0, max_wait_s: float = 120.0, poll_s: float = 5.0
                   ) -> dict:
    """The 1-minute load average before a measurement; above `max_load`, wait (at most
    `max_wait_s`) for it to drop. Records what it was first and when the run started."""
    first, start = os.getloadavg()[0], time.monotonic()
    while os.getloadavg()[0] > max_load and time.monotonic() - start + poll_s <= max_wait_s:
        time.sleep(poll_s)
    return {"load1_first": round(first, 2), "waited_s": round(time.monotonic() - start, 1),
            "loadavg_1_5_15_at_start": [round(x, 2) for x in os.getloadavg()]}


def _tree_rss_bytes(root: int) -> int:
    """Resident memory of `root` and all its descendants, from /proc (0 where unreadable)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat = Path(f"/proc/{entry.name}/stat").read_text()
            except OSError:
                continue
            children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(
                int(entry.name))
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, ()))
        try:
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return total * os.sysconf("SC_PAGE_SIZE")


def run_child(command: list[str], log: Path, markers: tuple[str, ...] = (),
              env: dict | None = None) -> dict:
    """Run `command`, its output (stdout and stderr) into `log`; wall and children's CPU
    seconds, the largest process's RSS (wait4), the whole tree's sampled peak RSS, and the
    seconds after the start at which each of `markers` first appeared in the output."""
    log.parent.mkdir(parents=True, exist_ok=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    seen: dict[str, float] = {}
    peak, done = [0], threading.Event()
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})

    def sample() -> None:
        while not done.wait(1.0):
            peak[0] = max(peak[0], _tree_rss_bytes(proc.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    with open(log, "wb") as out:
        for raw in proc.stdout:
            out.write(raw)
            text = raw.decode(errors="replace")
            for marker in markers:
                if marker not in seen and marker in text:
                    seen[marker] = time.perf_counter() - start
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    done.set()
    sampler.join()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"returncode": proc.returncode, "wall_s": wall,
            "cpu_user_s": after.ru_utime - before.ru_utime,
            "cpu_sys_s": after.ru_stime - before.ru_stime,
            "max_rss_mb": usage.ru_maxrss / 1024, "peak_tree_rss_mb": peak[0] / 2**20,
            "markers_s": seen}


def manifest_rows(cache: Path) -> list[dict]:
    with open(cache / "manifest.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def measure_prepare(name: str, prepare_args: list[str], workers: int, work: Path,
                    max_load: float = 1.0, max_wait_s: float = 120.0) -> dict:
    """One cold `fedcmr prepare ... --workers N` into a new folder under `work`: the run's
    figures. Raises when the command fails (its log's tail in the message)."""
    folder = Path(tempfile.mkdtemp(prefix=f"{name}-w{workers}-", dir=work))
    cache = folder / "cache"  # new, so every stage is computed in this run
    command = [fedcmr_command(), "prepare", *prepare_args, "--out", str(cache),
               "--workers", str(workers)]
    load = wait_for_quiet(max_load, max_wait_s)
    run = run_child(command, folder / "prepare.log")
    if run["returncode"] != 0:
        tail = (folder / "prepare.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"{' '.join(command)} exited {run['returncode']}:\n{tail}")
    rows = manifest_rows(cache)
    frames, cores = len(rows), usable_cores()
    said = COMPUTED.search((folder / "prepare.log").read_text(errors="replace"))
    computed = int(said.group(1)) if said else None
    if computed != frames:
        raise RuntimeError(f"{cache}: {computed} of {frames} frames computed; a measured run "
                           "must compute every frame (no stage cache reused)")
    cpu = run["cpu_user_s"] + run["cpu_sys_s"]
    per_min = frames / run["wall_s"] * 60
    return {
        "input": name, "workers": workers, "cores": cores,
        "per_core_divisor": min(workers, cores),
        "frames": frames, "subjects": len({r["subject"] for r in rows}),
        "frames_computed": computed,
        "n4_stage_files": len(list((cache / ".stages" / "n4").glob("*.npz"))),
        "wall_s": round(run["wall_s"], 3), "cpu_user_s": round(run["cpu_user_s"], 3),
        "cpu_sys_s": round(run["cpu_sys_s"], 3), "cpu_s": round(cpu, 3),
        "cpu_utilisation": round(cpu / run["wall_s"], 3),
        "frames_per_min": round(per_min, 3),
        "frames_per_min_per_core": round(per_min / min(workers, cores), 3),
        "frames_per_cpu_min": round(frames / cpu * 60, 3) if cpu > 0 else None,
        "max_rss_mb": round(run["max_rss_mb"], 1),
        "peak_tree_rss_mb": round(run["peak_tree_rss_mb"], 1),
        "load": load, "cache": str(cache), "command": command[1:],
    }


def speedups(runs: list[dict]) -> dict:
    """Per input, the wall-time speed-up from the fewest workers measured to the most."""
    out = {}
    for name in dict.fromkeys(r["input"] for r in runs):
        mine = sorted((r for r in runs if r["input"] == name), key=lambda r: r["workers"])
        low, high = mine[0], mine[-1]
        if low["workers"] == high["workers"]:
            continue
        speedup = low["wall_s"] / high["wall_s"]
        ideal = min(high["workers"], high["cores"]) / min(low["workers"], low["cores"])
        out[name] = {"from_workers": low["workers"], "to_workers": high["workers"],
                     "speedup": round(speedup, 3), "efficiency": round(speedup / ideal, 3)}
    return out


def cli_startup_s(repeats: int = 3) -> float:
    """Median seconds for `fedcmr prepare --help`: the fixed cost inside every run's wall."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([fedcmr_command(), "prepare", "--help"], check=True,
                       stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return round(sorted(times)[len(times) // 2], 3)


def warm_page_cache(root: Path) -> None:
    """Read every input file once, so no measured run pays the disk for a later one."""
    for path in root.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                while handle.read(1 << 20):
                    pass


def prepare_inputs(names: list[str], acdc: Path, scale: float, work: Path) -> dict:
    """Each input's `fedcmr prepare` arguments; synthesises the cohort when one is asked."""
    inputs = {}
    if "acdc" in names:
        if not (acdc / "training").is_dir():
            raise SystemExit(f"{acdc}: no ACDC sample (training/); set --acdc or "
                             "$FEDCMR_ACDC_SAMPLE, or leave acdc out of --inputs")
        inputs["acdc"] = {"args": ["--dataset", "acdc", "--root", str(acdc)],
                          "description": "the four real ACDC subjects (read in place)"}
    if any(n.startswith("synthetic-") for n in names):
        synth = work / "synth"
        subprocess.run([fedcmr_command(), "-q", "synth", "--out", str(synth), "--scale",
                        str(scale), "--seed", "0"], check=True)
        for part, dataset in (("synthetic-mnms", "mnms"), ("synthetic-acdc", "acdc")):
            if part in names:
                inputs[part] = {"args": ["--dataset", dataset, "--root", str(synth / dataset)],
                                "description": f"fedcmr synth --scale {scale} --seed 0, its "
                                               f"{dataset} part (the study's centres)"}
    return inputs


def measure_all_prepare(names: list[str], acdc: Path, scale: float, workers: list[int],
                        work: Path, max_load: float, max_wait_s: float) -> dict:
    inputs = prepare_inputs(names, acdc, scale, work)
    runs = []
    for name, spec in inputs.items():
        warm_page_cache(Path(spec["args"][-1]))
        for n in workers:
            runs.append(measure_prepare(name, spec["args"], n, work, max_load, max_wait_s))
            shutil.rmtree(Path(runs[-1].pop("cache")).parent)
            print_run(runs[-1])
    return {"measured_at": now(), "synthetic_scale": scale, "cli_startup_s": cli_startup_s(),
            "inputs": {k: {"args": v["args"], "description": v["description"]}
                       for k, v in inputs.items()},
            "runs": runs, "speedup": speedups(runs)}


def demo_stages(markers_s: dict[str, float], wall_s: float) -> dict[str, float | None]:
    """Seconds per demo stage, each from its opening line to the next stage's."""
    opens = [0.0 if marker is None else markers_s.get(marker) for _, marker in DEMO_STAGES]
    stages = {}
    for i, (name, _) in enumerate(DEMO_STAGES):
        ends = [t for t in opens[i + 1:] if t is not None] + [wall_s]
        stages[name] = None if opens[i] is None else round(ends[0] - opens[i], 1)
    return stages


def measure_demo(work: Path, max_load: float, max_wait_s: float) -> dict:
    """`fedcmr demo --out <new folder>` once, at its defaults, as the README runs it."""
    out = work / "demo"
    command = [fedcmr_command(), "demo", "--out", str(out)]
    load = wait_for_quiet(max_load, max_wait_s)
    markers = tuple(m for _, m in DEMO_STAGES if m)
    run = run_child(command, work / "demo.log", markers)
    result = {
        "readme_command": README_COMMAND, "timed": "fedcmr demo --out <new folder>",
        "measured_at": now(), "returncode": run["returncode"],
        "wall_s": round(run["wall_s"], 1), "wall_min": round(run["wall_s"] / 60, 2),
        "cpu_s": round(run["cpu_user_s"] + run["cpu_sys_s"], 1),
        "max_rss_mb": round(run["max_rss_mb"], 1),
        "peak_tree_rss_mb": round(run["peak_tree_rss_mb"], 1),
        "stages_s": demo_stages(run["markers_s"], run["wall_s"]), "load": load,
    }
    frames = sum(len(manifest_rows(c.parent)) for c in (out / "cache").glob("*/manifest.csv"))
    prep_s = result["stages_s"]["prepare"]
    result["prepare_frames"] = frames
    if frames and prep_s:
        result["prepare_frames_per_min"] = round(frames / prep_s * 60, 2)
    metrics = out / "federated" / "metrics.json"
    if metrics.exists():
        found = json.loads(metrics.read_text())
        result["federation_elapsed_s"] = found.get("elapsed_s")
        result["auc"] = found.get("auc")
    beside = out / "federated-measures" / "metrics.json"
    if beside.exists():
        result["auc_measures_beside"] = json.loads(beside.read_text()).get("auc")
    lines = (work / "demo.log").read_text(errors="replace").splitlines()
    heads = [i for i, line in enumerate(lines) if line.startswith("centre ")]
    if heads:  # the demo's closing table, as printed
        result["table"] = lines[heads[-1]:]
    if run["returncode"] != 0:
        result["log_tail"] = (work / "demo.log").read_text(errors="replace")[-3000:]
    return result


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def print_run(r: dict) -> None:
    print(f"{r['input']:15s} {r['workers']:>2d} {r['frames']:>6d} {r['wall_s']:>8.1f} "
          f"{r['cpu_s']:>7.1f} {r['cpu_utilisation']:>5.2f} {r['frames_per_min']:>7.2f} "
          f"{r['frames_per_min_per_core']:>9.2f} {r['frames_per_cpu_min'] or 0:>9.2f} "
          f"{r['load']['load1_first']:>6.2f} {r['load']['loadavg_1_5_15_at_start'][0]:>6.2f}")


HEADER = (f"{'input':15s} {'w':>2s} {'frames':>6s} {'wall s':>8s} {'cpu s':>7s} {'util':>5s} "
          f"{'f/min':>7s} {'f/min/core':>9s} {'f/cpu-min':>9s} {'load1':>6s} {'start':>6s}")


def machine() -> dict:
    return {"cpus": os.cpu_count(), "usable_cores": usable_cores(),
            "python": platform.python_version(), "simpleitk": version("SimpleITK"),
            "fedcmr": version("fedcmr"), "platform": platform.platform()}


def load_existing(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--acdc", type=Path,
                        default=Path(os.environ.get("FEDCMR_ACDC_SAMPLE", DEFAULT_ACDC)))
    parser.add_argument("--synthetic-scale", type=float, default=0.1,
                        help="synthetic cohort size (fedcmr synth --scale)")
    parser.add_argument("--inputs", default=",".join(INPUTS),
                        help=f"comma-separated, of {', '.join(INPUTS)}; '' measures none")
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    parser.add_argument("--demo", action="store_true", help="also time `fedcmr demo` once")
    parser.add_argument("--max-load", type=float, default=1.0)
    parser.add_argument("--max-wait", type=float, default=120.0, help="seconds")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    names = [n for n in args.inputs.split(",") if n]
    if unknown := set(names) - set(INPUTS):
        parser.error(f"unknown --inputs {sorted(unknown)}; choose from {', '.join(INPUTS)}")
    result = {"description": __doc__.splitlines()[0], "notes": NOTES, "machine": machine(),
              **{k: v for k, v in load_existing(args.out).items()
                 if k in ("prepare", "readme_main_command")}}
    with tempfile.TemporaryDirectory(prefix="fedcmr-prepare-bench-") as tmp:
        if names:
            print(HEADER)
            result["prepare"] = measure_all_prepare(
                names, args.acdc, args.synthetic_scale,
                [int(w) for w in args.workers.split(",")], Path(tmp), args.max_load,
                args.max_wait)
            for name, s in result["prepare"]["speedup"].items():
                print(f"{name}: speed-up {s['speedup']:.2f}x from {s['from_workers']} to "
                      f"{s['to_workers']} workers (efficiency {s['efficiency']:.2f})")
            write_json(args.out, result)
        if args.demo:
            demo = result["readme_main_command"] = measure_demo(Path(tmp), args.max_load,
                                                                 args.max_wait)
            print(f"fedcmr demo: exit {demo['returncode']}, {demo['wall_min']:.1f} min, max "
                  f"RSS {demo['max_rss_mb']:.0f} MB (tree peak {demo['peak_tree_rss_mb']:.0f}"
                  f" MB), stages {demo['stages_s']}")
    write_json(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

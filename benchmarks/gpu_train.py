"""How fast the r3d_18 classifier trains and scores at the paper's input size on this
machine's device, and how near that is to the hardware's limit (issue #15).

    python benchmarks/gpu_train.py [--smoke | --cpu-paper] [--budget-s S] [--out FILE]

Each figure is timed after warm-up steps, between device synchronisations:
- training frames/s and model FLOP utilisation (MFU) of the real `train_steps`, variants:
  fp32; bf16 autocast; + channels_last_3d; + cuDNN autotuning (fedcmr's CUDA placement);
  + torch.compile (opt-in `compile_model`; run last, since compiling takes minutes, and
  its failure is recorded, not raised); then fedcmr's placement at other batch sizes;
- scoring (inference) frames/s: the model alone, and the real `score`;
- the data path: frames/s of the real `train_loader`, copied to the device, over a synthetic
  cache (tests/cache_factory.py) at batch 8/16/32, as the placement makes batches and, on
  CUDA, in one process too; one augmented set-up where torchio is installed;
- end to end: `train_steps` fed by `train_loader`.
FLOPs are counted (torch.utils.flop_counter) on one sample's forward and backward, not
assumed. MFU is against the GPU's dense bf16 peak where known (H200: 790 TFLOP/s); a CPU gets
its achieved GFLOP/s and no peak. The JSON is rewritten after each section, so a run stopped
by its time limit keeps what it had measured. Presets: the default (a GPU, batch 16, 20 steps
after 5 warm-up ones, within ~7 minutes on an H200), --smoke (tiny input, seconds on CPU),
--cpu-paper (the paper's input on CPU, fp32, batch 2, 2 steps). The measurements themselves:
benchmarks/gpu_measure.py; the script to run on a GPU machine: benchmarks/gpu_check.sh.
"""

from __future__ import annotations

import argparse
import itertools
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from gpu_measure import (
    REPO,
    BenchConfig,
    count_flops,
    data_harmoniser,
    end_to_end,
    loader_rate,
    machine,
    model_score_rate,
    peak_of,
    score_rate,
    synthetic_frames,
    train_rate,
)

from fedcmr.common.atomic import write_json
from fedcmr.common.device import Placement, placement
from fedcmr.common.learning.data import CachedFrame, FrameDataset
from fedcmr.common.seeds import seed_run

RESULTS = REPO / "benchmarks" / "results"
CPU_ONLY_FP32 = ("CUDA only: the CPU placement runs fp32 (bf16 autocast, channels_last_3d "
                 "and cuDNN autotuning are fedcmr's CUDA path)")


@dataclass(frozen=True)
class Variant:
    name: str
    bf16: bool
    channels_last: bool
    cudnn_benchmark: bool
    compiled: bool = False


VARIANTS = (Variant("fp32", False, False, False), Variant("bf16", True, False, False),
            Variant("bf16_cl", True, True, False),
            Variant("bf16_cl_cudnn", True, True, True),  # = placement() on CUDA
            Variant("bf16_cl_cudnn_compile", True, True, True, compiled=True))


PRESETS = {
    "gpu": BenchConfig(),
    "smoke": BenchConfig(label="smoke", input_size=(4, 32, 32), batch=2, warmup=1, steps=2,
                         sweep_batches=(4,), score_batch=4, score_frames=8, loader_steps=2,
                         cache_subjects=16, variant_s=20, budget_s=120),
    "cpu-paper": BenchConfig(label="cpu, no GPU lent", batch=2, warmup=1, steps=2,
                             sweep_batches=(), score_batch=2, score_frames=4, loader_steps=2,
                             cache_subjects=16, variant_s=120, budget_s=290),
}
OUT_NAMES = {"gpu": RESULTS / "gpu.json", "cpu-paper": RESULTS / "gpu_cpu.json",
             "smoke": Path(tempfile.gettempdir()) / "gpu_smoke.json"}


class Clock:
    def __init__(self, budget_s: float):
        self.start, self.budget_s = time.perf_counter(), budget_s

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.budget_s - self.elapsed()


def guarded(base: dict, measure: Callable[[], dict]) -> dict:
    """`measure`'s row, or the error it raised (the run goes on)."""
    try:
        return {**base, "status": "ok", **measure()}
    except Exception as err:  # a failed variant (compile, out of memory) is a result
        return {**base, "status": "error", "error": f"{type(err).__name__}: {err}"[:2000]}


def variant_placement(variant: Variant, device: torch.device) -> Placement | str:
    """The variant's placement, or why it does not run on `device`."""
    if device.type != "cuda":
        if variant.compiled:
            return "CUDA only: compile_model leaves the CPU path uncompiled"
        return placement("cpu") if variant.name == "fp32" else CPU_ONLY_FP32
    where = placement("cuda")  # fedcmr's CUDA placement; the others take parts away
    torch.backends.cudnn.benchmark = variant.cudnn_benchmark
    return replace(where, autocast_dtype=torch.bfloat16 if variant.bf16 else None,
                   memory_format=(torch.channels_last_3d if variant.channels_last
                                  else torch.contiguous_format))


def loader_rows(data: FrameDataset, frames: list[CachedFrame], where: Placement,
                cfg: BenchConfig, clock: Clock) -> list[dict]:
    modes = {f"{where.loader_workers} workers, pinned={where.pin_memory}": where}
    if where.loader_workers:
        modes["in process, pinned"] = replace(where, loader_workers=0)
    rows = []
    for batch, (mode, mode_where) in itertools.product(cfg.loader_batches, modes.items()):
        base = {"batch": batch, "mode": mode, "augment": "none"}
        rows.append(skipped(base, clock) or guarded(
            base, lambda b=batch, w=mode_where: loader_rate(data, b, w, cfg.loader_steps)))
    base = {"batch": cfg.batch, "mode": next(iter(modes)), "augment": cfg.augment}
    try:
        import torchio  # noqa: F401  (the augmentation's library; not on every GPU image)
    except ImportError:
        return [*rows, {**base, "status": "skipped", "reason": "torchio not installed here"}]
    augmented = FrameDataset(frames, data_harmoniser(frames), cfg.input_size, cfg.augment)
    rows.append(skipped(base, clock) or guarded(
        base, lambda: loader_rate(augmented, cfg.batch, where, cfg.loader_steps)))
    return rows


def skipped(base: dict, clock: Clock, need_s: float = 0.0) -> dict | None:
    if clock.left() <= need_s:
        return {**base, "status": "skipped",
                "reason": f"time budget: {clock.left():.0f} s of {clock.budget_s:.0f} s left"}
    return None


def summary(result: dict) -> dict:
    ok = [r for r in result["variants"] if r["status"] == "ok"]
    best = max(ok, key=lambda r: r["frames_per_s"], default=None)
    used = "bf16_cl_cudnn" if result["machine"]["device"] == "cuda" else "fp32"
    fedcmr = next((r for r in ok if r["name"] == used), None)
    loader = [r for r in result["loader"] if r["status"] == "ok" and r["augment"] == "none"
              and r["batch"] == result["config"]["batch"]]
    out = {"best_variant": best and best["name"], "best_frames_per_s": best and
           best["frames_per_s"], "best_mfu": best and best["mfu"],
           "fedcmr_variant": fedcmr and fedcmr["name"]}
    if fedcmr and loader:
        out["loader_frames_per_s"] = loader[0]["frames_per_s"]
        out["loader_keeps_up"] = loader[0]["frames_per_s"] >= fedcmr["frames_per_s"]
    e2e = result.get("end_to_end", {})
    if fedcmr and e2e.get("status") == "ok":
        out["end_to_end_over_compute"] = round(e2e["frames_per_s"] / fedcmr["frames_per_s"], 3)
    return out


def run(cfg: BenchConfig, out: Path) -> dict:
    clock = Clock(cfg.budget_s)
    seed_run(0)
    where = placement()
    result: dict = {"label": cfg.label, "complete": False, "config": cfg.model_dump(mode="json"),
                    "machine": machine(where), "variants": [], "batch_sweep": [],
                    "scoring": [], "loader": []}

    def save(section: str) -> None:
        result["elapsed_s"] = round(clock.elapsed(), 1)
        write_json(out, result)
        print(f"[{clock.elapsed():6.1f} s] {section}", flush=True)

    counted = count_flops(cfg.input_size, where.device)
    peak = peak_of(where, cfg)
    result["flops"] = {"input": [3, *cfg.input_size], "train_gflop_per_frame":
                       round(counted["train"] / 1e9, 3), "forward_gflop_per_frame":
                       round(counted["forward"] / 1e9, 3), "counted_by": "FlopCounterMode: "
                       "one sample, forward + backward (train), forward (scoring)"}
    result["peak"] = peak
    save(f"flops: {result['flops']['train_gflop_per_frame']} GFLOP per training frame")
    for variant in VARIANTS:
        base = {"name": variant.name, "batch": cfg.batch}
        chosen = variant_placement(variant, where.device)
        if isinstance(chosen, str):
            row = {**base, "status": "skipped", "reason": chosen}
        elif variant.compiled:
            row = {**base, "status": "pending", "reason": "measured last"}
        else:
            row = skipped(base, clock) or guarded(base, lambda w=chosen: train_rate(
                w, cfg, cfg.batch, counted, peak["flops"]))
        result["variants"].append(row)
        save(f"variant {variant.name}: {row.get('frames_per_s', row['status'])}")
    where = placement()  # the sections below run fedcmr's placement (cuDNN autotuning on)
    if where.device.type == "cuda":
        for batch in cfg.sweep_batches:
            base = {"name": "bf16_cl_cudnn", "batch": batch}
            result["batch_sweep"].append(skipped(base, clock) or guarded(
                base, lambda b=batch: train_rate(placement(), cfg, b, counted, peak["flops"])))
            save(f"batch {batch}: {result['batch_sweep'][-1].get('frames_per_s')}")
    with tempfile.TemporaryDirectory(prefix="fedcmr-gpu-") as tmp:
        frames = synthetic_frames(cfg, Path(tmp))
        harmoniser = data_harmoniser(frames)
        data = FrameDataset(frames, harmoniser, cfg.input_size)
        scored = FrameDataset(frames[:cfg.score_frames], harmoniser, cfg.input_size)
        for base, measure in (
                ({"name": "model alone", "batch": cfg.score_batch},
                 lambda: model_score_rate(where, cfg, counted, peak["flops"])),
                ({"name": "score()", "batch": cfg.score_batch},
                 lambda: score_rate(where, cfg, scored, counted, peak["flops"]))):
            result["scoring"].append(skipped(base, clock) or guarded(base, measure))
            save(f"scoring, {base['name']}: {result['scoring'][-1].get('frames_per_s')}")
        result["loader"] = loader_rows(data, frames, where, cfg, clock)
        save("data path")
        result["end_to_end"] = skipped({"batch": cfg.batch}, clock) or guarded(
            {"batch": cfg.batch}, lambda: end_to_end(data, where, cfg, counted, peak["flops"]))
        save(f"end to end: {result['end_to_end'].get('frames_per_s')}")
    for i, variant in enumerate(VARIANTS):
        if result["variants"][i]["status"] == "pending":
            base = {"name": variant.name, "batch": cfg.batch}
            result["variants"][i] = {**base, "status": "started", "reason": "compiling; a "
                                     "run killed now stopped here"}
            save(f"variant {variant.name}: compiling")
            result["variants"][i] = skipped(base, clock, cfg.compile_min_s) or guarded(
                base, lambda v=variant: train_rate(variant_placement(v, where.device), cfg,
                                                   cfg.batch, counted, peak["flops"], True))
            save(f"variant {variant.name}: {result['variants'][i].get('frames_per_s')}")
    result["max_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    result["summary"] = summary(result)
    result["complete"] = True
    save(f"done: {result['summary']}")
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    preset = parser.add_mutually_exclusive_group()
    preset.add_argument("--smoke", action="store_true", help="tiny input, seconds on CPU")
    preset.add_argument("--cpu-paper", action="store_true",
                        help="the paper's input on CPU: fp32, batch 2, 2 steps")
    parser.add_argument("--budget-s", type=float, help="stop measuring after this long")
    parser.add_argument("--batch", type=int, help="training batch size")
    parser.add_argument("--steps", type=int, help="timed steps per variant")
    parser.add_argument("--peak-tflops", type=float, help="the device's dense bf16 peak")
    parser.add_argument("--out", type=Path, help="result file (default: per preset, "
                        "benchmarks/results/gpu.json for a GPU run)")
    args = parser.parse_args(argv)
    name = "smoke" if args.smoke else "cpu-paper" if args.cpu_paper else "gpu"
    update = {"budget_s": args.budget_s, "batch": args.batch, "steps": args.steps,
              "peak_flops": args.peak_tflops and args.peak_tflops * 1e12}
    cfg = PRESETS[name].model_copy(update={k: v for k, v in update.items() if v})
    if name == "gpu" and not torch.cuda.is_available():
        print("gpu_train: no CUDA device here; measuring the CPU with the GPU preset (use "
              "--cpu-paper or --smoke for CPU-sized runs)", file=sys.stderr)
    run(cfg, args.out or OUT_NAMES[name])
    print(f"written to {args.out or OUT_NAMES[name]}")


if __name__ == "__main__":
    main()

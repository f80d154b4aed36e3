"""Seconds per training and scoring sample of the r3d_18 classifier at each profile's input
size, on this machine's device (bf16 + channels_last_3d on a GPU, fp32 on CPU).

    python benchmarks/train_step_benchmark.py [--profiles quick,paper] [--batch 8] [--steps 3]

Prints a table and writes benchmarks/results/train_step.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from fedcmr.common.atomic import write_json
from fedcmr.common.device import placement
from fedcmr.common.model import build_model, parameter_groups
from fedcmr.common.run_config import PROFILES

RESULTS = Path(__file__).resolve().parent / "results" / "train_step.json"


def measure(profile: str, batch: int, steps: int) -> dict:
    where = placement()
    model, _ = build_model("none", seed=0)
    model = model.to(where.device, memory_format=where.memory_format)
    optimizer = torch.optim.Adam(parameter_groups(model, 0.01, 1e-5))
    x = where.to_device(torch.rand(batch, 3, *PROFILES[profile].input_size))
    y = torch.randint(0, 2, (batch,), device=where.device).float()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with where.autocast():
            loss = F.binary_cross_entropy_with_logits(model(x).squeeze(1).float(), y)
        loss.backward()
        optimizer.step()

    def sync() -> None:
        if where.device.type == "cuda":
            torch.cuda.synchronize()

    model.train()
    step()  # warm-up
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    train = (time.perf_counter() - start) / (steps * batch)
    model.eval()
    with torch.no_grad(), where.autocast():
        model(x)
        sync()
        start = time.perf_counter()
        for _ in range(steps):
            model(x)
        sync()
    score = (time.perf_counter() - start) / (steps * batch)
    peak = (torch.cuda.max_memory_allocated() / 2**20 if where.device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return {"profile": profile, "input": list(PROFILES[profile].input_size), "batch": batch,
            "device": str(where.device), "train_s_per_sample": round(train, 4),
            "score_s_per_sample": round(score, 4), "peak_memory_mib": round(peak, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", default="smoke,quick")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    rows = [measure(p, args.batch, args.steps) for p in args.profiles.split(",")]
    print(f"{'profile':<8} {'input':<14} {'device':<6} {'train s/sample':>15} "
          f"{'score s/sample':>15} {'peak MiB':>9}")
    for r in rows:
        print(f"{r['profile']:<8} {'x'.join(map(str, r['input'])):<14} {r['device']:<6} "
              f"{r['train_s_per_sample']:>15.4f} {r['score_s_per_sample']:>15.4f} "
              f"{r['peak_memory_mib']:>9.0f}")
    write_json(RESULTS, {"machine": platform.processor() or platform.machine(),
                         "cpus": os.cpu_count(), "torch": torch.__version__,
                         "threads": torch.get_num_threads(), "rows": rows})
    print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()

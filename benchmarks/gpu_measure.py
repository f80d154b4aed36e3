"""The measurements of benchmarks/gpu_train.py, one function each: the FLOPs of a frame, the
machine, and the rates of training, scoring and the data path, each timed after warm-up
steps and between device synchronisations, through fedcmr's own train_steps, score and
train_loader."""

from __future__ import annotations

import gc
import itertools
import os
import platform
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict
from torch.utils.flop_counter import FlopCounterMode

from fedcmr.common.device import Placement, compile_model
from fedcmr.common.learning.data import CachedFrame, FrameDataset, load_cache
from fedcmr.common.learning.harmonise import Harmoniser
from fedcmr.common.learning.training import make_optimizer, score, train_loader, train_steps
from fedcmr.common.model import InitInfo, build_model
from fedcmr.common.run_config import PROFILES
from fedcmr.common.seeds import derive_seed

REPO = Path(__file__).resolve().parent.parent
#: Dense bf16 peaks by device name. H200: about 790 TFLOP/s (an 8192^3 bf16 matrix product
#: ran at 769-798 on this workplace's H200s).
PEAKS = {"H200": 790e12}


class BenchConfig(BaseModel):
    """One run's sizes and limits (the defaults: a GPU run)."""

    model_config = ConfigDict(frozen=True)

    label: str = "gpu"
    input_size: tuple[int, int, int] = PROFILES["paper"].input_size
    batch: int = 16
    warmup: int = 5
    steps: int = 20
    #: Batch sizes at which fedcmr's placement is measured besides `batch` (CUDA only).
    sweep_batches: tuple[int, ...] = (8, 32, 64)
    score_batch: int = 32
    score_frames: int = 96
    loader_batches: tuple[int, ...] = (8, 16, 32)
    #: Batches timed per data-path row (after the first, timed apart: it starts workers).
    loader_steps: int = 12
    augment: str = "shape-intensity"
    #: Synthetic cache: this many subjects, ED and ES each.
    cache_subjects: int = 48
    #: A variant's timed steps stop early past this many seconds.
    variant_s: float = 60.0
    #: Past this, what is left is recorded as skipped; compile needs `compile_min_s` left.
    budget_s: float = 400.0
    compile_min_s: float = 120.0
    peak_flops: float | None = None


def count_flops(input_size: tuple[int, int, int], device: torch.device | str = "cpu"
                ) -> dict[str, int]:
    """FLOPs of one frame: a training step's forward and backward, and a forward alone."""
    model, _ = build_model("none", seed=0, quiet=True)
    model = model.to(device).train()
    x = torch.rand(1, 3, *input_size, device=device)
    with FlopCounterMode(display=False) as train:
        F.binary_cross_entropy_with_logits(model(x).squeeze(1), torch.ones(1, device=device)
                                           ).backward()
    with torch.no_grad(), FlopCounterMode(display=False) as forward:
        model.eval()(x)
    return {"train": train.get_total_flops(), "forward": forward.get_total_flops()}


def peak_of(where: Placement, cfg: BenchConfig) -> dict:
    if cfg.peak_flops:
        return {"flops": cfg.peak_flops, "name": "given with --peak-tflops"}
    if where.device.type != "cuda":
        return {"flops": None, "name": "none: CPU (achieved GFLOP/s only)"}
    name = torch.cuda.get_device_name(where.device)
    for key, flops in PEAKS.items():
        if key in name:
            return {"flops": flops, "name": f"{key} dense bf16 ({flops / 1e12:.0f} TFLOP/s)"}
    return {"flops": None, "name": f"unknown for {name}: pass --peak-tflops"}


def machine(where: Placement) -> dict:
    info = {"device": where.device.type, "cpu_cores": os.cpu_count(),
            "torch": torch.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(), "python": platform.python_version(),
            "platform": platform.platform(), "torch_threads": torch.get_num_threads(),
            "loader_workers": where.loader_workers, "pin_memory": where.pin_memory,
            "load_average_1min": round(os.getloadavg()[0], 2)}  # a shared machine's, too
    if where.device.type == "cuda":
        props = torch.cuda.get_device_properties(where.device)
        info.update(name=props.name, memory_gib=round(props.total_memory / 2**30, 1),
                    multiprocessors=props.multi_processor_count,
                    capability=f"{props.major}.{props.minor}",
                    fp32_convs_in_tf32=torch.backends.cudnn.allow_tf32)
    else:
        info.update(name=platform.processor() or platform.machine(), note="cpu, no GPU lent")
    return info


def rate(frames: int, seconds: float, flops_per_frame: int, peak: float | None) -> dict:
    per_s = frames / seconds
    achieved = per_s * flops_per_frame
    return {"frames": frames, "seconds": round(seconds, 4), "frames_per_s": round(per_s, 2),
            "achieved_gflops": round(achieved / 1e9, 1),
            "mfu": None if peak is None else round(achieved / peak, 4)}


def release(where: Placement) -> None:
    gc.collect()
    if where.device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(where.device)


def max_memory_mib(where: Placement) -> float | None:
    if where.device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(where.device) / 2**20, 1)


def _model(where: Placement, compiled: bool = False):
    model, _ = build_model("none", seed=0, quiet=True)
    model = model.to(where.device, memory_format=where.memory_format)
    if compiled:
        compile_model(model, where)
    return model, make_optimizer(model, PROFILES["paper"], InitInfo(source="random", seed=0))


def _random_batch(where: Placement, cfg: BenchConfig, batch: int):
    gen = torch.Generator().manual_seed(derive_seed("gpu_train", batch))
    x = where.to_device(torch.rand(batch, 3, *cfg.input_size, generator=gen))
    return x, (torch.arange(batch) % 2).float().to(where.device)


def _until(batch: tuple, steps: int, deadline: float) -> Iterator[tuple]:
    for _ in range(steps):
        yield batch
        if time.perf_counter() > deadline:
            return


def train_rate(where: Placement, cfg: BenchConfig, batch: int, flops: dict, peak,
               compiled: bool = False) -> dict:
    """The real train_steps on one batch held on the device: compute alone."""
    release(where)
    model, optimizer = _model(where, compiled)
    x, y = _random_batch(where, cfg, batch)
    start = time.perf_counter()
    train_steps(model, optimizer, itertools.repeat((x, y), cfg.warmup), where)
    where.synchronize()
    warmup_s = time.perf_counter() - start
    start = time.perf_counter()
    stats = train_steps(model, optimizer, _until((x, y), cfg.steps, start + cfg.variant_s),
                        where)
    where.synchronize()
    row = rate(stats.n_samples, time.perf_counter() - start, flops["train"], peak)
    return {**row, "steps": stats.n_batches, "warmup_s": round(warmup_s, 2),
            "loss": round(stats.loss, 4), "max_memory_mib": max_memory_mib(where)}


def model_score_rate(where: Placement, cfg: BenchConfig, flops: dict, peak) -> dict:
    """Inference of the model alone, on a batch held on the device."""
    release(where)
    model, _ = _model(where)
    model.eval()
    x, _ = _random_batch(where, cfg, cfg.score_batch)
    with torch.no_grad(), where.autocast():
        for _ in range(cfg.warmup):
            model(x)
        where.synchronize()
        start = time.perf_counter()
        for _ in range(cfg.steps):
            model(x)
        where.synchronize()
    row = rate(cfg.steps * cfg.score_batch, time.perf_counter() - start, flops["forward"],
               peak)
    return {**row, "max_memory_mib": max_memory_mib(where)}


def score_rate(where: Placement, cfg: BenchConfig, data: FrameDataset, flops: dict,
               peak) -> dict:
    """The real score() over `data`, after one warm-up pass (new shapes, workers)."""
    release(where)
    model, _ = _model(where)
    score(model, data, where, cfg.score_batch)
    start = time.perf_counter()
    score(model, data, where, cfg.score_batch)
    return rate(len(data), time.perf_counter() - start, flops["forward"], peak)


def epochs(data: FrameDataset, batch: int, where: Placement) -> Iterator[tuple]:
    """train_loader's batches epoch after epoch, as a training run makes them."""
    generator = torch.Generator().manual_seed(derive_seed("gpu_train", "loader", batch))
    for epoch in itertools.count():
        data.set_epoch(epoch)
        yield from train_loader(data, batch, generator, where)


def loader_rate(data: FrameDataset, batch: int, where: Placement, steps: int) -> dict:
    """Frames/s of train_loader with the copy to the device; the first batch (workers
    starting) timed apart."""
    batches = epochs(data, batch, where)
    start = time.perf_counter()
    where.to_device(next(batches)[0])
    where.synchronize()
    first_s = time.perf_counter() - start
    start, frames = time.perf_counter(), 0
    for _ in range(steps):
        x, y = next(batches)
        where.to_device(x)
        y.to(where.device, non_blocking=True)
        frames += len(y)
    where.synchronize()
    seconds = time.perf_counter() - start
    batches.close()
    return {"first_batch_s": round(first_s, 3), "frames": frames, "seconds": round(seconds, 4),
            "frames_per_s": round(frames / seconds, 2)}


def end_to_end(data: FrameDataset, where: Placement, cfg: BenchConfig, flops: dict,
               peak) -> dict:
    release(where)
    model, optimizer = _model(where)
    batches = epochs(data, cfg.batch, where)
    train_steps(model, optimizer, batches, where, max_steps=cfg.warmup)
    where.synchronize()
    start = time.perf_counter()
    stats = train_steps(model, optimizer, batches, where, max_steps=cfg.steps)
    where.synchronize()
    row = rate(stats.n_samples, time.perf_counter() - start, flops["train"], peak)
    batches.close()
    return {**row, "steps": stats.n_batches, "max_memory_mib": max_memory_mib(where)}


def data_harmoniser(frames: list[CachedFrame]) -> Harmoniser:
    return Harmoniser("structures").fit(frames)


def synthetic_frames(cfg: BenchConfig, folder: Path) -> list[CachedFrame]:
    """A cache of ring frames at the input size (tests/cache_factory.py), read back."""
    sys.path.insert(0, str(REPO / "tests"))
    from cache_factory import write_site_cache

    nor = cfg.cache_subjects // 2
    cache = write_site_cache(folder / "cache", "Alpha", nor, cfg.cache_subjects - nor,
                             shape=cfg.input_size)
    return load_cache([cache])



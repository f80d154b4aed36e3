"""Where and in what precision a model runs, and how its batches reach it.

On CPU: plain fp32, contiguous tensors, batches made in the calling process (the results
every test and recorded run compare against). On CUDA: bf16 autocast (fp32 weights, the head
and the loss in fp32), channels_last_3d, cuDNN autotuning, and batches made by DataLoader
workers into pinned memory, copied without blocking (`CudaSettings`; benchmarks/gpu_train.py
measures each of them).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn


class CudaSettings(BaseModel):
    """What a CUDA placement turns on; a CPU placement uses none of it."""

    model_config = ConfigDict(frozen=True)

    #: cuDNN times its algorithms for each new input shape once and keeps the fastest
    #: (a run's shapes are few: its batch sizes at one input size).
    cudnn_benchmark: bool = True
    #: Batches in page-locked memory, so that the copy to the GPU runs beside the compute.
    pin_memory: bool = True
    #: DataLoader worker processes, at most this many and half the cores: one process makes
    #: 100-260 frames/s at the paper's size, 3 with "shape-intensity" augmentation (shared
    #: 2-core CPU, benchmarks/results/gpu_cpu.json); a GPU trains faster.
    max_loader_workers: int = Field(8, ge=0)

    def loader_workers(self) -> int:
        return min(self.max_loader_workers, (os.cpu_count() or 2) // 2)


CUDA = CudaSettings()


@dataclass(frozen=True)
class Placement:
    device: torch.device
    #: bf16 autocast on GPU (tensor cores, fp32 weights); plain fp32 on CPU.
    autocast_dtype: torch.dtype | None
    #: channels_last_3d suits cuDNN's 3D convolutions on current NVIDIA GPUs.
    memory_format: torch.memory_format
    #: DataLoader options (train_loader, score): the defaults are the CPU path's.
    pin_memory: bool = False
    loader_workers: int = 0

    def autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def to_device(self, x: torch.Tensor) -> torch.Tensor:
        """The copy does not block the host when `x` is pinned (a no-op on CPU)."""
        return x.to(self.device, non_blocking=True, memory_format=self.memory_format)

    def loader_options(self) -> dict:
        return {"pin_memory": self.pin_memory, "num_workers": self.loader_workers}

    def synchronize(self) -> None:
        """Wait for the device's queued work (for timing); nothing to wait for on CPU."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def placement(prefer: str = "auto", cuda: CudaSettings = CUDA) -> Placement:
    """The GPU when there is one (`prefer` "auto" or "cuda"), else the CPU. Making a CUDA
    placement sets cuDNN's autotuning for the process (`cuda.cudnn_benchmark`)."""
    if prefer in ("auto", "cuda") and torch.cuda.is_available():
        torch.backends.cudnn.benchmark = cuda.cudnn_benchmark
        return Placement(torch.device("cuda"), torch.bfloat16, torch.channels_last_3d,
                         pin_memory=cuda.pin_memory, loader_workers=cuda.loader_workers())
    return Placement(torch.device("cpu"), None, torch.contiguous_format)


def compile_model(model: nn.Module, where: Placement, mode: str | None = None) -> nn.Module:
    """Opt-in: `model` compiled in place by torch.compile (Inductor), for CUDA placements
    only (on CPU the model is returned as it is: the CPU path stays the reference). In place
    (`nn.Module.compile`), so the state dict keeps its keys. The first step compiles
    (minutes); nothing calls this by default until a GPU run shows it pays
    (benchmarks/gpu_train.py, variant "bf16_cl_cudnn_compile")."""
    if where.device.type == "cuda":
        model.compile(mode=mode)
    return model

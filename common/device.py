"""Where and in what precision a model runs, and per-run seeding."""

from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Placement:
    device: torch.device
    #: bf16 autocast on GPU (tensor cores, fp32 weights); plain fp32 on CPU.
    autocast_dtype: torch.dtype | None
    #: channels_last_3d suits cuDNN's 3D convolutions on current NVIDIA GPUs.
    memory_format: torch.memory_format

    def autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def to_device(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.device, non_blocking=True, memory_format=self.memory_format)


def placement(prefer: str = "auto") -> Placement:
    if prefer in ("auto", "cuda") and torch.cuda.is_available():
        return Placement(torch.device("cuda"), torch.bfloat16, torch.channels_last_3d)
    return Placement(torch.device("cpu"), None, torch.contiguous_format)


def seed_run(seed: int) -> torch.Generator:
    """Seed every RNG from the run's seed (not the process's history), and return a
    generator for data order."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator

"""Where and in what precision a model runs."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

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

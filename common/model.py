"""The classifier: torchvision's r3d_18 with a one-logit head (33,166,785 parameters).

Input layout: (batch, 3, depth, height, width) = (B, C, z, y, x). torchvision's video
networks read (B, C, T, H, W); the short-axis slice axis takes the place of time. The stem
keeps that axis at full resolution (stride 1), so a 10-slice slab is not halved at once,
and the Kinetics filters' spatial 7x7 kernels meet the in-plane anatomy they were made for.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from pydantic import BaseModel
from torch import nn
from torchvision.models.video import R3D_18_Weights, r3d_18

log = logging.getLogger(__name__)

HEAD = "fc"
#: The missing-weights warning is said once per process (every run records it anyway).
_warned: list[bool] = []


class InitInfo(BaseModel):
    """How the network was initialised; goes into every run's metadata."""

    source: str  # "kinetics400", "file:<path>" or "random"
    seed: int
    warning: str = ""


class Fp32Linear(nn.Linear):
    """A Linear that runs in float32 under autocast, on a float32 input: the logits keep
    fp32 precision (bf16 has an 8-bit significand: logits from 16 up would come in steps
    of 0.125, tying scores the AUC should rank). A subclass, not a wrapper, so that the
    state dict keys stay `fc.weight` and `fc.bias`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return F.linear(x.float(), self.weight.float(), None if self.bias is None
                            else self.bias.float())


def _kinetics_file() -> Path:
    url = R3D_18_Weights.KINETICS400_V1.url
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


def _load_body(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    body = {k: v for k, v in state.items() if not k.startswith(HEAD + ".")}
    missing, unexpected = model.load_state_dict(body, strict=False)
    missing = [k for k in missing if not k.startswith(HEAD + ".")]
    if missing or unexpected:
        raise ValueError(f"pretrained weights do not fit r3d_18: missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]}")


def build_model(pretrained: str = "auto", seed: int = 0, quiet: bool = False
                ) -> tuple[nn.Module, InitInfo]:
    """r3d_18 + Linear(512, 1), the head in fp32 under autocast (Fp32Linear). Never
    downloads: "auto" uses torchvision's cached Kinetics file when present; "none" or a
    missing file means a seeded random init, said loudly (`quiet` when the weights are
    about to be replaced by received ones)."""
    torch.manual_seed(seed)
    model = r3d_18(weights=None)
    model.fc = Fp32Linear(model.fc.in_features, 1)
    if pretrained not in ("auto", "none"):
        path = Path(pretrained)
        if not path.is_file():
            raise FileNotFoundError(f"--pretrained {path}: no such file. Fix: copy the r3d_18 "
                                    "Kinetics-400 state dict there, or use 'auto'/'none'")
        _load_body(model, torch.load(path, map_location="cpu", weights_only=True))
        return model, InitInfo(source=f"file:{path}", seed=seed)
    cached = _kinetics_file()
    if pretrained == "auto" and cached.is_file():
        _load_body(model, torch.load(cached, map_location="cpu", weights_only=True))
        return model, InitInfo(source="kinetics400", seed=seed)
    warning = ("NO PRETRAINED WEIGHTS: r3d_18 starts from a seeded random initialisation "
               f"(seed {seed}); the paper used Kinetics-400. Put the weights at {cached} or "
               "pass --pretrained PATH.")
    if not quiet and not _warned:
        log.warning(warning)
        _warned.append(True)
    return model, InitInfo(source="random", seed=seed, warning=warning)


def parameter_groups(model: nn.Module, lr_head: float, lr_body: float) -> list[dict]:
    """The new head learns fast, the (pretrained) body slowly."""
    head = [p for n, p in model.named_parameters() if n.startswith(HEAD + ".")]
    body = [p for n, p in model.named_parameters() if not n.startswith(HEAD + ".")]
    return [{"params": head, "lr": lr_head, "name": "head"},
            {"params": body, "lr": lr_body, "name": "body"}]


"""The GPU path of training (common/device.py, common/learning/training.py) leaves the CPU
path bit for bit as a plain fp32 loop computes it, keeps the loss in fp32 under bf16
autocast, and benchmarks/gpu_train.py measures every variant (CUDA-only ones recorded as
skipped on CPU, with the reason)."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from cache_factory import write_site_cache
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.data import DataLoader

from fedcmr.common.device import Placement, compile_model, placement
from fedcmr.common.learning.data import FrameDataset, load_cache
from fedcmr.common.learning.harmonise import Harmoniser
from fedcmr.common.learning.training import make_optimizer, score, train_loader, train_steps
from fedcmr.common.model import InitInfo, build_model
from fedcmr.common.run_config import PROFILES

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
SIZE = (4, 24, 24)


@pytest.fixture(scope="module")
def frames_data(tmp_path_factory) -> FrameDataset:
    cache = write_site_cache(tmp_path_factory.mktemp("gpu_path") / "c", "Alpha", 3, 3,
                             shape=SIZE)
    frames = load_cache([cache])
    return FrameDataset(frames, Harmoniser("structures").fit(frames), SIZE, "none", seed=0)


def _model_and_optimizer():
    model, init = build_model("none", seed=3, quiet=True)
    return model, make_optimizer(model, PROFILES["smoke"], init)


def test_cpu_training_is_bit_identical_to_a_plain_fp32_loop(frames_data):
    model, optimizer = _model_and_optimizer()
    ref_model = copy.deepcopy(model)
    ref_optimizer = make_optimizer(ref_model, PROFILES["smoke"],
                                   InitInfo(source="random", seed=3))
    stats = train_steps(model, optimizer, iter(train_loader(
        frames_data, 5, torch.Generator().manual_seed(7))), placement("cpu"))

    # the loop as it was before the GPU path: plain DataLoader, .item() per step
    ref_model.train()
    for module in ref_model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.momentum = None
            module.reset_running_stats()
    total, n = 0.0, 0
    for x, y in DataLoader(frames_data, batch_size=5, shuffle=True,
                           generator=torch.Generator().manual_seed(7)):
        ref_optimizer.zero_grad(set_to_none=True)
        loss = F.binary_cross_entropy_with_logits(ref_model(x).squeeze(1), y)
        loss.backward()
        ref_optimizer.step()
        total += loss.item() * len(y)
        n += len(y)

    assert stats.n_batches == 3 and stats.n_samples == n == 12
    assert stats.loss == total / n  # exactly, not approximately
    ours, ref = model.state_dict(), ref_model.state_dict()
    assert ours.keys() == ref.keys()
    changed = [k for k in ours if not torch.equal(ours[k], ref[k])]
    assert not changed, f"CPU training changed bits in {changed[:3]}"
    assert not torch.equal(ours["fc.weight"], _model_and_optimizer()[0].state_dict()[
        "fc.weight"])  # it did train


def test_cpu_scoring_is_bit_identical_to_a_plain_loop(frames_data):
    model, _ = _model_and_optimizer()
    scores = score(model, frames_data, placement("cpu"), batch_size=4)
    model.eval()
    logits, labels, total = [], [], 0.0
    with torch.no_grad():
        for x, y in DataLoader(frames_data, batch_size=4):
            out = model(x).squeeze(1).float()
            total += float(F.binary_cross_entropy_with_logits(out, y, reduction="sum"))
            logits.append(out)
            labels.append(y)
    expected = torch.sigmoid(torch.cat(logits).double()).numpy()
    assert (scores.scores == expected).all()
    assert scores.loss == total / len(expected)
    assert (scores.labels == torch.cat(labels).numpy().astype(int)).all()


class _LossDtypes(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.seen: list[list[torch.dtype]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket is torch.ops.aten.binary_cross_entropy_with_logits:
            self.seen.append([a.dtype for a in args if isinstance(a, torch.Tensor)])
        return func(*args, **(kwargs or {}))


def test_the_loss_is_fp32_when_the_model_runs_in_bf16():
    """A plain Linear under bf16 autocast gives bf16 logits; the loss still sees fp32."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 2 * 3 * 3, 1))
    bf16_cpu = Placement(torch.device("cpu"), torch.bfloat16, torch.contiguous_format)
    with bf16_cpu.autocast():
        assert model(torch.randn(2, 3, 2, 3, 3)).dtype == torch.bfloat16
    batches = [(torch.randn(4, 3, 2, 3, 3), torch.tensor([0.0, 1.0, 1.0, 0.0]))] * 2
    recorder = _LossDtypes()
    with recorder:
        stats = train_steps(model, torch.optim.SGD(model.parameters(), lr=0.1), iter(batches),
                            bf16_cpu)
    assert recorder.seen == [[torch.float32, torch.float32]] * 2
    assert stats.n_batches == 2 and stats.loss > 0


def test_the_cpu_placement_keeps_the_plain_data_path_and_model(frames_data):
    before = torch.backends.cudnn.benchmark
    where = placement("cpu")
    assert torch.backends.cudnn.benchmark == before  # only a CUDA placement sets it
    assert where.loader_options() == {"pin_memory": False, "num_workers": 0}
    loader = train_loader(frames_data, 4, torch.Generator(), where)
    assert loader.num_workers == 0 and not loader.pin_memory
    model = nn.Linear(2, 1)
    assert compile_model(model, where) is model
    assert getattr(model, "_compiled_call_impl", None) is None  # not compiled on CPU


@pytest.fixture(scope="module")
def gpu_measure():
    sys.path.insert(0, str(BENCHMARKS))
    import gpu_measure

    return gpu_measure


def test_the_flop_count_is_positive_and_scales_with_the_input(gpu_measure):
    small = gpu_measure.count_flops((4, 32, 32))
    wider = gpu_measure.count_flops((4, 64, 64))
    deeper = gpu_measure.count_flops((8, 32, 32))
    assert small["forward"] > 0
    assert 2.5 < small["train"] / small["forward"] < 3.0  # backward ~ twice the forward
    assert wider["train"] / small["train"] == pytest.approx(4.0, rel=0.01)  # 2 x 2 in-plane
    # depth: the deepest layers already stride down to one slice, so a little under 2
    assert 1.6 < deeper["train"] / small["train"] < 2.0


def test_the_smoke_benchmark_measures_every_variant(tmp_path):
    out = tmp_path / "gpu.json"
    done = subprocess.run([sys.executable, str(BENCHMARKS / "gpu_train.py"), "--smoke",
                           "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    sys.path.insert(0, str(BENCHMARKS))
    from gpu_train import VARIANTS

    assert result["complete"] and result["label"] == "smoke"
    assert result["flops"]["train_gflop_per_frame"] > result["flops"][
        "forward_gflop_per_frame"] > 0
    rows = {r["name"]: r for r in result["variants"]}
    assert list(rows) == [v.name for v in VARIANTS]
    on_cuda = torch.cuda.is_available()
    for name, row in rows.items():
        if on_cuda and name.endswith("compile"):  # a failed compile is recorded, not raised
            assert row["status"] in ("ok", "error"), row
        elif on_cuda or name == "fp32":
            assert row["status"] == "ok" and row["frames_per_s"] > 0, row
            assert row["achieved_gflops"] > 0
        else:
            assert row["status"] == "skipped" and row["reason"].startswith("CUDA only"), row
    assert [r["name"] for r in result["scoring"]] == ["model alone", "score()"]
    assert all(r["status"] == "ok" and r["frames_per_s"] > 0 for r in result["scoring"])
    plain = [r for r in result["loader"] if r["augment"] == "none"]
    assert {r["batch"] for r in plain} == {8, 16, 32}
    assert all(r["status"] == "ok" and r["frames_per_s"] > 0 for r in plain)
    assert result["end_to_end"]["status"] == "ok"
    assert result["end_to_end"]["frames_per_s"] > 0
    assert result["machine"]["device"] == ("cuda" if on_cuda else "cpu")
    if not on_cuda:  # no peak to divide by: achieved GFLOP/s only
        assert result["peak"]["flops"] is None and result["summary"]["best_mfu"] is None

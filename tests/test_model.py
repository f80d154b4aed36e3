"""The classifier: parameter count, learning-rate groups, initialisation without downloads,
the head in fp32 under autocast."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn
from torchvision.models.video import r3d_18

from fedcmr.common import model as model_mod
from fedcmr.common.model import build_model, parameter_groups


@pytest.fixture(autouse=True)
def _no_hub(tmp_path, monkeypatch):
    """An empty torch hub: nothing cached, and any download attempt fails the test."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def refuse(*args, **kwargs):
        raise AssertionError("a test tried to download weights")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)


def test_r3d18_with_one_logit_head_has_the_papers_parameter_count():
    model, _ = build_model("none")
    assert sum(p.numel() for p in model.parameters()) == 33_166_785
    assert model.fc.out_features == 1


def test_two_learning_rate_groups_cover_every_parameter_once():
    model, _ = build_model("none")
    groups = parameter_groups(model, lr_head=0.01, lr_body=1e-5)
    assert [g["lr"] for g in groups] == [0.01, 1e-5]
    assert sum(p.numel() for p in groups[0]["params"]) == 513
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))


def test_without_weights_the_init_is_seeded_random_and_says_so(caplog, monkeypatch):
    monkeypatch.setattr(model_mod, "_warned", [])  # said once per process
    with caplog.at_level(logging.WARNING):
        a, info = build_model("auto", seed=3)
    b, _ = build_model("none", seed=3)
    c, _ = build_model("none", seed=4)
    assert info.source == "random" and "NO PRETRAINED WEIGHTS" in info.warning
    assert "NO PRETRAINED WEIGHTS" in caplog.text
    assert torch.equal(a.stem[0].weight, b.stem[0].weight)
    assert not torch.equal(a.stem[0].weight, c.stem[0].weight)


def test_weights_from_a_file_and_from_the_torchvision_cache(tmp_path, monkeypatch):
    donor, _ = build_model("none", seed=9)
    path = tmp_path / "r3d18_kinetics.pth"
    torch.save(donor.state_dict(), path)
    loaded, info = build_model(str(path), seed=1)
    assert info.source.startswith("file:")
    assert torch.equal(loaded.layer4[0].conv1[0].weight, donor.layer4[0].conv1[0].weight)
    cached = model_mod._kinetics_file()
    cached.parent.mkdir(parents=True)
    torch.save(donor.state_dict(), cached)
    auto, info = build_model("auto", seed=1)
    assert info.source == "kinetics400" and not info.warning
    assert torch.equal(auto.stem[0].weight, donor.stem[0].weight)


def test_a_missing_weights_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        build_model(str(tmp_path / "absent.pth"))


def test_input_layout_batch_channels_depth_height_width():
    model, _ = build_model("none")
    model.eval()
    with torch.no_grad():
        out = model(torch.zeros(2, 3, 4, 24, 24))
    assert out.shape == (2, 1)


def test_the_head_keeps_fp32_under_bf16_autocast_and_the_state_dict_keys():
    model, _ = build_model("none")
    model.eval()
    x = torch.randn(2, 3, 4, 24, 24)
    features = torch.randn(2, 512).bfloat16()  # what the body hands the head under autocast
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
        head = model.fc(features)
        plain = nn.Linear(512, 1)(features.float())  # what autocast makes of a plain Linear
    assert out.dtype == head.dtype == torch.float32 and plain.dtype == torch.bfloat16
    fp32 = features.float() @ model.fc.weight.T + model.fc.bias  # bf16 would be off by ~1e-3
    assert torch.allclose(head, fp32, rtol=0, atol=1e-5)
    # the keys the federation exchanges are torchvision's, fc.weight and fc.bias among them
    reference = r3d_18(weights=None)
    reference.fc = nn.Linear(512, 1)
    assert list(model.state_dict()) == list(reference.state_dict())
    assert isinstance(model.fc, nn.Linear)

"""Settings cross from the CLI to the ServerApp as a `--run-config` string; the pydantic
models are the only source of their defaults."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from flwr.common.config import parse_config_args

from fedcmr.cli import build_parser
from fedcmr.common.run_config import RunConfig
from fedcmr.server.commands import settings_from_args
from fedcmr.server.settings import FederationSettings
from fedcmr.support.cli_options import run_config_from_args

REPO = Path(__file__).resolve().parent.parent


def pyproject_config() -> dict:
    text = (REPO / "pyproject.toml").read_text()
    return tomllib.loads(text)["tool"]["flwr"]["app"]["config"]


def test_settings_survive_the_run_config_round_trip_through_flowers_parser():
    run = RunConfig(protocol="lco", folds=(1, 3), seed=4, split_seed=2, prior="masked",
                    augment="shape-intensity", phases=("ED",), profile="smoke", epochs=3,
                    pretrained="/weights/r3d 18.pth", min_subjects=7,
                    update_encoding="fp16-delta")
    settings = FederationSettings(strategy="tempered", vote_alpha=0.25,
                                  out_dir=Path("/runs/a b/c'd"), round_timeout=60.0,
                                  sites=3, min_sites=3, wait_sites_timeout=30.0,
                                  rejoin_timeout=5.0, resume=True,
                                  sim_sites="/runs/a b/simulated_nodes.json", run=run)
    parsed = parse_config_args([settings.to_run_config_text()])
    assert FederationSettings.from_flat(parsed) == settings


def test_pyproject_declares_exactly_the_models_defaults():
    """Flower reads defaults from pyproject's table and rejects undeclared keys: the table
    must equal the models' defaults, key for key and value for value."""
    assert pyproject_config() == FederationSettings().to_flat()
    assert FederationSettings.from_flat(pyproject_config()) == FederationSettings()


@pytest.mark.parametrize("command", [["centralized", "--cache", "c"], ["federate", "--cache", "c"],
                                     ["server", "--sites", "3"]])
def test_the_command_line_defaults_are_the_models(command):
    args = build_parser().parse_args([*command, "--out", "run"])
    if command[0] == "centralized":
        assert run_config_from_args(args, []) == RunConfig()
        return
    settings = settings_from_args(args, [])
    expected = FederationSettings(out_dir=Path("run"))
    if command[0] == "server":  # `server` requires --sites
        expected = expected.model_copy(update={"sites": 3})
    assert settings == expected


def test_the_command_lines_choices_are_the_models():
    from typing import get_args

    from fedcmr.common.models import registry
    from fedcmr.common.run_config import (
        Augment,
        Prior,
        ProfileName,
        Protocol,
        UpdateEncoding,
    )
    from fedcmr.server.settings import Strategy

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices["server"]
    choices = {a.dest: tuple(a.choices) for a in sub._actions if a.choices}
    assert choices == {"model": tuple(registry.names()), "protocol": get_args(Protocol),
                       "prior": get_args(Prior),
                       "augment": get_args(Augment), "profile": get_args(ProfileName),
                       "update_encoding": get_args(UpdateEncoding),
                       "strategy": get_args(Strategy)}


def test_fixed_strategies_fix_their_exponent():
    assert FederationSettings(strategy="equal-vote", vote_alpha=0.7).vote_alpha == 0.0
    assert FederationSettings.from_flat({"strategy": "equal-vote"}).vote_alpha == 0.0
    assert FederationSettings(strategy="tempered", vote_alpha=0.7).vote_alpha == 0.7


def test_epochs_override_the_profile():
    assert RunConfig(profile="quick").hyper.max_epochs == 12
    short = RunConfig(profile="quick", epochs=8).hyper
    assert (short.max_epochs, short.patience) == (8, 8)
    assert RunConfig(profile="paper", epochs=30).hyper.patience == 10

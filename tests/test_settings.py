"""Federation settings cross from the CLI to the ServerApp as a `--run-config` string."""

from __future__ import annotations

import tomllib
from pathlib import Path

from flwr.common.config import parse_config_args

from fedcmr.common.run_config import RunConfig
from fedcmr.server.settings import FederationSettings, to_run_config_text

REPO = Path(__file__).resolve().parent.parent


def test_settings_survive_the_run_config_round_trip_through_flowers_parser():
    run = RunConfig(protocol="lco", folds=(1, 3), seed=4, split_seed=2, prior="masked",
                    augment="shape-intensity", phases=("ED",), profile="smoke", epochs=3,
                    pretrained="/weights/r3d 18.pth", min_subjects=7)
    settings = FederationSettings(strategy="tempered", vote_alpha=0.25,
                                  out_dir=Path("/runs/a b/c'd"), round_timeout=60.0,
                                  min_sites=3, wait_sites_timeout=30.0,
                                  sim_sites="/runs/a b/simulated_nodes.json", run=run)
    parsed = parse_config_args([to_run_config_text(settings)])
    assert FederationSettings.from_run_config(parsed) == settings


def test_every_key_we_send_is_declared_in_pyproject():
    """Flower rejects a run whose --run-config names an undeclared key."""
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    sent = parse_config_args([to_run_config_text(FederationSettings())])
    assert set(sent) == set(declared)
    assert FederationSettings.from_run_config(declared).run == RunConfig(
        profile="quick", min_subjects=5)


def test_epochs_override_the_profile():
    assert RunConfig(profile="quick").hyper.max_epochs == 12
    short = RunConfig(profile="quick", epochs=8).hyper
    assert (short.max_epochs, short.patience) == (8, 8)
    assert RunConfig(profile="paper", epochs=30).hyper.patience == 10

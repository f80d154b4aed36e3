"""Shared fixtures. Real ACDC subjects come from $FEDCMR_ACDC_SAMPLE (set by .ci/run)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ACDC_ENV = "FEDCMR_ACDC_SAMPLE"


@pytest.fixture(scope="session")
def acdc_sample() -> Path:
    value = os.environ.get(ACDC_ENV)
    if not value:
        pytest.skip(f"real ACDC sample not available: set {ACDC_ENV} to the acdc-sample folder "
                    "(.ci/run sets it to ../shared/data/acdc-sample)")
    path = Path(value)
    if not path.is_dir():
        pytest.skip(f"{ACDC_ENV}={value} is not a folder")
    return path


@pytest.fixture(autouse=True)
def _quiet_flower(monkeypatch):
    monkeypatch.setenv("FLWR_TELEMETRY_ENABLED", "0")
    monkeypatch.setenv("FLWR_DISABLE_UPDATE_CHECK", "1")

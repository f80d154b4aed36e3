"""Shared fixtures. Real ACDC subjects come from $FEDCMR_ACDC_SAMPLE (set by .ci/run)."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

ACDC_ENV = "FEDCMR_ACDC_SAMPLE"


@pytest.fixture(scope="session")
def acdc_sample() -> Path:
    """The four real ACDC subjects. Skipped with the reason where they are not set up; on CI
    (CI=true, where .ci/run sets the variable) a missing sample fails instead, so that a
    moved folder cannot silently turn the real-data tests into skips."""
    value = os.environ.get(ACDC_ENV)
    problem = None
    if not value:
        problem = (f"real ACDC sample not available: set {ACDC_ENV} to the acdc-sample folder "
                   "(.ci/run sets it to ../shared/data/acdc-sample)")
    elif not (Path(value) / "training").is_dir():
        problem = f"{ACDC_ENV}={value} is not an ACDC sample folder (no training/ in it)"
    if problem and os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"on CI: {problem}")
    if problem:
        pytest.skip(problem)
    return Path(value)


#: The release policy of the tests' small sites (the file says why), for every hospital the
#: tests start, in process or as a `fedcmr client` (set before any test module builds its
#: environment); a test of the defaults passes its own.
SMALL_SITE_POLICY = Path(__file__).parent.parent / "deploy" / "synthetic-site-policy.toml"
os.environ["FEDCMR_SITE_POLICY"] = str(SMALL_SITE_POLICY)
#: Every `fedcmr client` the tests start keeps its site state (the release ledger) under a
#: folder of this session, never in the home folder of the machine that runs them.
#: Removed when the session's process exits (800 of them had piled up in /tmp).
os.environ["FEDCMR_SITE_STATE"] = tempfile.mkdtemp(prefix="fedcmr-site-state-")
atexit.register(shutil.rmtree, os.environ["FEDCMR_SITE_STATE"], ignore_errors=True)


@pytest.fixture(autouse=True)
def _quiet_flower(monkeypatch):
    monkeypatch.setenv("FLWR_TELEMETRY_ENABLED", "0")
    monkeypatch.setenv("FLWR_DISABLE_UPDATE_CHECK", "1")


def small_site(root: Path):
    """Site Alpha over a cache of 8 NOR and 8 HCM ring frames, under the synthetic sites'
    release policy (test_site_work.py, test_update_codec.py)."""
    from cache_factory import write_site_cache

    from fedcmr.client.site import work as site_work
    from fedcmr.client.site.policy import SitePolicy

    write_site_cache(root / "cache", "Alpha", 8, 8)
    return site_work.Site.open("Alpha", [root / "cache"], root / "out",
                               SitePolicy.load(SMALL_SITE_POLICY))

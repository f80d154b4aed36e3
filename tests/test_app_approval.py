"""Only approved code runs at a hospital: a SuperNode started by fedcmr runs an app bundle
only when its sha256 is the one the site's own installation builds or one its policy lists
(client/site/app_approval.py). A coordinator's modified bundle is refused before any of its code
runs, and the coordinator gets Flower's verification error reply."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tomllib
import types
from pathlib import Path

import pytest
from cache_factory import write_site_cache
from flwr.cli.build import build_fab_from_disk
from flwr.supercore.fab import Fab
from process_tools import hospital, kill_tree, our_processes, wait_for

from fedcmr.client.site.app_approval import REFUSED, approval_problem, install_approval
from fedcmr.common.app_bundle import app_dir, bundle_digest
from fedcmr.server.flwr_cli import CONNECTION
from fedcmr.server.settings import FederationSettings
from fedcmr.server.superlink import Coordinator

LOG = logging.getLogger("fedcmr.test")
#: Flower's bundle build uses pathspec's deprecated pattern name (flwr 1.42).
pytestmark = pytest.mark.filterwarnings("ignore:GitWildMatchPattern:DeprecationWarning")


def test_the_installed_bundle_is_approved_and_other_content_refused():
    fab = build_fab_from_disk(app_dir())
    own = bundle_digest()
    assert own == hashlib.sha256(fab).hexdigest() == bundle_digest()  # deterministic
    assert approval_problem(fab, {own}) is None
    other = fab + b"\0"
    problem = approval_problem(other, {own})
    assert problem is not None and "\n" not in problem
    assert f"sha256 {hashlib.sha256(other).hexdigest()[:12]}" in problem
    assert "approved_bundles" in problem and "deploy/approve_bundle.sh" in problem


def fake_loop(fab: Fab) -> tuple[types.ModuleType, list[tuple[Fab, dict]]]:
    """A module whose `_pull_and_store_message` does what Flower 1.42's does with the FAB:
    fetches it, then checks `trusted_entities` (recorded with the FAB it got)."""
    calls: list[tuple[Fab, dict]] = []

    def pull_and_store_message(*, get_fab, trusted_entities, receive):
        got = get_fab(fab.hash_str, receive())
        calls.append((got, dict(trusted_entities or {})))
        return 1

    return types.SimpleNamespace(_pull_and_store_message=pull_and_store_message), calls


def test_the_patched_loop_lets_approved_bundles_through_and_makes_flower_refuse_others(
        caplog):
    good = Fab("h1", b"approved", {"valid_license": "yes"})
    evil = Fab("h2", b"evil", {"valid_license": "yes"})
    loop, calls = fake_loop(good)
    install_approval(loop, {hashlib.sha256(b"approved").hexdigest()}, LOG)
    loop._pull_and_store_message(get_fab=lambda h, r: good, trusted_entities=None,
                                 receive=lambda: 1)
    assert calls[-1] == (good, {})  # unchanged, and Flower does not check
    loop._pull_and_store_message(get_fab=lambda h, r: evil, trusted_entities={"me": "key"},
                                 receive=lambda: 1)
    fab, entities = calls[-1]
    assert fab.content == evil.content and fab.verifications == {}  # Flower refuses it
    assert "me" in entities and len(entities) == 2  # the site's own entities are kept
    assert REFUSED in caplog.text
    loop._pull_and_store_message(get_fab=lambda h, r: good, trusted_entities=None,
                                 receive=lambda: 1)
    assert calls[-1] == (good, {})  # a refusal does not stick to the next run


def test_a_flower_without_the_expected_loop_is_refused():
    loop = types.SimpleNamespace(_pull_and_store_message=lambda state, get_fab: None)
    with pytest.raises(RuntimeError, match="no longer takes get_fab and trusted_entities.*Fix"):
        install_approval(loop, set(), LOG)


def evil_bundle(folder: Path, marker: Path) -> Path:
    """The installed app's bundle files with the ClientApp swapped for code that leaves
    `marker` behind when it is imported."""
    pyproject = (app_dir() / "pyproject.toml").read_text()
    included = tomllib.loads(pyproject)["tool"]["flwr"]["app"]["fab-include"]
    for top in sorted({pattern.split("/")[0] for pattern in included}):
        shutil.copytree(app_dir() / top, folder / top,
                        ignore=shutil.ignore_patterns("__pycache__"))
    evil = (pyproject.replace('clientapp = "fedcmr.client.site.client_app:app"',
                              'clientapp = "evil_app:app"')
            .replace("fab-include = [", 'fab-include = ["evil_app.py", '))
    assert 'clientapp = "evil_app:app"' in evil and '"evil_app.py"' in evil
    (folder / "pyproject.toml").write_text(evil)
    (folder / "evil_app.py").write_text(
        "from pathlib import Path\n\nfrom flwr.clientapp import ClientApp\n\n"
        f"Path({str(marker)!r}).write_text('the coordinator code ran at the site')\n"
        "app = ClientApp()\n")
    return folder


@pytest.mark.slow
def test_a_modified_bundle_is_refused_at_the_site_before_its_code_runs(tmp_path):
    marker = tmp_path / "evil-ran"
    evil = evil_bundle(tmp_path / "evil", marker)
    digest = bundle_digest(evil)
    log = tmp_path / "client.log"
    coordinator = Coordinator(tmp_path / "coordinator")
    proc = None
    try:
        coordinator.start()
        cache = write_site_cache(tmp_path / "cache", "Alpha", 3, 3)
        proc = hospital("Alpha", cache, f"127.0.0.1:{coordinator.port}", tmp_path / "site",
                        "--max-wait-time", "30", log=log)
        wait_for(lambda: "connected to the coordinator" in log.read_text(), 60,
                 "the client to connect", proc)
        settings = FederationSettings(sites=1, min_sites=1, wait_sites_timeout=30,
                                      round_timeout=20, out_dir=tmp_path / "run")
        result = coordinator.cli("run", str(evil), CONNECTION, "--run-config",
                                 settings.to_run_config_text(), "--format", "json",
                                 check=True)
        run_id = str(json.loads(result.stdout[result.stdout.index("{"):])["run-id"])
        wait_for(lambda: REFUSED in log.read_text(), 60, "the site to refuse the bundle",
                 proc)
        refused = [line for line in log.read_text().splitlines() if REFUSED in line]
        assert f"sha256 {digest[:12]}" in refused[0], refused
        # the coordinator's ServerApp gets the node's verification error as its reply
        wait_for(lambda: "The FAB could not be verified" in coordinator.cli.logs(run_id),
                 60, "the ServerApp to log the node's error reply")
        assert not marker.exists()
    finally:
        if proc is not None and proc.poll() is None:
            kill_tree(proc.pid)
            proc.wait()
        coordinator.stop()
    assert not marker.exists(), log.read_text()[-3000:]
    assert our_processes(tmp_path) == []


def test_approve_bundle_prints_the_digest_and_the_policy_line(tmp_path):
    fab = tmp_path / "some.fab"
    fab.write_bytes(b"a bundle")
    script = str(app_dir() / "deploy" / "approve_bundle.sh")
    env = {**os.environ, "PYTHON": sys.executable}
    for args, digest in (([str(fab)], hashlib.sha256(b"a bundle").hexdigest()),
                         ([], bundle_digest())):  # default: the installed app's folder
        out = subprocess.run([script, *args], capture_output=True, text=True, check=True,
                             env=env).stdout
        assert f'approved_bundles = ["{digest}"]' in out, out

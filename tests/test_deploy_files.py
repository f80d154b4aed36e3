"""The compose files and certificates: valid, each hospital sees only its own data."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from fedcmr.server.security import security_from_dir

REPO = Path(__file__).resolve().parent.parent
HOSPITALS = ("vall-d-hebron", "sagrada-familia", "santpau", "acdc")


def _interpolate(value):
    """Compose's ${NAME:-default} with no variable set: the default."""
    if isinstance(value, str):
        return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)
    if isinstance(value, dict):
        return {k: _interpolate(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v) for v in value]
    return value


def _merge(base, override):
    """Compose's file merge: mappings merge key by key, lists add up, scalars replace."""
    if isinstance(base, dict) and isinstance(override, dict):
        return {**base, **{k: _merge(base[k], v) if k in base else v
                           for k, v in override.items()}}
    if isinstance(base, list) and isinstance(override, list):
        return base + [v for v in override if v not in base]
    return override


def compose_config(*files: str) -> dict:
    """The compose files merged, read with PyYAML (anchors and merge keys included), so the
    checks run without a docker-compose binary; where one is installed (always on CI: .ci/run
    installs it with the engine), it must also accept the files."""
    import yaml

    config: dict = {}
    for name in files:
        config = _merge(config, yaml.safe_load((REPO / name).read_text()))
    exe = shutil.which("docker-compose")
    if exe is None and os.environ.get("CI"):
        pytest.fail("on CI docker-compose must be installed (deploy/docker_engine.sh does it)")
    if exe is not None:
        args = [exe, *(a for name in files for a in ("-f", str(REPO / name))), "config", "-q"]
        out = subprocess.run(args, capture_output=True, text=True, cwd=REPO)
        assert out.returncode == 0, out.stderr
    return _interpolate(config)


def run_coordinator_script(env: dict, tmp: Path) -> subprocess.CompletedProcess:
    """deploy/coordinator.sh as the container runs it, with `fedcmr` on PATH a program that
    prints the arguments it was given, one per line, instead of serving."""
    shim = tmp / "bin"
    shim.mkdir(exist_ok=True)
    (shim / "fedcmr").write_text('#!/bin/sh\nfor a in "$@"; do echo "$a"; done\n')
    (shim / "fedcmr").chmod(0o755)
    return subprocess.run(["sh", str(REPO / "deploy" / "coordinator.sh")], capture_output=True,
                          text=True, env={"PATH": f"{shim}:/usr/bin:/bin", **env})


def coordinator_args(environment: dict) -> list[str]:
    """The `fedcmr server` arguments deploy/coordinator.sh builds from the compose
    environment (None values, as PyYAML reads an empty one, are empty)."""
    import tempfile

    env = {k: "" if v is None else str(v) for k, v in environment.items()}
    with tempfile.TemporaryDirectory() as tmp:
        done = run_coordinator_script(env, Path(tmp))
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_the_coordinator_script_passes_only_the_settings_given(tmp_path):
    args = run_coordinator_script({"FEDCMR_EPOCHS": "2", "FEDCMR_STRATEGY": "",
                                   "FEDCMR_RESUME": "1"}, tmp_path).stdout.splitlines()
    assert args == ["server", "--sites", "4", "--port", "9092", "--out", "/runs/federated",
                    "--epochs", "2", "--insecure", "--resume"]  # empty: fedcmr's default
    refused = run_coordinator_script({"FEDCMR_RESUME": "maybe"}, tmp_path)
    assert refused.returncode == 2 and "FEDCMR_RESUME=1 or unset it" in refused.stderr
    assert refused.stdout == ""  # never started


def test_each_hospital_mounts_only_its_own_data_on_an_internal_network():
    config = compose_config("docker-compose.yml")
    assert config["networks"]["federation"]["internal"] is True
    for name in HOSPITALS:
        service = config["services"][f"hospital-{name}"]
        sources = [v["source"] if isinstance(v, dict) else v.split(":")[0]
                   for v in service["volumes"]]
        data = [s for s in sources if "/sites/" in s and "/data" in s]
        assert len(data) == 1 and data[0].endswith(f"/sites/{name}")
        mounts = [v for v in service["volumes"] if isinstance(v, str) and v.startswith(data[0])]
        assert mounts == [f"{data[0]}:/data:ro"]  # its data, read-only
        assert not any(other in s for s in sources for other in HOSPITALS if other != name)
        assert service["environment"]["SITE"] == name
    coordinator = config["services"]["coordinator"]
    assert coordinator["command"] == ["sh", "/app/deploy/coordinator.sh"]
    assert "--sites 4" in " ".join(coordinator_args(coordinator["environment"]))
    # the hospitals start once the cohort is written, which stays up (healthy) until the
    # coordinator is gone: `up --exit-code-from coordinator` stops all when any one exits
    hospital = config["services"]["hospital-acdc"]
    assert hospital["depends_on"]["cohort"]["condition"] == "service_healthy"
    assert config["services"]["cohort"]["healthcheck"]["test"][-1] == "/tmp/fedcmr-cohort-written"


def test_secure_and_gpu_variants_are_valid():
    secure = compose_config("docker-compose.yml", "docker-compose.secure.yml")
    args = coordinator_args(secure["services"]["coordinator"]["environment"])
    assert args[args.index("--secure") + 1] == "/certs" and "--insecure" not in args
    for name in HOSPITALS:
        service = secure["services"][f"hospital-{name}"]
        env = service["environment"]
        assert env["CA"] == "/certs/ca.crt" and env["KEY"] == "/certs/site.key"
        # the CA and its own private key, read-only; no other site's key, no CA key
        mounts = [v.rsplit(":", 2) for v in service["volumes"] if ":/certs/" in v]
        certs = sorted((src.split("/certs/")[-1], target, mode) for src, target, mode in mounts)
        assert certs == [("ca.crt", "/certs/ca.crt", "ro"),
                         (f"sites/{name}", "/certs/site.key", "ro")], certs
        # the synthetic cohort's release policy, from the image, never from the coordinator
        assert env["FEDCMR_SITE_POLICY"] == "/app/deploy/synthetic-site-policy.toml"
    gpu = compose_config("docker-compose.yml", "docker-compose.gpu.yml")
    devices = gpu["services"]["hospital-acdc"]["deploy"]["resources"]["reservations"]
    assert devices["devices"][0]["capabilities"] == ["gpu"]


def test_certificate_script_makes_what_the_launchers_read(tmp_path):
    subprocess.run([str(REPO / "deploy" / "make_certificates.sh"), str(tmp_path), "Vall d'Hebron",
                    "ACDC"], check=True, capture_output=True)
    local = security_from_dir(tmp_path, ["Vall d'Hebron", "ACDC"])
    assert local.site_keys["Vall d'Hebron"] == tmp_path / "sites" / "vall-d-hebron"
    for key in local.site_keys.values():
        key.unlink()  # the coordinator never needs the sites' private keys
    coordinator = security_from_dir(tmp_path)
    assert sorted(coordinator.site_keys) == ["acdc", "vall-d-hebron"]
    san = subprocess.run(["openssl", "x509", "-in", str(tmp_path / "superlink.crt"), "-noout",
                          "-ext", "subjectAltName"], capture_output=True, text=True).stdout
    assert "DNS:coordinator" in san and "IP Address:127.0.0.1" in san
    with pytest.raises(FileNotFoundError, match="make_certificates.sh"):
        security_from_dir(tmp_path, ["Unknown site"])

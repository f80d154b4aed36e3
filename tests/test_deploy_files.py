"""The compose files and certificates: valid, each hospital sees only its own data."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from fedcmr.server.security import security_from_dir

REPO = Path(__file__).resolve().parent.parent
HOSPITALS = ("vall-d-hebron", "sagrada-familia", "santpau", "acdc")


def compose_config(*files: str) -> dict:
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.skip("docker-compose is not installed (apt-get install docker-compose)")
    args = [exe]
    for name in files:
        args += ["-f", str(REPO / name)]
    out = subprocess.run([*args, "config"], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    import yaml

    return yaml.safe_load(out.stdout)


def text(command) -> str:
    return command if isinstance(command, str) else " ".join(command)


def test_each_hospital_mounts_only_its_own_data_on_an_internal_network():
    config = compose_config("docker-compose.yml")
    assert config["networks"]["federation"]["internal"] is True
    for name in HOSPITALS:
        service = config["services"][f"hospital-{name}"]
        sources = [v["source"] if isinstance(v, dict) else v.split(":")[0]
                   for v in service["volumes"]]
        data = [s for s in sources if "/sites/" in s and "/data" in s]
        assert len(data) == 1 and data[0].endswith(f"/sites/{name}")
        assert not any(other in s for s in sources for other in HOSPITALS if other != name)
        assert service["environment"]["SITE"] == name
    assert "--sites 4" in text(config["services"]["coordinator"]["command"])


def test_secure_and_gpu_variants_are_valid():
    secure = compose_config("docker-compose.yml", "docker-compose.secure.yml")
    assert "--secure" in text(secure["services"]["coordinator"]["command"])
    for name in HOSPITALS:
        env = secure["services"][f"hospital-{name}"]["environment"]
        assert env["CA"] == "/certs/ca.crt" and env["KEY"] == "/certs/site.key"
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

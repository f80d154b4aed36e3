"""Driving Flower's `flwr` CLI against one SuperLink: the connection file, submitting the
fedcmr app as a run, asking its status, reading and streaming its log, stopping it."""

from __future__ import annotations

import json
import subprocess
import threading
from pathlib import Path

from fedcmr.common.app_bundle import app_dir
from fedcmr.common.atomic import write_text
from fedcmr.server.settings import FederationSettings
from fedcmr.support.flower_env import tool

#: The connection's name in FLWR_HOME/config.toml.
CONNECTION = "fedcmr-local"


class FlwrCli:
    """`flwr` commands with FLWR_HOME in `flwr_home` (env) and `cwd` as working folder."""

    def __init__(self, flwr_home: Path, cwd: Path, env: dict[str, str]):
        self.flwr_home = flwr_home
        self.cwd = cwd
        self.env = env

    def write_connection(self, port: int, ca: Path | None) -> None:
        """The connection to the SuperLink on 127.0.0.1:port (TLS when `ca` is given)."""
        lines = ["[superlink]", f'default = "{CONNECTION}"', "", f"[superlink.{CONNECTION}]",
                 f'address = "127.0.0.1:{port}"']
        lines.append(f'root-certificates = "{ca}"' if ca else "insecure = true")
        write_text(self.flwr_home / "config.toml", "\n".join(lines) + "\n")

    def __call__(self, *args: str, check: bool = False) -> subprocess.CompletedProcess:
        result = subprocess.run([tool("flwr"), *args], env=self.env, capture_output=True,
                                text=True, cwd=self.cwd, timeout=300)
        if check and result.returncode != 0:
            raise RuntimeError(f"flwr {' '.join(args[:2])} failed: "
                               f"{(result.stdout + result.stderr).strip()[-500:]}")
        return result

    def submit(self, settings: FederationSettings, extra: list[str] | None = None) -> str:
        """`flwr run` of the fedcmr app with these settings; returns the run id."""
        result = self("run", str(app_dir()), CONNECTION, "--run-config",
                      settings.to_run_config_text(), *(extra or []), "--format", "json",
                      check=True)
        data = json.loads(result.stdout[result.stdout.index("{"):])
        if not data.get("success"):
            raise RuntimeError(f"flwr run refused the run: {data}")
        return str(data["run-id"])

    def status(self, run_id: str) -> str:
        result = self("ls", "--run-id", run_id, CONNECTION, "--format", "json")
        try:
            data = json.loads(result.stdout[result.stdout.index("{"):])
            return str(data["runs"][0]["status"])
        except (ValueError, KeyError, IndexError):
            return "unknown"

    def logs(self, run_id: str) -> str:
        return self("log", run_id, CONNECTION, "--show").stdout

    def stop(self, run_id: str) -> None:
        self("stop", run_id, CONNECTION)

    def stream_logs(self, run_id: str, echo) -> subprocess.Popen:
        """Stream the run's log and pass fedcmr's own lines (progress per round) to `echo`."""
        proc = subprocess.Popen([tool("flwr"), "log", run_id, CONNECTION, "--stream"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=self.env, cwd=self.cwd, start_new_session=True)

        def pump() -> None:
            for line in proc.stdout:
                if "fedcmr." in line:
                    echo(line.rstrip())

        threading.Thread(target=pump, daemon=True).start()
        return proc

"""Flower's command-line tools as fedcmr starts them, on either side: found in this Python
environment first, with telemetry and update checks off."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path


def tool(name: str) -> str:
    """A console script of this environment (flower-superlink, flwr, ...)."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else (shutil.which(name) or name)


def flower_env(base: Mapping[str, str] | None = None, **extra: str) -> dict[str, str]:
    """The environment for Flower's processes. This environment's bin comes first on PATH:
    a SuperNode starts flower-superexec by name, also when fedcmr was called by its full
    path without activating the environment."""
    env = dict(os.environ if base is None else base)
    env.update(FLWR_TELEMETRY_ENABLED="0", FLWR_DISABLE_UPDATE_CHECK="1",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}", **extra)
    return env

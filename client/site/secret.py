"""The site's secret: 32 bytes from the operating system's random source, kept in the site's
state folder (`site-secret.key`, 0600, made on first use, never sent), from which the site
draws every noise it adds before something leaves (client/site/release.py: the noise on
score counts; the differential-privacy noise on its model updates).

Each noise comes from a generator keyed by HMAC-SHA256(secret, context), the context naming
what is released (the kind, the subject set, the digest of the model received, the fold and
round). So:
- the coordinator, which chose everything in the context but not the secret, cannot
  regenerate the noise and subtract it (issue #27, attack 6: the noise used to be seeded
  from the run seed, fold and round every request carries);
- the same request answered twice gives the same noisy answer: asking again does not
  average the noise away, and a resumed run (`--resume`) replays exactly.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

import numpy as np

SECRET_FILE = "site-secret.key"
SECRET_BYTES = 32


class SecretError(RuntimeError):
    """The secret file is unreadable, of the wrong size, or readable by others."""


def load_secret(folder: Path) -> bytes:
    """The site's secret in `folder`, made there (0600 from its first byte) when missing."""
    path = Path(folder) / SECRET_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process of this site made it first
            return load_secret(folder)
        with os.fdopen(fd, "wb") as handle:
            handle.write(secrets.token_bytes(SECRET_BYTES))
    if path.stat().st_mode & 0o077:
        raise SecretError(f"{path}: readable by other users (mode "
                          f"{oct(path.stat().st_mode & 0o777)}); whoever reads it can remove "
                          f"the site's noise. Fix: chmod 600 {path}")
    data = path.read_bytes()
    if len(data) != SECRET_BYTES:
        raise SecretError(f"{path}: {len(data)} bytes, not {SECRET_BYTES}. Fix: delete it "
                          "(the site makes a new one; earlier answers then no longer replay)")
    return data


def secret_rng(secret: bytes, *context: object) -> np.random.Generator:
    """A generator keyed by the secret and `context` (its parts' text, in order)."""
    text = "\x1f".join(str(part) for part in context).encode()
    key = hmac.new(secret, text, hashlib.sha256).digest()
    return np.random.default_rng(np.frombuffer(key, dtype=np.uint32))

"""A hospital's own key pair for node authentication: made at the site, the private key
never leaves it (mode 0600), only the public key goes to the coordinator, which registers
it with its SuperLink (docs/deployment.md, "Real sites").

The pair is what Flower's SuperNode reads (`--auth-supernode-private-key`: an OpenSSH
private key) and what `flwr supernode register` takes (an OpenSSH public key): ECDSA on
P-384, as `ssh-keygen -t ecdsa -b 384` makes it, here with the `cryptography` library
Flower itself uses, so that no ssh-keygen is needed at the site.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fedcmr.common.centres import slug

PRIVATE_MODE = 0o600


class KeyExists(FileExistsError):
    """A key of this site is there already: never overwritten (the coordinator may have
    registered its public key)."""


def key_paths(site: str, folder: Path) -> tuple[Path, Path]:
    """The site's private key and public key files in `folder` (named by the site's slug,
    as deploy/make_certificates.sh and server/security.py name them)."""
    private = Path(folder) / (slug(site) or "site")
    return private, private.with_suffix(".pub")


def make_site_keys(site: str, folder: Path) -> tuple[Path, Path]:
    """A new key pair for `site` in `folder`: the private key written 0600 from its
    first byte (never readable by others, not even for a moment), the public key 0644.
    KeyExists when either file is there."""
    private, public = key_paths(site, folder)
    for path in (private, public):
        if path.exists():
            raise KeyExists(f"{path}: a key of site {site!r} exists already. Fix: keep it "
                            "(its public key may be registered), or move it away to make a "
                            "new pair and send the coordinator the new public key")
    Path(folder).mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    secret = key.private_bytes(serialization.Encoding.PEM,
                               serialization.PrivateFormat.OpenSSH,
                               serialization.NoEncryption())
    opened = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_MODE)
    with os.fdopen(opened, "wb") as handle:
        handle.write(secret)
    os.chmod(private, PRIVATE_MODE)  # whatever the umask
    text = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                         serialization.PublicFormat.OpenSSH)
    public.write_bytes(text + f" {site}\n".encode())
    public.chmod(0o644)
    return private, public


def check_private_key(path: Path) -> None:
    """Refuse a private key others may read (group or world bits set)."""
    mode = Path(path).stat().st_mode & 0o777
    if mode & 0o077:
        raise ValueError(f"{path}: the private key is readable by others (mode {mode:o}). "
                         f"Fix: chmod 600 {path}")

"""The certificate folder made by deploy/make_certificates.sh, as the launcher uses it."""

from __future__ import annotations

from pathlib import Path

from fedcmr.common.centres import slug
from fedcmr.server.local_federation import Security


def security_from_dir(cert_dir: Path, site_names: list[str]) -> Security:
    """CA, SuperLink certificate and one key per site; a clear error names what is missing."""
    need = [cert_dir / n for n in ("ca.crt", "superlink.crt", "superlink.key")]
    keys = {name: cert_dir / "sites" / slug(name) for name in site_names}
    missing = [p for p in need + list(keys.values()) if not p.is_file()]
    if missing:
        names = " ".join(f'"{n}"' for n in site_names)
        raise FileNotFoundError(f"{missing[0]}: missing. Fix: deploy/make_certificates.sh "
                                f"{cert_dir} {names}")
    return Security(ca=need[0], server_cert=need[1], server_key=need[2], site_keys=keys)

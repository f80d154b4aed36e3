"""TLS and SuperNode authentication: the certificate folder made by
deploy/make_certificates.sh, as the launchers use it (docs/deployment.md)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from fedcmr.common.centres import slug


@dataclass
class Security:
    ca: Path
    server_cert: Path
    server_key: Path
    #: site name -> its private key (the public key beside it, .pub)
    site_keys: dict[str, Path] = field(default_factory=dict)

    @staticmethod
    def node_name(site: str) -> str:
        """A site's name in the SuperLink's node registry and in key file names."""
        return slug(site) or "site"


def security_from_dir(cert_dir: Path, site_names: list[str] | None = None) -> Security:
    """CA, SuperLink certificate and the sites' keys; a clear error names what is missing.

    With site names (the local launcher starts those SuperNodes) each site's private key
    must be there; without (the coordinator) only the public keys are read, every one
    under sites/ being registered.
    """
    cert_dir = Path(cert_dir).resolve()  # the SuperLink runs in the run folder
    need = [cert_dir / n for n in ("ca.crt", "superlink.crt", "superlink.key")]
    if site_names is None:
        keys = {p.stem: p.with_suffix("") for p in sorted((cert_dir / "sites").glob("*.pub"))}
        need += [k.with_suffix(".pub") for k in keys.values()]
    else:
        keys = {name: cert_dir / "sites" / slug(name) for name in site_names}
        need += [p for k in keys.values() for p in (k, k.with_suffix(".pub"))]
    missing = [p for p in need if not p.is_file()]
    if missing or not keys:
        names = " ".join(f'"{n}"' for n in site_names or ["SITE", "..."])
        what = missing[0] if missing else cert_dir / "sites" / "*.pub"
        raise FileNotFoundError(f"{what}: missing. Fix: deploy/make_certificates.sh "
                                f"{cert_dir} {names}")
    return Security(ca=need[0], server_cert=need[1], server_key=need[2], site_keys=keys)

"""Only approved code runs at a hospital. In Flower's deployment runtime a SuperNode runs
whatever app bundle (FAB) the coordinator submits with `flwr run`: a modified bundle (its
pyproject naming another ClientApp, with that code inside the bundle) would run at the
site, past its audit gate and its release policy. So a site runs a bundle only when its
sha256 is one the site approved: by default the bundle its own installed fedcmr builds
(common/app_bundle.py; Flower builds bundles deterministically), and the digests listed in
its policy's `approved_bundles`. Anything else is refused before any of its code runs, and
the coordinator gets Flower's FAB_VERIFICATION_ERROR reply.

Flower's own check (`flower-supernode --trusted-entities`) cannot do this offline: it
requires a bundle verified by the Flower platform (a "valid_license" verification).

How the SuperNode is made to refuse is Flower's part (support/flower_patches.py
`approve_bundles`, pinned to flwr 1.42 with its test); the rule, which bundles this site
runs, is here.
"""

from __future__ import annotations

import hashlib
import logging
import types

from fedcmr.support import flower_patches

#: The approved digests, comma-separated, from `fedcmr client` to its SuperNode.
APPROVED_ENV = "FEDCMR_APPROVED_BUNDLES"
#: Prefix of the site's log line for a refused bundle.
REFUSED = "site app bundle refused: "


def approval_problem(fab_content: bytes, approved: set[str]) -> str | None:
    """None when the bundle's sha256 is approved; else one line naming it and the fix."""
    digest = hashlib.sha256(fab_content).hexdigest()
    if digest in approved:
        return None
    return (f"the coordinator's app bundle (sha256 {digest[:12]}…) is not one this site "
            "approved, so none of its code runs here. Fix: add its sha256 to "
            "approved_bundles in the site policy (deploy/approve_bundle.sh prints it) or "
            "install the coordinator's fedcmr version")


def install_approval(loop_module: types.ModuleType, approved: set[str],
                     log: logging.Logger) -> None:
    """Make the SuperNode loop in `loop_module` (flwr.supernode.start_client_internal)
    refuse every bundle whose sha256 is not in `approved`; a Flower whose loop cannot be
    given the check stops the SuperNode (FlowerVersionError)."""
    flower_patches.approve_bundles(loop_module, lambda content: approval_problem(content, approved),
                                   lambda line: log.error("%s%s", REFUSED, line))

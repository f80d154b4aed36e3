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

Pinned to flwr 1.42's internals: `flwr.supernode.start_client_internal` calls its
`_pull_and_store_message(..., get_fab=..., trusted_entities=...)` for every message; for a
run it has not seen, that calls `get_fab`, then, when `trusted_entities` is non-empty and
the FAB carries no "valid_license" verification, inserts a FAB_VERIFICATION_ERROR reply and
returns before the FAB is stored or a ClientApp started. The patch wraps `get_fab` with the
digest check and, on refusal, fills the `trusted_entities` it passed and strips the FAB's
verifications, so that Flower's own refusal path fires (its own ERROR line after ours
blames the SuperLink for not supporting verification: ours gives the reason).
`install_approval` refuses to start when that function no longer takes these parameters
(fail closed on a Flower upgrade).
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import logging
import types
from collections.abc import Callable

from flwr.supercore.fab import Fab

#: The approved digests, comma-separated, from `fedcmr client` to its SuperNode.
APPROVED_ENV = "FEDCMR_APPROVED_BUNDLES"
#: Prefix of the site's log line for a refused bundle.
REFUSED = "site app bundle refused: "
#: The trusted-entities key set on refusal (never a real entity: it only makes Flower check).
_REFUSAL_ENTITY = "fedcmr-site-approval"


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
    refuse every bundle whose sha256 is not in `approved`."""
    original = loop_module._pull_and_store_message
    if not {"get_fab", "trusted_entities"} <= set(inspect.signature(original).parameters):
        raise RuntimeError("this Flower version's SuperNode loop cannot be given the site's "
                           "app bundle check (client/site/app_approval.py is pinned to flwr "
                           "1.42). Fix: install the flwr version fedcmr requires")

    def pull_and_store_message(*, get_fab: Callable[[str, int], Fab],
                               trusted_entities: dict[str, str] | None, **kwargs) -> int | None:
        entities = dict(trusted_entities or {})  # a fresh one per call: filled on refusal

        def checked_get_fab(fab_hash: str, run_id: int) -> Fab:
            fab = get_fab(fab_hash, run_id)
            problem = approval_problem(fab.content, approved)
            if problem is None:
                return fab
            log.error("%s%s", REFUSED, problem)
            entities[_REFUSAL_ENTITY] = "refused"
            return dataclasses.replace(fab, verifications={})

        return original(get_fab=checked_get_fab, trusted_entities=entities, **kwargs)

    loop_module._pull_and_store_message = pull_and_store_message

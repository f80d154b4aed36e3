"""Where fedcmr changes Flower's own behaviour, and the Flower release it was tested on.

fedcmr runs on Flower 1.42.0 only (pyproject pins it): `check_version()` refuses any other
release before a patch is applied, naming both releases and the fix, because every patch
here reaches a name Flower does not promise to keep. tests/test_flower_patches.py fails when
one of those names moves.

- **Object pulls without long waits** (`fast_object_pulls`). A message is visible before
  its arrays have arrived; a pull that comes early backs off 1, 2, 4, 8, then 10 s
  (`PULL_INITIAL_BACKOFF`, `PULL_BACKOFF_CAP`, no setting), so a model that arrived a
  moment after the check waited seconds more at every hop. Here the waits start at
  PULL_FIRST_WAIT_S and stop growing at PULL_MAX_WAIT_S; the number of tries grows so that
  a slow upload is waited for as long as before (Flower's 500 tries at up to 10 s).
  Applied in every process that pulls: the ServerApp (replies), the SuperNode (messages
  from the SuperLink) and the ClientApp (its message from the SuperNode).
"""

from __future__ import annotations

import importlib.metadata

#: The Flower release every patch here was tested on.
TESTED_FLOWER = "1.42.0"
#: Waits between pulls of an object that has not arrived yet (Flower: 1 s, doubling to 10 s).
PULL_FIRST_WAIT_S = 0.02
PULL_MAX_WAIT_S = 0.2
#: How long Flower's defaults keep asking for a missing object: 500 tries, up to 10 s apart.
_FLOWER_PULL_PATIENCE_S = 500 * 10.0


class FlowerVersionError(RuntimeError):
    pass


def installed_flower() -> str:
    return importlib.metadata.version("flwr")


def check_version() -> None:
    """FlowerVersionError unless the installed Flower is the one the patches were tested on."""
    found = installed_flower()
    if found != TESTED_FLOWER:
        raise FlowerVersionError(
            f"fedcmr was tested on Flower {TESTED_FLOWER} and changes some of its internals "
            f"(support/flower_patches.py); this environment has Flower {found}. Fix: "
            f"pip install 'flwr[simulation]=={TESTED_FLOWER}' (pyproject.toml pins it)")


def fast_object_pulls() -> None:
    """Pulls of objects not yet arrived wait PULL_FIRST_WAIT_S, doubling up to
    PULL_MAX_WAIT_S, for as long in all as Flower's own schedule would."""
    check_version()
    from flwr.supercore.inflatable import inflatable_utils

    for function in (inflatable_utils.pull_objects,
                     inflatable_utils.pull_and_inflate_object_from_tree):
        defaults = function.__kwdefaults__ or {}
        if missing := {"initial_backoff", "backoff_cap", "max_tries_per_object"} - set(defaults):
            raise FlowerVersionError(f"Flower's {function.__name__} has no {sorted(missing)}")
        defaults.update(initial_backoff=PULL_FIRST_WAIT_S, backoff_cap=PULL_MAX_WAIT_S,
                        max_tries_per_object=int(_FLOWER_PULL_PATIENCE_S / PULL_MAX_WAIT_S))


def apply() -> None:
    """Every patch a process of fedcmr's (ServerApp, SuperNode, ClientApp) needs."""
    fast_object_pulls()

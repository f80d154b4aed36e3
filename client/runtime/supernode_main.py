"""`flower-supernode` as fedcmr starts it (`fedcmr client` and the local launcher): Flower's
own entry point with five changes. It runs only app bundles the site approved
(client/site/app_approval.py): the digests in $FEDCMR_APPROVED_BUNDLES (`fedcmr client` sets
them from its policy), or, without it, only the bundle this installation builds. Its
SuperExec forks each ClientApp from a process that has imported torch once
(client/runtime/superexec_main.py), instead of starting a fresh one per message, and wakes
it as soon as a message has arrived. Its connection loop checks the SuperLink again within
0.05-0.5 s during a run, not a hard-coded 3 s (every exchange waited half of that on
average); these changes to Flower are in support/flower_patches.py. The process
exits with LOOP_ENDED once that loop has ended (Flower 1.42 logs the error that ended it,
a coordinator lost for --max-wait-time or an HTTP 500, and then hangs for ever on its
Runtime API thread). It dies with the `fedcmr client` that started it ($FEDCMR_PARENT_PID),
its SuperExec with it, and each ClientApp with its SuperExec, however each ends
(support/proc_tree.py `die_with_parent`): a killed client leaves nothing serving.

Each message's work is done in its forked ClientApp, which ends with the message: no
process of a site holds its data or a model between messages."""

from __future__ import annotations

import os
import sys

#: Exit code of the SuperNode once its connection loop has ended.
LOOP_ENDED = 75
#: The command line: `python -c SUPERNODE_MAIN flower-supernode ARGS...` (argv[1] names
#: the tool, so that the process still reads as flower-supernode in `ps`).
SUPERNODE_MAIN = "from fedcmr.client.runtime.supernode_main import main; main()"


def approved_bundles() -> set[str]:
    """The app bundle digests this SuperNode runs (client/site/app_approval.py); a variable set
    but empty approves none."""
    from fedcmr.client.site.app_approval import APPROVED_ENV
    from fedcmr.common.app_bundle import bundle_digest

    if (listed := os.environ.get(APPROVED_ENV)) is None:
        return {bundle_digest()}
    return {d.strip().lower() for d in listed.split(",") if d.strip()}


def main() -> None:
    from fedcmr.support.proc_tree import PARENT_ENV, die_with_parent, parent_from_env

    die_with_parent(parent_from_env())
    os.environ[PARENT_ENV] = str(os.getpid())  # for its SuperExec
    sys.argv = sys.argv[1:]
    from flwr.common.logger import FLOWER_LOGGER
    from flwr.supernode import start_client_internal as loop
    from flwr.supernode.cli import flower_supernode

    from fedcmr.client.runtime.superexec_main import start_mode, superexec_command
    from fedcmr.client.site.app_approval import install_approval
    from fedcmr.support import exchange_timing, flower_patches

    flower_patches.apply()  # a Flower release fedcmr was not tested on stops it here
    start_mode()  # a wrong $FEDCMR_CLIENTAPP_START stops the SuperNode here, named
    install_approval(loop, approved_bundles(), FLOWER_LOGGER)
    flower_patches.supernode_waits(loop)
    flower_patches.prompt_heartbeat()  # a dead site is offline after 20 s, not 60 s
    superexec_pid = flower_patches.superexec_through(loop, superexec_command)
    flower_patches.wake_superexec(loop, superexec_pid)  # a message wakes the SuperExec
    if exchange_timing.enabled():  # benchmarks only
        flower_patches.trace_supernode(loop, exchange_timing.supernode_event)
    try:
        flower_supernode()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(LOOP_ENDED)

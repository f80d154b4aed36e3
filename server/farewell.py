"""The end of a run, told to the hospitals: every node gets FINISHED once the results are
written, and its `fedcmr client` stops by itself (exit 0) instead of retrying a coordinator
that is gone. A node that does not confirm in time is named in the log; its client then
stops when it has been without the coordinator for its --max-wait-time."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid
from pydantic import ValidationError

from fedcmr.common.protocol import CONFIG, Kind
from fedcmr.common.replies import FinishedReply
from fedcmr.server.roster import send_and_receive

log = logging.getLogger("fedcmr.server")

#: Seconds the ServerApp waits for the hospitals to confirm the end of the run (a reply
#: costs a ClientApp start and a SuperNode's idle wait, a few seconds).
FAREWELL_TIMEOUT = 60.0


def announce_finished(grid: Grid, node_ids: Iterable[int] | None = None,
                      timeout: float = FAREWELL_TIMEOUT,
                      names: Mapping[int, str] | None = None) -> dict[int, str]:
    """Send FINISHED to every node (default: every node connected now) and wait at most
    `timeout` s for the replies. Returns node -> site name of those that confirmed; never
    raises (the run's results are already written)."""
    names = dict(names or {})
    try:
        nodes = sorted(grid.get_node_ids() if node_ids is None else node_ids)
        if not nodes:
            return {}
        messages = [Message(RecordDict({CONFIG: ConfigRecord()}), dst_node_id=node,
                            message_type=Kind.FINISHED) for node in nodes]
        replies = send_and_receive(grid, messages, timeout)
        asked = {m.metadata.message_id: node for m, node in zip(messages, nodes, strict=True)}
    except Exception as err:  # a failed farewell must not fail a finished run
        log.warning("could not tell the hospitals that the run is over (%s); their "
                    "`fedcmr client` stops after its --max-wait-time", err)
        return {}
    confirmed: dict[int, str] = {}
    failed: dict[int, str] = {}
    for reply in replies:
        node = asked.get(reply.metadata.reply_to_message_id, reply.metadata.src_node_id)
        if reply.has_error():
            failed[node] = reply.error.reason
            continue
        try:
            confirmed[node] = FinishedReply.from_message(reply).site
        except ValidationError as err:
            failed[node] = f"not a finished reply ({err.errors()[0]['msg']})"
    for node in nodes:
        if node in confirmed:
            continue
        who = names.get(node, f"node {node}")
        why = failed.get(node, f"no reply within {timeout:.0f} s")
        log.warning("site %s did not confirm the end of the run (%s); its `fedcmr client` "
                    "stops after its --max-wait-time without the coordinator", who, why)
    if confirmed:
        log.info("run over: told %d site(s) (%s)", len(confirmed),
                 ", ".join(sorted(confirmed.values())))
    return confirmed

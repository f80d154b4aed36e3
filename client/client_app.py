"""The hospital's Flower ClientApp: turns each message into a site_work call and its typed
reply back into a message. Which site this node is comes from its NodeConfig
(common/node_config.py): a SuperNode's `--node-config`, or the simulated-node table.

Every handler is wrapped (`site_handler`): an exception becomes an error reply whose reason
starts with "site NAME: KIND failed: ", so that the coordinator's log names the hospital and
the message, not only a node id. (Flower itself would send "<class 'X'>:<'...'>" and no
name.) FINISHED marks the end of the run in the site's out-dir, where `fedcmr client`
(client/supernode_watch.py) sees it and stops.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable

import torch
from flwr.app import Context, Error, Message
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode

from fedcmr.client import site_work
from fedcmr.client.audit import audit_mod
from fedcmr.common.atomic import write_json
from fedcmr.common.node_config import NodeConfig
from fedcmr.common.protocol import ARRAYS, CONFIG, FINISHED_MARKER, Kind, Order
from fedcmr.common.replies import FinishedReply

log = logging.getLogger("fedcmr.client")

app = ClientApp(mods=[audit_mod])


def open_site(context: Context) -> site_work.Site:
    node = NodeConfig.resolve(context.node_config, context.run_config)
    if node.threads > 0:
        torch.set_num_threads(node.threads)
    return site_work.Site.open(node.site, list(node.data_path), node.out_dir)


def site_name(context: Context) -> str:
    """The node's site name; with a broken node config, what there is of it."""
    try:
        return NodeConfig.resolve(context.node_config, context.run_config).site
    except ValueError:
        return str(context.node_config.get("site") or f"node {context.node_id}")


Handler = Callable[[Message, Context], Message]


def site_handler(kind: Kind) -> Callable[[Handler], Handler]:
    """The handler, its exceptions turned into an error reply that names the site and the
    message kind (the traceback stays in the site's own log)."""

    def wrap(handler: Handler) -> Handler:
        @functools.wraps(handler)
        def run(msg: Message, context: Context) -> Message:
            try:
                return handler(msg, context)
            except Exception as err:  # every failure leaves as a reply naming the site
                site = site_name(context)
                text = str(err).removeprefix(f"site {site}: ")
                reason = f"site {site}: {kind} failed: {type(err).__name__}: {text}"
                log.error("%s", reason, exc_info=err)
                return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION,
                                     reason=reason), reply_to=msg)

        return run

    return wrap


def _order(msg: Message) -> Order:
    return Order.from_record(msg.content.config_records[CONFIG])


def _state(msg: Message) -> dict[str, torch.Tensor]:
    return msg.content.array_records[ARRAYS].to_torch_state_dict()


@app.query(Kind.DESCRIBE.action)
@site_handler(Kind.DESCRIBE)
def describe(msg: Message, context: Context) -> Message:
    return site_work.describe(open_site(context)).to_message(msg)


@app.query(Kind.NYUL.action)
@site_handler(Kind.NYUL)
def nyul(msg: Message, context: Context) -> Message:
    reply = site_work.histogram_summary(open_site(context), _order(msg))
    if reply.refused:
        log.warning("%s: %s", reply.site, reply.refused)
    return reply.to_message(msg)


@app.train()
@site_handler(Kind.TRAIN)
def train(msg: Message, context: Context) -> Message:
    return site_work.train(open_site(context), _order(msg), _state(msg)).to_message(msg)


@app.query(Kind.VALIDATE.action)
@site_handler(Kind.VALIDATE)
def validate(msg: Message, context: Context) -> Message:
    return site_work.validate(open_site(context), _order(msg), _state(msg)).to_message(msg)


@app.query(Kind.TEST.action)
@site_handler(Kind.TEST)
def test(msg: Message, context: Context) -> Message:
    return site_work.test(open_site(context), _order(msg), _state(msg)).to_message(msg)


@app.query(Kind.FINISHED.action)
@site_handler(Kind.FINISHED)
def finished(msg: Message, context: Context) -> Message:
    """The run is over: mark it in the out-dir (for `fedcmr client`) and say so."""
    site = site_name(context)
    out_dir = NodeConfig.out_dir_of(context.node_config, context.run_config)
    if out_dir is not None:
        write_json(out_dir / FINISHED_MARKER, {"run_id": context.run_id, "site": site,
                                               "time": time.time()})
    log.info("site %s: the coordinator's run %s is over", site, context.run_id)
    return FinishedReply(site=site).to_message(msg)


#: The handler of each message kind (what a SuperNode dispatches to; tests use it too).
HANDLERS = {Kind.DESCRIBE: describe, Kind.NYUL: nyul, Kind.TRAIN: train,
            Kind.VALIDATE: validate, Kind.TEST: test, Kind.FINISHED: finished}

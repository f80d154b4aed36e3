"""The hospital's Flower ClientApp: turns each message into a site_work call and its typed
reply back into a message. Which site this node is comes from its NodeConfig
(common/node_config.py): a SuperNode's `--node-config`, or the simulated-node table.
"""

from __future__ import annotations

import logging

import torch
from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from fedcmr.client import site_work
from fedcmr.client.audit import audit_mod
from fedcmr.common.node_config import NodeConfig
from fedcmr.common.protocol import ARRAYS, CONFIG, Kind, Order

log = logging.getLogger("fedcmr.client")

app = ClientApp(mods=[audit_mod])


def open_site(context: Context) -> site_work.Site:
    node = NodeConfig.resolve(context.node_config, context.run_config)
    if node.threads > 0:
        torch.set_num_threads(node.threads)
    return site_work.Site.open(node.site, list(node.data_path), node.out_dir)


def _order(msg: Message) -> Order:
    return Order.from_record(msg.content.config_records[CONFIG])


def _state(msg: Message) -> dict[str, torch.Tensor]:
    return msg.content.array_records[ARRAYS].to_torch_state_dict()


@app.query(Kind.DESCRIBE.action)
def describe(msg: Message, context: Context) -> Message:
    return site_work.describe(open_site(context)).to_message(msg)


@app.query(Kind.NYUL.action)
def nyul(msg: Message, context: Context) -> Message:
    reply = site_work.histogram_summary(open_site(context), _order(msg))
    if reply.refused:
        log.warning("%s: %s", reply.site, reply.refused)
    return reply.to_message(msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    return site_work.train(open_site(context), _order(msg), _state(msg)).to_message(msg)


@app.query(Kind.VALIDATE.action)
def validate(msg: Message, context: Context) -> Message:
    return site_work.validate(open_site(context), _order(msg), _state(msg)).to_message(msg)


@app.query(Kind.TEST.action)
def test(msg: Message, context: Context) -> Message:
    return site_work.test(open_site(context), _order(msg), _state(msg)).to_message(msg)


#: The handler of each message kind (what a SuperNode dispatches to; tests use it too).
HANDLERS = {Kind.DESCRIBE: describe, Kind.NYUL: nyul, Kind.TRAIN: train,
            Kind.VALIDATE: validate, Kind.TEST: test}

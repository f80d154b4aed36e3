"""The hospital's Flower ClientApp: converts messages to site_work calls and back.

Node config (per SuperNode, `--node-config`): site = display name; data-path = the site's
prepared cache folder(s), comma-separated; out-dir = the site's private output folder
(predictions, audit log); threads = CPU threads for torch (optional). Under Flower's
simulation runtime the same keys come from the run's node table (common/simulated_nodes.py).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedcmr.client import site_work
from fedcmr.client.audit import audit_mod
from fedcmr.common.protocol import ARRAYS, CONFIG, METRICS, SITE, Order
from fedcmr.common.simulated_nodes import node_config

log = logging.getLogger("fedcmr.client")

app = ClientApp(mods=[audit_mod])


def open_site(context: Context) -> site_work.Site:
    cfg = node_config(context.node_config, context.run_config)
    missing = [k for k in ("site", "data-path", "out-dir") if k not in cfg]
    if missing:
        raise ValueError(f"SuperNode --node-config lacks {missing}. Fix: start it with "
                         "--node-config 'site=\"NAME\" data-path=\"CACHE\" out-dir=\"DIR\"'")
    threads = int(cfg.get("threads", 0) or 0)
    if threads > 0:
        torch.set_num_threads(threads)
    caches = [Path(p) for p in str(cfg["data-path"]).split(",") if p]
    return site_work.Site.open(str(cfg["site"]), caches, Path(str(cfg["out-dir"])))


def _reply(msg: Message, site: site_work.Site, metrics: dict,
           arrays: ArrayRecord | None = None) -> Message:
    content = RecordDict({SITE: ConfigRecord({"name": site.name}), METRICS: MetricRecord(metrics)})
    if arrays is not None:
        content[ARRAYS] = arrays
    return Message(content, reply_to=msg)


def _order(msg: Message) -> Order:
    return Order.from_record(msg.content.config_records[CONFIG])


def _state(msg: Message) -> dict[str, torch.Tensor]:
    return msg.content.array_records[ARRAYS].to_torch_state_dict()


@app.query("describe")
def describe(msg: Message, context: Context) -> Message:
    site = open_site(context)
    info = site_work.describe(site)
    content = RecordDict({SITE: ConfigRecord({"name": info["name"], "centres": info["centres"]}),
                          METRICS: MetricRecord({"frames": info["frames"],
                                                 "subjects": info["subjects"]})})
    return Message(content, reply_to=msg)


@app.query("nyul")
def nyul(msg: Message, context: Context) -> Message:
    site = open_site(context)
    summary = site_work.histogram_summary(site, _order(msg))
    if "refused" in summary:
        log.warning("%s: %s", site.name, summary["refused"])
        content = RecordDict({SITE: ConfigRecord({"name": site.name,
                                                  "refused": summary["refused"]})})
        return Message(content, reply_to=msg)
    return _reply(msg, site, summary)


@app.train()
def train(msg: Message, context: Context) -> Message:
    site = open_site(context)
    state, metrics = site_work.train(site, _order(msg), _state(msg))
    return _reply(msg, site, metrics, ArrayRecord(state))


@app.query("validate")
def validate(msg: Message, context: Context) -> Message:
    site = open_site(context)
    return _reply(msg, site, site_work.validate(site, _order(msg), _state(msg)))


@app.query("test")
def test(msg: Message, context: Context) -> Message:
    site = open_site(context)
    return _reply(msg, site, site_work.test(site, _order(msg), _state(msg)))

"""The hospital's Flower ClientApp: turns each message into a call of the site's dispatcher
(client/site/work.py) and its typed reply back into a message. Which site this node is comes
from its NodeConfig (common/node_config.py): a SuperNode's `--node-config`, or the
simulated-node table.

Every handler is wrapped (`site_handler`): an exception becomes an error reply whose reason
starts with "site NAME: KIND failed: " and then names only a category (`error_reason`), so
that the coordinator's log names the hospital and the message, not only a node id, while
paths and subject ids in the exception's text stay in the site's log. (Flower itself would
send "<class 'X'>:<'...'>" and no name.) A request the site's policy refuses says
"site NAME: KIND refused by the site's policy (RULE): ...".

FINISHED marks the end of the run in the site's out-dir, where `fedcmr client`
(client/runtime/supernode_watch.py) sees it and stops.

In deployment each message gets its own ClientApp process, forked from the site's SuperExec
(client/runtime/superexec_main.py), which imported torch once; the handlers import torch and
the learning code themselves, not with the module. The audit gate is the outermost mod, and
`timing_mod` notes the message's times where a benchmark asks (support/exchange_timing.py).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from flwr.app import Context, Error, Message
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode

from fedcmr.client.site.audit import audit_mod
from fedcmr.client.site.policy import PolicyRefusal, SitePolicy
from fedcmr.common.atomic import write_json
from fedcmr.common.cache_format import CacheError
from fedcmr.common.handshake import FingerprintError
from fedcmr.common.node_config import NodeConfig
from fedcmr.common.protocol import ARRAYS, CONFIG, FINISHED_MARKER, Kind, Order
from fedcmr.common.replies import FinishedReply
from fedcmr.support.exchange_timing import timing_mod

if TYPE_CHECKING:
    import torch

    from fedcmr.client.site.work import Site

log = logging.getLogger("fedcmr.client")

#: The audit gate outermost: it sees every reply before it leaves.
app = ClientApp(mods=[audit_mod, timing_mod])

#: The frames this process read, by what they were read from (the caches, their manifests'
#: size and time, the centres): a process that serves several messages (the simulation
#: runtime's) reads each site's cache once; one that serves several sites in turn (the
#: in-process runtime's) keeps the last FRAMES_KEPT of them.
_frames: dict[tuple, list] = {}
FRAMES_KEPT = 8


def _cache_key(node: NodeConfig) -> tuple:
    stamps = []
    for cache in node.data_path:
        manifest = Path(cache) / "manifest.csv"
        try:
            stat = manifest.stat()
        except FileNotFoundError:
            raise CacheError(manifest, "the prepared cache's manifest is not there (the "
                             "cache moved or deleted while the site serves?)",
                             f"restore {cache}, or prepare it again (`fedcmr prepare ... --out "
                             f"{cache}`) and restart `fedcmr client`") from None
        stamps.append((str(cache), stat.st_size, stat.st_mtime_ns))
    return (tuple(stamps), node.centres)


def open_site(context: Context) -> Site:
    """The node's site: its policy read now, its frames read once per process (again when
    a cache's manifest changes)."""
    import torch

    from fedcmr.client.site.work import Site, load_site_frames

    node = NodeConfig.resolve(context.node_config, context.run_config)
    if node.threads > 0:
        torch.set_num_threads(node.threads)
    key = _cache_key(node)
    if key not in _frames:
        while len(_frames) >= FRAMES_KEPT:
            del _frames[next(iter(_frames))]  # the oldest read
        _frames[key] = load_site_frames(node.data_path, node.centres)
    return Site(name=node.site, frames=_frames[key], out_dir=node.out_dir,
                caches=tuple(Path(c) for c in node.data_path),
                policy=SitePolicy.load(node.policy), state_dir=node.state_dir)


def site_name(context: Context) -> str:
    """The node's site name; with a broken node config, what there is of it."""
    try:
        return NodeConfig.resolve(context.node_config, context.run_config).site
    except ValueError:
        return str(context.node_config.get("site") or f"node {context.node_id}")


Handler = Callable[[Message, Context], Message]


#: What an error reply may say of a failure: a category and a fixed message per kind of
#: exception (first match). The exception's own text, which may hold paths and subject
#: ids, stays in the site's log.
ERROR_CATEGORIES: tuple[tuple[type[BaseException], str, str], ...] = (
    (CacheError, "data", "the site's prepared cache cannot be read or is inconsistent"),
    (FingerprintError, "data", "the site's prepared caches disagree"),
    (OSError, "data", "the site cannot read its prepared data"),
    (MemoryError, "resources", "the site ran out of memory"),
    (ValueError, "input", "the site could not use the request with its data"),
    (Exception, "internal", "the site's software failed"),
)


def error_reason(site: str, kind: Kind, err: BaseException) -> str:
    """The error reply's text: the site, the message kind and what kind of failure, never
    the exception's own words (a policy refusal's are safe: they name the rule only)."""
    if isinstance(err, PolicyRefusal):
        return f"site {site}: {kind} {err}"
    category, text = next((c, t) for cls, c, t in ERROR_CATEGORIES if isinstance(err, cls))
    return (f"site {site}: {kind} failed: {category} error ({type(err).__name__}): {text}; "
            "the details are in the site's own log")


def site_handler(kind: Kind) -> Callable[[Handler], Handler]:
    """The handler, its exceptions turned into an error reply that names the site, the
    message kind and the category of failure (the traceback stays in the site's log)."""

    def wrap(handler: Handler) -> Handler:
        @functools.wraps(handler)
        def run(msg: Message, context: Context) -> Message:
            try:
                return handler(msg, context)
            except Exception as err:  # every failure leaves as a reply naming the site
                site = site_name(context)
                reason = error_reason(site, kind, err)
                code = ErrorCode.CLIENT_APP_RAISED_EXCEPTION
                if isinstance(err, PolicyRefusal):  # typed: the rule is the error's code
                    log.warning("%s", reason)
                    code = err.rule.code
                else:
                    log.error("site %s: %s failed: %s: %s", site, kind, type(err).__name__,
                              err, exc_info=err)
                return Message(Error(code=code, reason=reason), reply_to=msg)

        return run

    return wrap


def _order(msg: Message) -> Order:
    return Order.from_record(msg.content.config_records[CONFIG])


def _state(msg: Message) -> dict[str, torch.Tensor]:  # torch: imported by the caller
    return msg.content.array_records[ARRAYS].to_torch_state_dict()


@app.query(Kind.DESCRIBE.action)
@site_handler(Kind.DESCRIBE)
def describe(msg: Message, context: Context) -> Message:
    from fedcmr.client.site import work

    return work.describe(open_site(context)).to_message(msg)


def _answer(kind: Kind, msg: Message, context: Context, with_model: bool) -> Message:
    """Every request of the run goes through the site's one dispatcher (work.answer, by
    way of its function for the kind), which applies the site's policy before the run's
    model sees it."""
    from fedcmr.client.site import work

    step = {Kind.NYUL: work.histogram_summary, Kind.MEASURE_STATS: work.measure_sums,
            Kind.TRAIN: work.train, Kind.VALIDATE: work.validate, Kind.TEST: work.test}[kind]
    site, order = open_site(context), _order(msg)
    reply = step(site, order, _state(msg)) if with_model else step(site, order)
    refused = getattr(reply, "refused", None)
    if refused is not None:
        log.warning("%s: %s", reply.site, refused)
    return reply.to_message(msg)


@app.query(Kind.NYUL.action)
@site_handler(Kind.NYUL)
def nyul(msg: Message, context: Context) -> Message:
    return _answer(Kind.NYUL, msg, context, with_model=False)


@app.query(Kind.MEASURE_STATS.action)
@site_handler(Kind.MEASURE_STATS)
def measure_stats(msg: Message, context: Context) -> Message:
    return _answer(Kind.MEASURE_STATS, msg, context, with_model=False)


@app.train()
@site_handler(Kind.TRAIN)
def train(msg: Message, context: Context) -> Message:
    return _answer(Kind.TRAIN, msg, context, with_model=True)


@app.query(Kind.VALIDATE.action)
@site_handler(Kind.VALIDATE)
def validate(msg: Message, context: Context) -> Message:
    return _answer(Kind.VALIDATE, msg, context, with_model=True)


@app.query(Kind.TEST.action)
@site_handler(Kind.TEST)
def test(msg: Message, context: Context) -> Message:
    return _answer(Kind.TEST, msg, context, with_model=True)


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
HANDLERS = {Kind.DESCRIBE: describe, Kind.NYUL: nyul, Kind.MEASURE_STATS: measure_stats,
            Kind.TRAIN: train, Kind.VALIDATE: validate, Kind.TEST: test,
            Kind.FINISHED: finished}


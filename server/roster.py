"""The sites of a run as the coordinator sees them: who each is (from `describe`), which
Flower node it is on now, which are away and why, and message exchanges that name the site
behind every failure.

A SuperNode that restarts comes back under a new node id: `refresh()` describes every node
it has not seen and binds a known site name to its new node ("rejoined"). A site is away
after an error reply or a timeout, and while its node is offline (Flower marks a node
offline after 20 s without a heartbeat, support/flower_patches.py); it is asked again as
soon as it is online.
Flower's error replies carry the SuperLink as their sender, so failures are matched to the
site by the id of the message they answer, never by the reply's sender.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from flwr.app import ConfigRecord, Error, Message, RecordDict
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid
from pydantic import ValidationError

from fedcmr.common.packing import PackingError, pack_content, unpack_message
from fedcmr.common.protocol import CONFIG, Kind, RefusalRule
from fedcmr.common.replies import DescribeReply
from fedcmr.server.settings import FederationSettings
from fedcmr.support.exchange_timing import content_bytes, record_sent

log = logging.getLogger("fedcmr.server")
#: Seconds between checks while waiting for sites to connect or come back.
POLL = 2.0
#: Seconds between checks for replies: the first check soon after the push, then ever
#: longer waits up to REPLY_POLL (Flower's `send_and_receive` waits 3 s each time).
FIRST_REPLY_POLL = 0.05
REPLY_POLL = 0.25
#: A ClientApp's failure reads "site NAME: KIND failed: ..." (client/site/client_app.py).
_SITE_IN_REASON = re.compile(r"(?:^|<'|failed: )site (.+?): [\w.]+ failed: ")


def send_and_receive(grid: Grid, messages: list[Message], timeout: float) -> list[Message]:
    """Flower's `Grid.send_and_receive` on a shorter schedule: push the messages, then pull
    after FIRST_REPLY_POLL s, waiting twice as long each time up to REPLY_POLL s, until each
    has its reply or `timeout` s have passed."""
    pushed = time.time()  # the exchange starts with the upload of the messages
    waiting = set(_push_packed(grid, messages))
    push_done = time.time()
    deadline = time.monotonic() + timeout
    received: list[Message] = []
    arrived: dict[str, tuple[float, int]] = {}
    pause = FIRST_REPLY_POLL
    while waiting:
        got = list(grid.pull_messages(waiting))
        received += got
        arrived.update((m.metadata.reply_to_message_id, (time.time(), content_bytes(m)))
                       for m in got)
        waiting -= {m.metadata.reply_to_message_id for m in got}
        if not waiting or time.monotonic() >= deadline:
            break
        time.sleep(pause)
        pause = min(2 * pause, REPLY_POLL)
    record_sent(messages, pushed, arrived, push_done)
    sent = {m.metadata.message_id: m for m in messages}
    return [_unpacked(m, sent.get(m.metadata.reply_to_message_id)) for m in received]


def _push_packed(grid: Grid, messages: list[Message]) -> list[str]:
    """Push `messages` with each model as one object (common/packing.py): content shared
    by several messages is packed once, and every message has its own content back once
    pushed (the ids Flower gives them stay)."""
    own = [m.content if m.has_content() else None for m in messages]
    packed: dict[int, RecordDict] = {}
    for message, content in zip(messages, own, strict=True):
        if content is not None:
            if id(content) not in packed:
                packed[id(content)] = pack_content(content)
            message.content = packed[id(content)]
    try:
        return list(grid.push_messages(messages))
    finally:
        for message, content in zip(messages, own, strict=True):
            if content is not None:
                message.content = content


def _unpacked(reply: Message, asked: Message | None) -> Message:
    """`reply` with its arrays unpacked; one that cannot be unpacked becomes an error
    reply naming why (its site failed this exchange, like any error reply)."""
    try:
        return unpack_message(reply)
    except PackingError as err:
        if asked is None:  # answers no message of this exchange: never used
            return reply
        log.error("a reply to %s from node %d cannot be unpacked: %s",
                  reply.metadata.message_type, reply.metadata.src_node_id, err)
        return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION,
                             reason=f"its reply's arrays cannot be unpacked: {err}"),
                       reply_to=asked)


@dataclass(frozen=True)
class SiteInfo:
    node_id: int
    name: str
    centres: tuple[str, ...]
    frames: int
    subjects: int = 0


@dataclass(frozen=True)
class Failure:
    """Why a site gave no usable reply: the text for the logs, and the rule of the site's
    policy when it refused (typed: the error's code, common/protocol.py RefusalRule); the
    same request would be refused again, so the coordinator does not wait for it."""

    reason: str
    refusal: RefusalRule | None = None

    def __str__(self) -> str:
        return self.reason


class SiteFailure(RuntimeError):
    """The run cannot go on (too few sites, none answered): the message says which and why."""


@dataclass
class Roster:
    grid: Grid
    settings: FederationSettings
    #: Checks a described site before it may take part: a reason to refuse it, or None.
    admit: Callable[[DescribeReply], str | None] = lambda reply: None
    sites: dict[str, SiteInfo] = field(default_factory=dict)
    #: Every loss and return: {"site", "event": "lost" | "rejoined", "reason", "when"}
    #: (a resumed run starts with its earlier attempts').
    events: list[dict] = field(default_factory=list)
    #: Each site's last describe reply (its fingerprint for the handshake).
    described: dict[str, DescribeReply] = field(default_factory=dict)
    #: Sites away now: name -> why (the last failure).
    away: dict[str, str] = field(default_factory=dict)
    #: Sites the run had before a resume, also those that did not come back.
    expected: set[str] = field(default_factory=set)
    #: Sites refused for the whole run (failed describe, refused at the handshake).
    refused: dict[str, str] = field(default_factory=dict)
    #: Nodes already seen that are not (or no longer) a site of this run.
    _strangers: set[int] = field(default_factory=set)

    # -- who is who ------------------------------------------------------------------
    def name(self, node: int) -> str:
        return next((s.name for s in self.sites.values() if s.node_id == node), f"node {node}")

    def node_names(self) -> dict[int, str]:
        return {s.node_id: s.name for s in self.sites.values()}

    def node_frames(self) -> dict[int, int]:
        return {s.node_id: s.frames for s in self.sites.values()}

    def online(self) -> set[int]:
        return set(self.grid.get_node_ids())

    def present(self, names: Iterable[str]) -> list[str]:
        """Those of `names` whose node is online now, in name order."""
        online = self.online()
        return sorted(n for n in names if n in self.sites and self.sites[n].node_id in online)

    def expect(self, names: Iterable[str]) -> None:
        """The sites the run had before a resume: each counts as asked, back or not."""
        self.expected = set(names)

    def note_lost(self, name: str, reason: str, when: str) -> None:
        if name not in self.away:
            log.error("site %s lost (%s): %s", name, when, reason)
            self.events.append({"site": name, "event": "lost", "reason": reason, "when": when})
        self.away[name] = reason

    def refuse(self, name: str, reason: str) -> None:
        """Leave a described site out of the run for good."""
        info = self.sites.pop(name)
        self.described.pop(name, None)
        self._strangers.add(info.node_id)
        self.refused[name] = reason
        log.error("site %s refused: %s", name, reason)

    def note_back(self, name: str, when: str) -> None:
        if self.away.pop(name, None) is not None:
            log.info("site %s is back (%s)", name, when)
            self.events.append({"site": name, "event": "rejoined", "reason": "", "when": when})

    # -- discovery and rejoin ----------------------------------------------------------
    def wait_for(self, count: int, timeout: float) -> list[int]:
        deadline = time.monotonic() + timeout
        while len(nodes := sorted(self.online())) < count:
            if time.monotonic() > deadline:
                raise SiteFailure(f"only {len(nodes)} of {count} sites connected within "
                                  f"{timeout:.0f} s. Fix: start the missing hospitals' "
                                  "`fedcmr client`, or lower --sites")
            time.sleep(POLL)
        return nodes

    def refresh(self, when: str = "discovery") -> list[str]:
        """Describe every node not seen before; returns the names of sites (re)bound."""
        new = sorted(self.online() - {s.node_id for s in self.sites.values()}
                     - self._strangers)
        if not new:
            return []
        bound = []
        content = RecordDict({CONFIG: ConfigRecord()})
        replies, failures = self.exchange(Kind.DESCRIBE, {f"node {n}": n for n in new},
                                          content, when)
        for label, failure in failures.items():
            node = int(label.split()[1])
            self._strangers.add(node)
            reason = str(failure)
            name = (m.group(1) if (m := _SITE_IN_REASON.search(reason)) else label)
            if name not in self.sites:
                self.refused.setdefault(name, reason)
        for label, message in replies.items():
            node = int(label.split()[1])
            try:
                reply = DescribeReply.from_message(message)
            except ValidationError as err:
                self._strangers.add(node)
                self.refused.setdefault(label, f"not a describe reply ({err.errors()[0]})")
                continue
            known = self.sites.get(reply.site)
            if known is None and when != "discovery":
                self._strangers.add(node)
                log.warning("site %s joined after discovery; it takes part from the next "
                            "run", reply.site)
                continue
            problem = None if when == "discovery" else self.admit(reply)
            if problem:
                self._strangers.add(node)
                self.refused[reply.site] = problem
                log.error("site %s refused: %s", reply.site, problem)
                continue
            if known is not None:
                self._strangers.add(known.node_id)
            self.sites[reply.site] = SiteInfo(node, reply.site, reply.centres, reply.frames,
                                              reply.subjects)
            self.described[reply.site] = reply
            self.refused.pop(reply.site, None)
            if known is not None:
                log.info("site %s rejoined as node %d", reply.site, node)
                self.note_back(reply.site, when)
            else:
                log.info("site %s: centres %s, %d frames", reply.site,
                         ", ".join(reply.centres), reply.frames)
            bound.append(reply.site)
        return bound

    # -- exchanges -------------------------------------------------------------------
    def exchange(self, kind: Kind, targets: dict[str, int], content: RecordDict,
                 when: str) -> tuple[dict[str, Message], dict[str, Failure]]:
        """Send `content` to each target (label -> node) and wait at most round-timeout;
        returns the good replies and the failures (label -> reason), both by label."""
        return self.exchange_messages(kind, {
            label: Message(content=content, message_type=kind, dst_node_id=node)
            for label, node in targets.items()}, when)

    def exchange_messages(self, kind: Kind, messages: dict[str, Message], when: str
                          ) -> tuple[dict[str, Message], dict[str, Failure]]:
        """Send the prepared messages (label -> message); see `exchange`. A reply that
        comes after the timeout answers a message no later exchange waits for: it is never
        mixed into another round."""
        targets = {label: m.metadata.dst_node_id for label, m in messages.items()}
        received = send_and_receive(self.grid, list(messages.values()),
                                    self.settings.round_timeout)
        by_id = {m.metadata.message_id: label for label, m in messages.items()}
        ok: dict[str, Message] = {}
        failed: dict[str, Failure] = {}
        for reply in received:
            label = by_id.get(reply.metadata.reply_to_message_id)
            if label is None:  # not an answer to this exchange: never mixed in
                continue
            if reply.has_error():
                failed[label] = Failure(f"{kind} failed: {reply.error.reason}",
                                        RefusalRule.of_code(reply.error.code))
            else:
                ok[label] = reply
        for label in targets:
            if label not in ok and label not in failed:
                failed[label] = Failure(f"no reply to {kind} within "
                                        f"{self.settings.round_timeout:.0f} s (--round-timeout)")
        for label, failure in failed.items():
            if failure.refusal is not None:  # the site is there; it answered no
                log.warning("%s: %s", label, failure)
            elif label in self.sites:
                self.note_lost(label, str(failure), when)
            else:
                log.error("%s: %s", label, failure)
        for label in ok:
            if label in self.sites:
                self.note_back(label, when)
        return ok, failed

    def ask(self, kind: Kind, names: Iterable[str], content: RecordDict, when: str
            ) -> dict[str, Message]:
        """Ask the named sites that are online; sites offline count as away."""
        names = list(names)
        here = self.present(names)
        for name in sorted(set(names) - set(here)):
            self.note_lost(name, "offline (its node missed the SuperLink's heartbeats)", when)
        if not here:
            return {}
        ok, _ = self.exchange(kind, {n: self.sites[n].node_id for n in here}, content, when)
        return ok

    def ask_all(self, kind: Kind, names: list[str], content: RecordDict, when: str
                ) -> dict[str, Message]:
        """Ask every named site. Sites that are offline are waited for (at most
        rejoin-timeout) and asked once they are back under a new node, so that a site
        restarted in time still counts; a site online that fails is not asked again."""
        got = self.ask(kind, names, content, when)
        deadline = time.monotonic() + self.settings.rejoin_timeout
        while time.monotonic() < deadline:
            missing = [n for n in names if n not in got]
            if not (set(missing) - set(self.present(missing))):
                break
            back = sorted(set(self.refresh(when)) & set(missing))
            if back:
                got |= self.ask(kind, back, content, when)
            else:
                time.sleep(POLL)
        return got

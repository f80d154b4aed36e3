"""`fedcmr client`'s SuperNode as a watched child: its output relayed (Flower's retry
warnings summarised, with the address), signals forwarded, and it and every descendant
stopped when the coordinator's run is over or the coordinator cannot be reached.

A coordinator that restarts (`fedcmr server --resume`) starts a SuperLink that no longer
knows this node: Flower's SuperNode would go on polling as a node nobody sends to, its
heartbeat thread dead. The watch sees Flower say so and starts the SuperNode again, which
registers as a new node; the coordinator describes it and binds it to its site."""

from __future__ import annotations

import logging
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from fedcmr.client.runtime.supernode_main import LOOP_ENDED
from fedcmr.support.cli_options import EXIT_FAILED, EXIT_OK
from fedcmr.support.proc_tree import terminate

clog = logging.getLogger("fedcmr.client")
#: Seconds between two "still no coordinator" lines while the SuperNode retries.
RETRY_REPORT_S = 60.0
#: Seconds the SuperNode stays after it sent its FINISHED reply: the SuperLink answers a
#: node that went offline with "Node Unavailable" in place of its reply, so the node stays
#: until the ServerApp (polling every 0.5 s) has collected it.
FINISHED_LINGER_S = 15.0
#: After the run-over mark, at most this long in all before the SuperNode is stopped.
FINISHED_GRACE_S = 60.0
#: A SuperNode still retrying this long after its --max-wait-time is stopped.
GAVE_UP_EXIT_S = 60.0
#: How long the SuperNode and its children get to stop on SIGTERM before SIGKILL.
STOP_GRACE_S = 15.0
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_GAVE_UP = re.compile(r"Giving up reconnection after ([0-9.]+) seconds")
#: Flower's heartbeat, answered by a SuperLink that does not know the node (restarted).
_FORGOTTEN = "does not recognize this SuperNode"
#: At most this many registrations again without a message received in between.
MAX_REJOINS = 3
#: A log line's level as Flower ("INFO :      ...") and uvicorn ("INFO:     ...") print it.
_LEVEL = re.compile(r"(DEBUG|INFO|WARNING|ERROR|CRITICAL)\s*:")
#: fedcmr's own log lines ("INFO fedcmr.client: ...").
_OURS = re.compile(r"(DEBUG|INFO|WARNING|ERROR|CRITICAL) fedcmr")
#: Flower INFO lines an operator wants on the console; the others go to the log file only.
SHOWN_INFO = ("SuperNode ID:",)


def shown(text: str) -> bool:
    """Whether a line of the SuperNode's output (ANSI colours removed) reaches the console
    without -v: fedcmr's own lines, every warning and error, the node's id, and anything not
    a log line (a traceback); not Flower's and uvicorn's start-up banners and INFO chatter."""
    if _OURS.match(text):
        return True
    level = _LEVEL.match(text)
    if level is None:
        return True
    return level.group(1) in ("WARNING", "ERROR", "CRITICAL") or any(
        key in text for key in SHOWN_INFO)


class SuperNodeWatch:
    """The SuperNode as a child in a session of its own: its output relayed (Flower's
    retry warnings summarised, with the address), SIGTERM/SIGINT/SIGHUP forwarded, and it
    and every descendant (flower-superexec, flwr-clientapp) stopped when the run is over."""

    def __init__(self, site: str, address: str, max_wait: float, tls: bool = False,
                 auth_key: bool = False, on_start: Callable[[int], None] | None = None,
                 log_file: Path | None = None, echo_all: bool = False):
        self.site, self.address, self.max_wait = site, address, max_wait
        #: Every line of the SuperNode's output goes here; the console gets those `shown`
        #: lets through, or all of them with `echo_all` (-v).
        self.log_file, self.echo_all = log_file, echo_all
        #: Told each SuperNode's pid as it starts (the site's lock records it).
        self.on_start = on_start
        #: What the site brought: the CA (TLS) and its own key (node authentication).
        self.tls, self.auth_key = tls, auth_key
        self.connected = False  # the SuperNode has been connected at some point
        self.retry_since: float | None = None
        self.gave_up_after: float | None = None  # Flower's own count, when it gives up
        self.last_error = ""  # Flower's last ERROR line
        self.retries = 0
        self.last_report = 0.0
        self.refused = False  # Flower's "Failed to initialize the connection" (exit 305)
        self.reason = ""
        self.finished_sending = False
        self.finished_sent: float | None = None  # when the FINISHED reply left
        self.run_over = False  # the marker is there: retries are no news
        self.signalled = 0
        self.forgotten = False  # the coordinator restarted and no longer knows this node
        self.rejoins = 0  # registrations again since the last message received

    # -- output ---------------------------------------------------------------------
    def relay(self, stream) -> None:
        log = None
        if self.log_file is not None:
            self.log_file.parent.mkdir(parents=True, exist_ok=True)
            log = self.log_file.open("a", encoding="utf-8")
        try:
            self._relay(stream, log)
        finally:
            if log is not None:
                log.close()

    def _relay(self, stream, log) -> None:
        expect_reason = False
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\n")
            text = _ANSI.sub("", line).strip()
            if log is not None:
                log.write(text + "\n")
                log.flush()
            if expect_reason and text:
                self.reason, expect_reason = text, False
            if _FORGOTTEN in text:
                self.forgotten = True
            if "Receiving:" in text:
                self.rejoins = 0
            if "Connection attempt failed, retrying" in text:
                self.on_retry()
                continue
            if gave_up := _GAVE_UP.search(text):
                self.gave_up_after = float(gave_up.group(1))
                continue
            if text.startswith("ERROR") and "fedcmr" not in text.split(":", 1)[0]:
                self.last_error = text.split(":", 1)[-1].strip()
            if "SuperNode ID:" in text or "Connection successful after" in text:
                self.on_connected()
            elif "Failed to initialize the connection to the SuperLink" in text:
                self.refused, expect_reason = True, True
            elif "Sending: query.finished" in text:
                self.finished_sending = True
            elif self.finished_sending and any(
                    s in text for s in ("Sent successfully", "Failed to send", "Ignoring reply")):
                self.finished_sent = time.monotonic()
            if self.echo_all or shown(text):
                sys.stdout.write(line + "\n")
                sys.stdout.flush()

    def bound(self) -> str:
        if self.max_wait > 0:
            return f"gives up after {self.max_wait:g} s (--max-wait-time)"
        return "retries forever (--max-wait-time 0)"

    def on_retry(self) -> None:
        now = time.monotonic()
        if self.run_over:
            return
        if self.retry_since is None:
            self.retry_since, self.retries, self.last_report = now, 0, now
            what = "lost the coordinator" if self.connected else "cannot reach the coordinator"
            clog.warning("site %s: %s at %s; retrying, %s", self.site, what, self.address,
                         self.bound())
        self.retries += 1
        if now - self.last_report >= RETRY_REPORT_S:
            self.last_report = now
            clog.warning("site %s: still no coordinator at %s after %.0f s (%d attempts); %s",
                         self.site, self.address, now - self.retry_since, self.retries,
                         self.bound())

    def on_connected(self) -> None:
        if self.connected and self.retry_since is None:
            return  # Flower says it twice at the start
        clog.info("site %s: %s the coordinator at %s", self.site,
                  "reconnected to" if self.connected else "connected to", self.address)
        self.connected, self.retry_since = True, None

    # -- the process ----------------------------------------------------------------
    def run(self, command: list[str], env: dict[str, str], marker: Path,
            forever: bool) -> int:
        previous = {sig: signal.signal(sig, self.on_signal)
                    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
        try:
            while True:
                code = self.serve(command, env, marker, forever)
                if not self.rejoin():
                    break
                why = ("it restarted and no longer knows this node" if self.forgotten
                       else f"the SuperNode stopped ({self.last_error or f'exit {code}'}); "
                       "a restarted coordinator does not know this node")
                clog.warning("site %s: the coordinator at %s: %s; registering again as a new "
                             "node", self.site, self.address, why)
                # without a coordinator since it was forgotten: the next node ID says back
                self.forgotten, self.refused = False, False
                self.retry_since, self.retries = time.monotonic(), 0
                self.finished_sending, self.finished_sent = False, None
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if self.signalled:
            clog.warning("site %s: stopped by signal %d", self.site, self.signalled)
            return 128 + self.signalled
        if marker.exists() and not forever:
            clog.info("site %s: the coordinator's run is over; SuperNode stopped, exit 0",
                      self.site)
            return EXIT_OK
        clog.error("%s", self.failure(code))
        return EXIT_FAILED

    def serve(self, command: list[str], env: dict[str, str], marker: Path,
              forever: bool) -> int:
        """One SuperNode, until the run is over, it gives up, a signal comes or the
        coordinator forgot it; then it and its descendants are stopped. Its exit code."""
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        if self.on_start is not None:
            self.on_start(proc.pid)
        relay = threading.Thread(target=self.relay, args=(proc.stdout,), daemon=True)
        relay.start()
        finished_at = None
        try:
            while proc.poll() is None and not self.signalled and not self.forgotten:
                if marker.exists() and forever:
                    clog.info("site %s: the coordinator's run is over; serving on "
                              "(--serve-forever)", self.site)
                    marker.unlink(missing_ok=True)
                elif marker.exists():
                    now = time.monotonic()
                    finished_at, self.run_over = finished_at or now, True
                    sent = self.finished_sent
                    if ((sent is not None and now - sent >= FINISHED_LINGER_S)
                            or now - finished_at > FINISHED_GRACE_S):
                        break
                if self.given_up():
                    break
                time.sleep(0.5)
        finally:
            stop_tree(proc)
            relay.join(timeout=5)
        return proc.returncode

    def rejoin(self) -> bool:
        """Start a new SuperNode? Yes when the SuperNode had been connected and then ended
        or was forgotten before the run was over: a restarted SuperLink does not know the
        node (its heartbeat fails, or is refused and Flower stops the SuperNode), or it
        refused a reply. No after a signal, when Flower or the watch gave up waiting for
        the coordinator, or after MAX_REJOINS in a row without a message received."""
        if (self.signalled or self.run_over or not self.connected
                or self.gave_up_after is not None or self.given_up()):
            return False
        self.rejoins += 1
        return self.rejoins <= MAX_REJOINS

    def given_up(self) -> bool:
        """The SuperNode has been retrying well past its --max-wait-time."""
        return (self.max_wait > 0 and self.retry_since is not None and not self.run_over
                and time.monotonic() - self.retry_since > self.max_wait + GAVE_UP_EXIT_S)

    def on_signal(self, signum: int, _frame) -> None:
        self.signalled = signum

    def failure(self, code: int) -> str:
        """One line: why the SuperNode stopped before the run was over, and the fix."""
        waited = (f"{self.gave_up_after:.0f} s" if self.gave_up_after is not None else
                  f"{time.monotonic() - self.retry_since:.0f} s" if self.retry_since else
                  f"{self.max_wait:g} s")
        if not self.connected and self.retry_since is not None:
            return (f"site {self.site}: cannot reach the coordinator at {self.address} for "
                    f"{waited}: is the address right, is `fedcmr server` running there, does "
                    "a firewall block the port? Fix: check --superlink HOST:PORT (the "
                    "coordinator's --port), start the coordinator, or wait longer with "
                    "--max-wait-time" + ("" if self.tls else
                    ". Without --root-certificates this site speaks plaintext, which a "
                    "coordinator with TLS (fedcmr server --secure) cannot answer: then add "
                    "--root-certificates CA"))
        if self.refused and not self.connected and self.tls and not self.auth_key:
            return (f"site {self.site}: the coordinator at {self.address} refused the "
                    f"connection ({self.reason or 'see the SuperNode output above'}): it "
                    "requires node authentication, and this site has no --auth-key. Fix: "
                    "add --auth-key KEY (this site's private key from "
                    "deploy/make_certificates.sh; the coordinator registers its .pub)")
        if self.refused and not self.connected:
            return (f"site {self.site}: the coordinator at {self.address} refused the "
                    f"connection: {self.reason or 'see the SuperNode output above'}. Fix: "
                    "check --root-certificates (the federation CA) and --auth-key (the "
                    "coordinator must have registered this site's public key)")
        if self.retry_since is not None:
            return (f"site {self.site}: lost the coordinator at {self.address} for {waited} "
                    "before its run was over: did `fedcmr server` stop, or its machine or "
                    "the network go down? Fix: restart the coordinator, then this client")
        if code == LOOP_ENDED:
            return (f"site {self.site}: the coordinator at {self.address} broke off the "
                    f"connection before its run was over ({self.last_error or 'no reason'})."
                    " Fix: see the coordinator's log, then restart this client")
        return (f"site {self.site}: the SuperNode stopped (exit {code}) before the "
                f"coordinator's run was over; its output is above")


def stop_tree(proc: subprocess.Popen) -> None:
    """SIGTERM the process, its group and every descendant (flower-superexec starts
    flwr-clientapp in sessions of their own), then SIGKILL what is left after
    STOP_GRACE_S."""
    terminate({proc.pid}, STOP_GRACE_S, group=proc.pid)
    proc.wait()

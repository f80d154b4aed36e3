"""A TCP relay on loopback that a test can cut and restore: a hospital's link to the
SuperLink going dark for real (its bytes stop arriving), with no traffic leaving the machine.

While cut, nothing gets through: the connections that were open are dropped, and new ones
are accepted but held without a byte forwarded either way (as over a dead route, the
hospital's requests time out). Restored, the held connections are closed and new ones are
forwarded again.

With `record` (a folder), every byte the hospital sends is also written there, one file
per connection (conn-N.bin), for a test to search.
"""

from __future__ import annotations

import contextlib
import itertools
import socket
import threading
from pathlib import Path


class Relay:
    def __init__(self, target_port: int, host: str = "127.0.0.1", record: Path | None = None):
        self.target = (host, target_port)
        self.record = record
        self.connections = itertools.count()
        self.server = socket.create_server((host, 0))
        self.port = self.server.getsockname()[1]
        self.cut = threading.Event()
        self.pairs: list[tuple[socket.socket, socket.socket]] = []
        self.held: list[socket.socket] = []
        self.lock = threading.Lock()
        self.closed = False
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            if self.cut.is_set():
                with self.lock:
                    self.held.append(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.pairs.append((client, upstream))
            sink = None
            if self.record is not None:
                self.record.mkdir(parents=True, exist_ok=True)
                sink = open(self.record / f"conn-{next(self.connections)}.bin", "wb")  # noqa: SIM115
            for a, b, out in ((client, upstream, sink), (upstream, client, None)):
                threading.Thread(target=self._pump, args=(a, b, out), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, sink=None) -> None:
        with contextlib.suppress(OSError):
            while not self.cut.is_set():
                data = src.recv(65536)
                if not data or self.cut.is_set():
                    break
                if sink is not None:
                    sink.write(data)
                dst.sendall(data)
        if sink is not None:
            sink.close()
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.close()

    def blackhole(self) -> None:
        """Cut the link: open connections are dropped, new ones refused."""
        self.cut.set()
        with self.lock:
            for pair in self.pairs:
                for s in pair:
                    with contextlib.suppress(OSError):
                        s.shutdown(socket.SHUT_RDWR)
                        s.close()
            self.pairs.clear()

    def restore(self) -> None:
        with self.lock:
            for s in self.held:
                with contextlib.suppress(OSError):
                    s.close()
            self.held.clear()
        self.cut.clear()

    def close(self) -> None:
        self.closed = True
        self.blackhole()
        self.restore()
        with contextlib.suppress(OSError):
            self.server.close()

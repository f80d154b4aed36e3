"""Local TCP ports: one free now, and whether one is free (both sides start servers)."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A port no server listens on now (the kernel's pick)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_is_free(port: int) -> bool:
    """No server listens on the port (connections in TIME_WAIT do not count: a server
    restarted with SO_REUSEADDR, as uvicorn does, binds over them)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True

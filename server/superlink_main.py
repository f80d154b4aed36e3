"""`flower-superlink` as fedcmr's coordinator starts it: Flower's own entry point, with the
Control and Runtime APIs kept to the coordinator's own machine.

Flower 1.42 serves its three HTTP APIs on one port: the Fleet API the hospitals' SuperNodes
use, the Control API (`flwr run`, `flwr ls`, `flwr stop`: start any app, read any run)
and the Runtime API (the ServerApp's). Node authentication guards the Fleet API only, so
anyone who can reach the port and holds the public ca.crt could drive the coordinator: run
an app bundle of their own on it. Here every request from any other address is refused with
HTTP 403 unless it is for the Fleet API (`/v1/fleet/...`) or the health check; the
coordinator's own tools (its `flwr` CLI, the ServerApp process) reach it from 127.0.0.1.

The one change is `FleetOnlyFromOutside`, an ASGI middleware around every app Flower builds
(support/flower_patches.py `wrap_superlink_apps`; tests/test_flower_patches.py checks that
Flower's SuperLink builds its app with the name it wraps, tests/test_attacks.py that a
request from outside is refused).
"""

from __future__ import annotations

import ipaddress
import json
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

#: The command line: `python -c SUPERLINK_MAIN flower-superlink ARGS...` (argv[1] names
#: the tool, so that the process still reads as flower-superlink in `ps`).
SUPERLINK_MAIN = "from fedcmr.server.superlink_main import main; main()"
#: What a request from another machine may reach: the Fleet API and the health check.
OUTSIDE_PATHS = ("/v1/fleet/", "/health")

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable, Callable], Awaitable[None]]


#: The addresses the coordinator's own tools come from (server/flwr_cli.py connects to
#: 127.0.0.1; Flower's ServerApp to the Runtime API on 127.0.0.1).
OWN_ADDRESSES = (ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1"))


def from_this_machine(host: str | None) -> bool:
    """Whether a peer is the coordinator's own tools: 127.0.0.1 or ::1 exactly (another
    loopback address, 127.0.0.2, is treated as the outside: the tests stand in for a
    stranger with it)."""
    if not host:
        return False
    try:
        address = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address) in OWN_ADDRESSES


def allowed_from_outside(path: str) -> bool:
    return path == "/health" or any(path.startswith(p) for p in OUTSIDE_PATHS)


class FleetOnlyFromOutside:
    """ASGI middleware: a request from another machine reaches only the Fleet API and the
    health check; anything else (the Control and Runtime APIs, the API docs) is answered
    403 and never reaches Flower."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Callable, send: Callable) -> None:
        if scope["type"] in ("http", "websocket"):
            client = scope.get("client") or (None, None)
            path = scope.get("path", "")
            if not from_this_machine(client[0]) and not allowed_from_outside(path):
                await _forbidden(send, path)
                return
        await self.app(scope, receive, send)


async def _forbidden(send: Callable, path: str) -> None:
    body = json.dumps({"detail": f"{path}: only the coordinator's own machine may use "
                                 "this API (fedcmr: hospitals reach the Fleet API only)"})
    await send({"type": "http.response.start", "status": 403,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body.encode()})


def install() -> None:
    """Wrap every app Flower's SuperLink builds in FleetOnlyFromOutside."""
    from fedcmr.support import flower_patches

    flower_patches.wrap_superlink_apps(FleetOnlyFromOutside)


def main() -> None:
    sys.argv = sys.argv[1:]
    install()
    import importlib

    from fedcmr.server.superexec_main import superexec_command
    from fedcmr.support import flower_patches

    # the module, not the function of the same name its package exports
    superlink_cli = importlib.import_module("flwr.superlink.cli.flower_superlink")
    # its SuperExec notes how each ServerApp ended (server/superexec_main.py)
    flower_patches.superlink_superexec_through(superlink_cli, superexec_command)
    superlink_cli.flower_superlink()

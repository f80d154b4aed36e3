"""Stay up while HOST:PORT answers, then exit 0: the compose `cohort` service's second half
(deploy/cohort.sh). Gone means no TCP connection for GONE_S seconds once it has answered,
or for NEVER_S seconds if it never did. SIGTERM (a `docker compose stop`, or compose
stopping everything after the coordinator exited) also ends it with 0. Standard library
only: it runs in the image as it is."""

from __future__ import annotations

import signal
import socket
import sys
import time

#: Seconds without an answer after the coordinator has answered once.
GONE_S = 10.0
#: Seconds without any answer at all (a coordinator that never started).
NEVER_S = 600.0
POLL_S = 2.0


def answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=POLL_S):
            return True
    except OSError:  # refused, unreachable, or the name is gone with its container
        return False


def main(host: str, port: int) -> int:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # PID 1 ignores it otherwise
    seen, since = False, time.monotonic()
    while True:
        if answers(host, port):
            seen, since = True, time.monotonic()
        elif time.monotonic() - since > (GONE_S if seen else NEVER_S):
            print(f"cohort: {host}:{port} is gone; stopping", flush=True)
            return 0
        time.sleep(POLL_S)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(sys.argv[2])))

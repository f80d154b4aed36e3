"""The `fedcmr` command: the one place that names both sides' commands (the composition
root). Each side defines its own subcommands and handlers (client/cli.py, server/cli.py,
lab/cli.py); handlers are imported only when their command runs."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from fedcmr.client import cli as client_cli
from fedcmr.lab import cli as lab_cli
from fedcmr.server import cli as server_cli

#: The subcommands in the order `fedcmr --help` lists them.
COMMANDS = [lab_cli.add_synth, client_cli.add_prepare, server_cli.add_centralized,
            lab_cli.add_federate, server_cli.add_server, client_cli.add_client, lab_cli.add_demo]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedcmr", description="Federated HCM diagnosis on cardiac MRI (see README.md).")
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("flwr", "urllib3", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())

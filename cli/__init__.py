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
from fedcmr.lab.study import cli as study_cli
from fedcmr.server import cli as server_cli
from fedcmr.support.cli_options import EXIT_FAILED, EXIT_INTERRUPTED

log = logging.getLogger("fedcmr")

#: The subcommands in the order `fedcmr --help` lists them.
COMMANDS = [lab_cli.add_synth, client_cli.add_prepare, client_cli.add_predict,
            lab_cli.add_centralized, lab_cli.add_federate, server_cli.add_server,
            client_cli.add_keygen, client_cli.add_client, lab_cli.add_demo,
            study_cli.add_study]


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
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        log.error("fedcmr %s interrupted; everything it started is stopped", args.command)
        return EXIT_INTERRUPTED
    except Exception as err:  # a failed run: one line that says why, the traceback on -v
        log.error("fedcmr %s failed: %s%s", args.command, err,
                  "" if args.verbose else " (run with -v for the traceback)")
        log.debug("traceback", exc_info=True)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())

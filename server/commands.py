"""Handlers of the coordinator-side commands."""

from __future__ import annotations

import argparse
import json
import logging

from fedcmr.server.settings import FederationSettings
from fedcmr.support.cli_options import (
    EXIT_BAD_INPUT,
    EXIT_OK,
    EXIT_PARTIAL,
    flat_from_args,
    run_config_from_args,
)

log = logging.getLogger("fedcmr")


def settings_from_args(args: argparse.Namespace, centres: list[str]) -> FederationSettings:
    """The federation settings the command line asks for (the strategy fixes vote-alpha
    unless it is tempered)."""
    return FederationSettings.build(args.strategy, args.vote_alpha,
                                    run_config_from_args(args, centres),
                                    flat_from_args(FederationSettings, args), out_dir=args.out)


def cmd_server(args: argparse.Namespace) -> int:
    from fedcmr.common.results import auc_table
    from fedcmr.server.checkpoint import check_resume
    from fedcmr.server.security import security_from_dir
    from fedcmr.server.superlink import Coordinator

    try:
        if bool(args.secure) == bool(args.insecure):
            raise ValueError("fedcmr server needs --secure CERT_DIR (TLS and node "
                             "authentication: docs/deployment.md) or, on a network you trust, "
                             "--insecure (plaintext: anyone who reaches the port joins as a "
                             "site). Fix: give one of the two" if not args.secure else
                             "--secure and --insecure contradict each other. Fix: drop one")
        settings = settings_from_args(args, []).model_copy(update={"out_dir": args.out.resolve()})
        security = security_from_dir(args.secure) if args.secure else None
        check_resume(settings.out_dir, settings)
    except (FileNotFoundError, ValueError) as err:
        log.error("%s", err)
        return EXIT_BAD_INPUT
    with Coordinator(args.out.resolve(), security=security, port=args.port,
                     host=args.host) as coordinator:
        log.info("SuperLink serving on %s:%d; waiting for %d hospital(s)", args.host,
                 coordinator.port, settings.sites)
        coordinator.run_to_completion(settings, print)
    metrics = json.loads((args.out / "metrics.json").read_text())
    print(auc_table(metrics))
    return exit_code(metrics)


def exit_code(metrics: dict) -> int:
    """EXIT_PARTIAL, with a line naming them, when the figures miss a site; else EXIT_OK."""
    sites = metrics.get("sites") or {}
    if sites.get("lost"):
        log.error("the figures cover %d of %d sites: %s; lost: %s (exit code %d)",
                  len(sites["covered"]), len(sites["asked"]), ", ".join(sites["covered"]),
                  "; ".join(f"{n}: {why}" for n, why in sites["lost"].items()), EXIT_PARTIAL)
        return EXIT_PARTIAL
    return EXIT_OK

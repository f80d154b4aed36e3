"""The coordinator's command: `server` (the SuperLink and the study run, for hospitals that
connect with `fedcmr client`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from fedcmr.server.settings import FederationSettings
from fedcmr.support.cli_options import add_model_option, add_run_options, lazy


def add_strategy_options(p: argparse.ArgumentParser) -> None:
    add_model_option(p, FederationSettings, "strategy")
    add_model_option(p, FederationSettings, "vote_alpha", default=None,
                     help="tempered: site weights proportional to n_k ** alpha (0..1); "
                          "fedavg is 1, equal-vote 0")
    add_model_option(p, FederationSettings, "round_timeout")
    add_model_option(p, FederationSettings, "min_sites")
    add_model_option(p, FederationSettings, "rejoin_timeout")
    add_model_option(p, FederationSettings, "resume")


def add_server(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("server", help="the coordinator: SuperLink + the study run, for real "
                                      "hospitals that connect with `fedcmr client`")
    add_run_options(p, caches_required=False)
    add_strategy_options(p)
    p.add_argument("--host", default="0.0.0.0", help="address to serve the hospitals on")
    p.add_argument("--port", type=int, default=9092, help="port the hospitals connect to")
    add_model_option(p, FederationSettings, "sites", default=None, required=True)
    add_model_option(p, FederationSettings, "wait_sites_timeout", "--wait-sites")
    p.add_argument("--secure", type=Path, default=None, metavar="CERT_DIR",
                   help="TLS + node authentication (files of deploy/make_certificates.sh)")
    p.add_argument("--insecure", action="store_true",
                   help="serve in plaintext, any node admitted: only on a network you trust "
                        "(as Flower's own SuperLink, fedcmr server needs --secure or this)")
    p.set_defaults(func=lazy("fedcmr.server.commands:cmd_server"))

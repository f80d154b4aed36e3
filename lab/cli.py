"""The researcher's commands on one machine: `synth` (the synthetic cohort), `centralized`
(the pooled baseline), `federate` (a
local federation) and `demo` (the README's main job)."""

from __future__ import annotations

import argparse
from pathlib import Path

from fedcmr.common.run_config import RunConfig
from fedcmr.lab.local_federation import RUNTIMES
from fedcmr.lab.sites import SITE_PER
from fedcmr.server.cli import add_strategy_options
from fedcmr.support.cli_options import add_model_option, add_run_options, lazy


def add_synth(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("synth", help="write the synthetic four-centre cohort (M&Ms + ACDC layout)")
    p.add_argument("--out", type=Path, required=True, help="folder to write mnms/ and acdc/ into")
    p.add_argument("--seed", type=int, default=0, help="cohort seed")
    p.add_argument("--scale", type=float, default=1.0, help="fraction of Table 1's counts")
    p.add_argument("--workers", type=int, default=2, help="processes writing subjects")
    p.add_argument("--sites", action="store_true",
                   help="also write OUT/sites/<centre>/: one plain site folder per hospital")
    p.set_defaults(func=lazy("fedcmr.lab.commands:cmd_synth"))


def add_centralized(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("centralized", help="the pooled baseline (CDS) on the same splits")
    add_run_options(p)
    p.set_defaults(func=lazy("fedcmr.lab.commands:cmd_centralized"))


def add_federate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("federate", help="a local federation: SuperLink + one SuperNode per "
                                        "hospital (each centre of the caches) as separate "
                                        "processes on loopback")
    add_run_options(p)
    add_strategy_options(p)
    p.add_argument("--secure", type=Path, default=None, metavar="CERT_DIR",
                   help="TLS + SuperNode authentication with the files of "
                        "deploy/make_certificates.sh in CERT_DIR")
    add_site_policy_option(p, "the defaults")
    p.add_argument("--threads-per-site", type=int, default=1,
                   help="CPU threads of each hospital's training")
    p.add_argument("--runtime", choices=RUNTIMES, default="deployment",
                   help="deployment: one SuperNode process per hospital over gRPC/HTTP (as "
                        "in production); simulation: Flower's Ray runtime, far less overhead "
                        "per round, for large studies (needs fedcmr[simulation]); in-process: "
                        "Flower's simulation engine in this process, the hospitals in turn, "
                        "nothing started (a study's cells)")
    p.add_argument("--site-per", choices=SITE_PER, default=SITE_PER[0],
                   help="centre: one hospital per centre of the caches, each reading only "
                        "its centre's frames (an M&Ms cache of three centres is three sites); "
                        "cache: one hospital per cache folder (default: %(default)s)")
    p.set_defaults(func=lazy("fedcmr.lab.commands:cmd_federate"))


def add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the README's main job: synthesise four hospitals, prepare "
                                    "each, federate them, print the AUC per centre")
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="run folder")
    p.add_argument("--scale", type=float, default=0.25,
                   help="cohort size (0.25: 44 subjects; smaller sites are too small for the "
                        "paper's 7-batch rule: batches of 1-3 frames, and no learning)")
    p.add_argument("--seed", type=int, default=0, help="cohort seed")
    add_model_option(p, RunConfig, "folds", default="0")
    add_model_option(p, RunConfig, "model")
    add_model_option(p, RunConfig, "profile")
    add_model_option(p, RunConfig, "epochs", help="federated rounds (0: the profile's, 12 "
                                                  "for quick)")
    add_model_option(p, RunConfig, "min_subjects")
    p.add_argument("--runtime", choices=RUNTIMES, default="simulation",
                   help="simulation (default): Flower's Ray runtime, about 6 minutes on 2 "
                        "cores; deployment: one SuperNode process per hospital over gRPC/HTTP "
                        "as in production, about twice as slow per round on one machine "
                        "(docs/performance.md)")
    p.add_argument("--beside", choices=("measures", "none"), default="measures",
                   help="a second model federated on the same cohort and fold, shown beside "
                        "the first in one table (measures: the clinical-measures model, "
                        "seconds; none: the first model only)")
    add_strategy_options(p)
    p.add_argument("--workers", type=int, default=2,
                   help="processes for synthesis and preparation")
    add_site_policy_option(p, "deploy/synthetic-site-policy.toml (synthetic sites' "
                              "validation splits are 1-3 subjects)")
    p.set_defaults(func=lazy("fedcmr.lab.commands:cmd_demo"))


def add_site_policy_option(p: argparse.ArgumentParser, otherwise: str) -> None:
    from fedcmr.client.site.policy import POLICY_ENV

    p.add_argument("--site-policy", type=Path, default=None, metavar="FILE",
                   help="every simulated hospital's release policy (as fedcmr client "
                        f"--policy); default: ${POLICY_ENV} where set, else {otherwise}")

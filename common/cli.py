"""The `fedcmr` command. Parsers live here; each side's handlers are imported on use, so a
hospital client never imports the coordinator's code and `fedcmr --help` starts fast."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from importlib import import_module
from pathlib import Path

#: Exit codes (also in docs/cli.md).
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_SKIPPED = 3


def _handler(path: str) -> Callable[[argparse.Namespace], int]:
    module, _, name = path.rpartition(":")

    def run(args: argparse.Namespace) -> int:
        return getattr(import_module(module), name)(args)

    return run


def _add_synth(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("synth", help="write the synthetic four-centre cohort (M&Ms + ACDC layout)")
    p.add_argument("--out", type=Path, required=True, help="folder to write mnms/ and acdc/ into")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scale", type=float, default=1.0, help="fraction of Table 1's counts")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--sites", action="store_true",
                   help="also write OUT/sites/<centre>/: one plain site folder per hospital")
    p.set_defaults(func=_handler("fedcmr.client.commands:cmd_synth"))


def _add_prepare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prepare", help="N4, 1 mm resampling and heart crop of every ED/ES frame")
    p.add_argument("--dataset", choices=["mnms", "acdc", "folder"], required=True)
    p.add_argument("--root", type=Path, required=True,
                   help="dataset root (folder: the site's manifest CSV)")
    p.add_argument("--out", type=Path, required=True, help="cache folder (outside --root)")
    p.add_argument("--centre", action="append", default=None,
                   help="M&Ms centre(s) to keep (repeatable; 'all' for every centre; default: "
                        "the study's three); folder: the site's centre name")
    p.add_argument("--csv", type=Path, default=None, help="M&Ms metadata CSV (default: found)")
    p.add_argument("--centre-map", default=None,
                   help="M&Ms centre numbers to names, e.g. \"1=Sagrada Familia,2=Vall d'Hebron\"")
    p.add_argument("--vendor", default="unknown", help="folder: the site's scanner vendor")
    p.add_argument("--label-numbers", default=None,
                   help="folder: the site's label numbers, e.g. lv=1,myo=2,rv=3")
    p.add_argument("--crop", default="10,150,150", help="crop size z,y,x in voxels")
    p.add_argument("--spacing", default="1,1,1", help="output spacing x,y,z in mm")
    p.add_argument("--no-n4", action="store_true", help="skip N4 bias-field correction")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--strict", action="store_true", help="any skipped subject fails the run")
    p.set_defaults(func=_handler("fedcmr.client.commands:cmd_prepare"))


def add_study_options(p: argparse.ArgumentParser) -> None:
    """Options that define a study run; shared by `centralized` and `federate`."""
    p.add_argument("--cache", type=Path, nargs="+", required=True,
                   help="prepared cache folder(s), one per dataset or site")
    p.add_argument("--protocol", choices=["ccv", "lco"], default="ccv")
    p.add_argument("--fold", default="all", help="fold index, or 'all'")
    p.add_argument("--seed", type=int, default=0, help="network initialisation seed")
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--prior", choices=["baseline", "masked", "structures"], default="structures")
    p.add_argument("--augment", choices=["none", "basic", "shape", "shape-intensity"],
                   default="none")
    p.add_argument("--phases", default="ed,es", help="ed,es or ed")
    p.add_argument("--profile", choices=["smoke", "quick", "paper"], default="quick")
    p.add_argument("--epochs", type=int, default=None,
                   help="at most N epochs (federated: rounds); default: the profile's")
    p.add_argument("--pretrained", default="auto",
                   help="'auto' (torchvision cache), 'none', or a state-dict file")
    p.add_argument("--min-subjects", type=int, default=5,
                   help="smallest subject count a site releases a histogram summary for")
    p.add_argument("--out", type=Path, required=True, help="run folder")


def _add_centralized(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("centralized", help="the pooled baseline (CDS) on the same splits")
    add_study_options(p)
    p.set_defaults(func=_handler("fedcmr.server.commands:cmd_centralized"))


def add_strategy_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--strategy", choices=["fedavg", "equal-vote", "tempered"], default="fedavg")
    p.add_argument("--vote-alpha", type=float, default=None,
                   help="tempered: site weights proportional to n_k ** alpha (0..1)")
    p.add_argument("--round-timeout", type=float, default=900.0,
                   help="seconds to wait for the sites' replies to one message")


def _add_federate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("federate", help="a local federation: SuperLink + one SuperNode per "
                                        "cache as separate processes on loopback")
    add_study_options(p)
    add_strategy_options(p)
    p.add_argument("--secure", type=Path, default=None, metavar="CERT_DIR",
                   help="TLS + SuperNode authentication with the files of "
                        "deploy/make_certificates.sh in CERT_DIR")
    p.add_argument("--threads-per-site", type=int, default=1)
    p.add_argument("--runtime", choices=["deployment", "simulation"], default="deployment",
                   help="deployment: one SuperNode process per hospital over gRPC/HTTP (as "
                        "in production); simulation: Flower's Ray runtime, far less overhead "
                        "per round, for large studies (needs fedcmr[simulation])")
    p.set_defaults(func=_handler("fedcmr.server.commands:cmd_federate"))


def _add_server(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("server", help="the coordinator: SuperLink + the study run, for real "
                                      "hospitals that connect with `fedcmr client`")
    add_study_options(p)
    add_strategy_options(p)
    p.set_defaults(cache=None)
    for action in p._actions:
        if action.dest == "cache":
            action.required = False
            action.help = argparse.SUPPRESS
    p.add_argument("--host", default="0.0.0.0", help="address to serve the hospitals on")
    p.add_argument("--port", type=int, default=9092)
    p.add_argument("--sites", type=int, required=True, help="hospitals to wait for")
    p.add_argument("--wait-sites", type=float, default=1800.0,
                   help="seconds to wait for the hospitals to connect")
    p.add_argument("--secure", type=Path, default=None, metavar="CERT_DIR",
                   help="TLS + node authentication (files of deploy/make_certificates.sh)")
    p.set_defaults(func=_handler("fedcmr.server.commands:cmd_server"))


def _add_client(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("client", help="one hospital: a SuperNode serving its prepared cache")
    p.add_argument("--site", required=True, help="the hospital's name")
    p.add_argument("--data", type=Path, nargs="+", required=True, help="prepared cache(s)")
    p.add_argument("--superlink", required=True, help="coordinator HOST:PORT")
    p.add_argument("--out", type=Path, default=Path("site-output"),
                   help="private output folder (predictions, audit log)")
    p.add_argument("--port", type=int, default=9094, help="local port of the SuperNode")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch default)")
    p.add_argument("--root-certificates", type=Path, default=None, help="the federation CA")
    p.add_argument("--auth-key", type=Path, default=None, help="the site's private key")
    p.add_argument("--max-wait-time", type=float, default=None,
                   help="give up after this many seconds without the coordinator "
                        "(default: wait forever)")
    p.set_defaults(func=_handler("fedcmr.client.commands:cmd_client"))


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the README's main job: synthesise four hospitals, prepare "
                                    "each, federate them, print the AUC per centre")
    p.add_argument("--out", type=Path, default=Path("runs/demo"))
    p.add_argument("--scale", type=float, default=0.25,
                   help="cohort size (0.25: 44 subjects; smaller sites are too small for the "
                        "paper's 7-batch rule: batches of 1-3 frames, and no learning)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fold", default="0")
    p.add_argument("--profile", choices=["smoke", "quick", "paper"], default="quick")
    p.add_argument("--epochs", type=int, default=None,
                   help="federated rounds (default: the profile's, 12 for quick)")
    p.add_argument("--runtime", choices=["simulation", "deployment"], default="simulation",
                   help="simulation (default): Flower's Ray runtime, about 6 minutes on 2 "
                        "cores; deployment: one SuperNode process per hospital over gRPC/HTTP "
                        "as in production, about 4 times slower per round on one machine")
    add_strategy_options(p)
    p.add_argument("--workers", type=int, default=2)
    p.set_defaults(func=_handler("fedcmr.server.commands:cmd_demo"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedcmr", description="Federated HCM diagnosis on cardiac MRI (see README.md).")
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_synth, _add_prepare, _add_centralized, _add_federate, _add_server, _add_client,
    _add_demo]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("flwr", "urllib3", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())

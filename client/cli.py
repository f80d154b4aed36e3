"""The hospital's commands: `prepare` (its scans into a cache), `predict` (a trained model on
new patients), `keygen` (its key pair for node authentication) and `client` (its
SuperNode)."""

from __future__ import annotations

import argparse
from pathlib import Path

from fedcmr.client.data.loaders.acdc import ACDC_PARTS, DEFAULT_ACDC_PART
from fedcmr.client.data.prep_config import PrepConfig
from fedcmr.client.site.policy import POLICY_ENV, STATE_ENV
from fedcmr.support.cli_options import lazy


def add_dataset_options(p: argparse.ArgumentParser, required: bool, out_help: str) -> None:
    """Which raw dataset to read and how (client/commands.load_dataset), and --out:
    `prepare` and `predict`."""
    p.add_argument("--dataset", choices=["mnms", "acdc", "folder"], required=required,
                   help="the layout: M&Ms release, ACDC release, or a site's own folder")
    p.add_argument("--root", type=Path, required=required,
                   help="dataset root (folder: the site's manifest CSV)")
    p.add_argument("--out", type=Path, required=True, help=out_help)
    p.add_argument("--centre", action="append", default=None,
                   help="M&Ms centre(s) to keep (repeatable; 'all' for every centre; default: "
                        "the study's three); folder: the site's centre name")
    p.add_argument("--acdc-part", choices=ACDC_PARTS, default=DEFAULT_ACDC_PART,
                   help="acdc: the release part to take, decided by the training/ or testing/ "
                        "folder a patient sits in, else by its number (001-100 training, "
                        "101-150 testing); the paper used training (default: %(default)s)")
    p.add_argument("--csv", type=Path, default=None, help="M&Ms metadata CSV (default: found)")
    p.add_argument("--centre-map", default=None,
                   help="M&Ms centre numbers to names, e.g. \"1=Sagrada Familia,2=Vall d'Hebron\"")
    p.add_argument("--vendor", default="unknown", help="folder: the site's scanner vendor")
    p.add_argument("--label-numbers", default=None,
                   help="folder: the site's label numbers, e.g. lv=1,myo=2,rv=3")


def add_prepare(sub: argparse._SubParsersAction) -> None:
    defaults = PrepConfig()
    p = sub.add_parser("prepare", help="N4, 1 mm resampling and heart crop of every ED/ES frame")
    add_dataset_options(p, required=True, out_help="cache folder (outside --root)")
    p.add_argument("--crop", default=",".join(f"{v:g}" for v in defaults.crop),
                   help="crop size z,y,x in voxels (default: %(default)s)")
    p.add_argument("--spacing", default=",".join(f"{v:g}" for v in defaults.spacing_mm),
                   help="output spacing x,y,z in mm (default: %(default)s)")
    p.add_argument("--no-n4", action="store_true", help="skip N4 bias-field correction")
    p.add_argument("--workers", type=int, default=2, help="processes preparing subjects")
    p.add_argument("--strict", action="store_true", help="any skipped subject fails the run")
    p.set_defaults(func=lazy("fedcmr.client.commands:cmd_prepare"))


def add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="P(HCM) of new patients with a trained fold's model "
                                       "bundle (docs/predict.md)")
    p.add_argument("--model", type=Path, required=True, metavar="BUNDLE",
                   help="a model bundle: a run's fold_K/bundle folder")
    p.add_argument("--cache", type=Path, nargs="+", default=None,
                   help="prepared cache(s), prepared with the bundle's options (or give "
                        "--dataset and --root instead)")
    add_dataset_options(p, required=False, out_help="output folder: predictions.csv, "
                        "subjects.csv (and cache/ for raw data)")
    p.add_argument("--workers", type=int, default=2, help="processes preparing raw subjects")
    p.set_defaults(func=lazy("fedcmr.client.commands:cmd_predict"))


#: Seconds `fedcmr client` retries a coordinator it cannot reach before it gives up
#: (Flower's SuperNode --max-wait-time, which bounds every retried call to the coordinator).
COORDINATOR_WAIT_S = 600.0


def add_client(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("client", help="one hospital: a SuperNode serving its prepared cache")
    p.add_argument("--site", required=True, help="the hospital's name")
    p.add_argument("--data", type=Path, nargs="+", required=True, help="prepared cache(s)")
    p.add_argument("--centre", action="append", default=None, metavar="NAME",
                   help="serve only this centre's frames of the caches (repeatable; default: "
                        "every centre), e.g. one centre of a shared M&Ms cache")
    p.add_argument("--superlink", required=True, help="coordinator HOST:PORT")
    p.add_argument("--out", type=Path, default=Path("site-output"),
                   help="private output folder (predictions, audit log)")
    p.add_argument("--port", type=int, default=0,
                   help="local port of the SuperNode's API for its ClientApps (default 0: a "
                        "free one)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch default)")
    p.add_argument("--root-certificates", type=Path, default=None,
                   help="the federation CA (without it: plaintext, with a warning)")
    p.add_argument("--auth-key", type=Path, default=None, help="the site's private key")
    p.add_argument("--policy", type=Path, default=None,
                   help="the hospital's release policy, a TOML file (docs/security.md); "
                        f"default: ${POLICY_ENV} where set, else the safe defaults")
    p.add_argument("--state", type=Path, default=None,
                   help="the site's state folder: its release ledger, kept whatever --out "
                        f"(default: ${STATE_ENV}/SITE, else ~/.local/state/fedcmr/SITE)")
    p.add_argument("--reset-ledger", action="store_true",
                   help="forget every release the site remembers (only when you know why "
                        "its ledger is missing or changed: docs/security.md)")
    p.add_argument("--max-wait-time", type=float, default=COORDINATOR_WAIT_S,
                   help="give up (exit 1) after this many seconds without the coordinator, "
                        "when starting or when it goes away mid-run; 0: retry forever "
                        "(default: %(default)s)")
    p.add_argument("--serve-forever", action="store_true",
                   help="keep serving after the coordinator's run is over (default: stop "
                        "with exit 0 when the coordinator says so)")
    p.set_defaults(func=lazy("fedcmr.client.commands:cmd_client"))


def add_keygen(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("keygen", help="the hospital's own key pair for node authentication: "
                                      "the private key stays (0600), the .pub goes to the "
                                      "coordinator")
    p.add_argument("--site", required=True, help="the hospital's name, as in its node config")
    p.add_argument("--out", type=Path, required=True, help="folder for the two key files")
    p.set_defaults(func=lazy("fedcmr.client.commands:cmd_keygen"))


"""Handlers of the hospital-side commands (`prepare`, `predict`, `client`)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from fedcmr.client.data.errors import DatasetError
from fedcmr.client.data.loaders.result import LoadResult
from fedcmr.client.data.prep_config import PrepConfig
from fedcmr.support.cli_options import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, EXIT_SKIPPED

if TYPE_CHECKING:
    from fedcmr.client.runtime.site_lock import SiteLock
    from fedcmr.client.site.policy import SitePolicy

log = logging.getLogger("fedcmr.prepare")
plog = logging.getLogger("fedcmr.predict")


def _triple(text: str, kind: type, what: str) -> tuple:
    try:
        values = tuple(kind(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or any(v <= 0 for v in values):
        raise DatasetError(f"{what} {text!r}: expected three positive numbers like 10,150,150")
    return values


def load_dataset(args: argparse.Namespace) -> tuple[LoadResult, list[Path]]:
    """The loader the --dataset flag names, and the input roots that must stay untouched."""
    if args.dataset == "acdc":
        from fedcmr.client.data.loaders.acdc import load_acdc
        return load_acdc(args.root, args.acdc_part), [args.root]
    if args.dataset == "mnms":
        from fedcmr.client.data.loaders.mnms import load_mnms
        from fedcmr.common.centres import parse_centre_map
        centre_map = parse_centre_map(args.centre_map) if args.centre_map else None
        return load_mnms(args.root, args.csv, args.centre, centre_map), [args.root]
    from fedcmr.client.data.loaders.site_folder import load_site_folder, parse_label_numbers
    labels = parse_label_numbers(args.label_numbers) if args.label_numbers else None
    centre = (args.centre or [args.root.parent.name])[0]
    return load_site_folder(args.root, centre, args.vendor, labels), [args.root.parent]


def cmd_prepare(args: argparse.Namespace) -> int:
    from fedcmr.client.data.prep_config import N4Params
    from fedcmr.client.data.prepare import check_out_not_in_root

    try:
        config = PrepConfig(n4=N4Params(enabled=not args.no_n4),
                            crop=_triple(args.crop, int, "--crop"),
                            spacing_mm=_triple(args.spacing, float, "--spacing"))
        if not args.root.exists():
            raise DatasetError(f"{args.root}: no such file or folder. Fix: point --root at "
                               "the dataset")
        loaded, roots = load_dataset(args)
        check_out_not_in_root(args.out, roots)
    except DatasetError as err:
        log.error("%s", err)
        return EXIT_BAD_INPUT
    from fedcmr.client.data.prepare import prepare_loaded

    report = prepare_loaded(loaded, config, args.out, args.workers, progress=not args.quiet)
    if report.skipped:
        return EXIT_FAILED if args.strict else EXIT_SKIPPED
    return EXIT_OK


def cmd_predict(args: argparse.Namespace) -> int:
    """A bundle on caches, or on raw data prepared with its options into OUT/cache
    (client/predict.py). Bad input (bundle, cache, data): one line, exit 2; some raw
    subjects skipped: predictions for the others, exit 3."""
    from fedcmr.client.data.prepare import check_out_not_in_root
    from fedcmr.client.predict import predict_caches, prepare_raw
    from fedcmr.common.bundle import read_metadata
    from fedcmr.common.models.bundles import bundle_plugin

    raw = args.dataset is not None or args.root is not None
    skipped = 0
    try:
        if raw == (args.cache is not None) or (raw and None in (args.dataset, args.root)):
            raise DatasetError("fedcmr predict needs either --cache CACHE... or --dataset and "
                               "--root (raw data). Fix: give one of the two")
        # a bad bundle is refused before any preparing
        bundle_plugin(args.model, read_metadata(args.model))
        caches = args.cache
        if raw:
            if not args.root.exists():
                raise DatasetError(f"{args.root}: no such file or folder. Fix: point --root "
                                   "at the dataset")
            loaded, roots = load_dataset(args)
            check_out_not_in_root(args.out, roots)
            cache, skipped = prepare_raw(loaded, args.model, args.out, args.workers,
                                         progress=not args.quiet)
            caches = [cache]
        metadata, report = predict_caches(args.model, caches, args.out)
    except (DatasetError, ValueError, FileNotFoundError) as err:
        plog.error("%s", err)
        return EXIT_BAD_INPUT
    print(report.summary(metadata))
    plog.info("predictions in %s (per frame) and %s (per subject)",
             args.out / "predictions.csv", args.out / "subjects.csv")
    return EXIT_SKIPPED if skipped else EXIT_OK


def cmd_client(args: argparse.Namespace) -> int:
    """Serve the hospital's cache as a SuperNode (a child process) until the coordinator
    says the run is over (exit 0), or give up on a coordinator it cannot reach (one line
    naming the address, exit 1)."""
    from fedcmr.client.runtime.site_lock import SiteBusy, SiteLock
    from fedcmr.client.runtime.supernode_watch import clog
    from fedcmr.client.site.ledger import LedgerError, check_ledger, reset_ledger
    from fedcmr.client.site.policy import SitePolicy, policy_default, state_default
    from fedcmr.common.app_bundle import bundle_digest
    from fedcmr.support.ports import port_is_free

    missing = [p for p in args.data if not (p / "manifest.csv").exists()]
    if missing:
        log.error("%s: no prepared cache (manifest.csv). Fix: fedcmr prepare ... --out %s",
                  missing[0], missing[0])
        return EXIT_BAD_INPUT
    args.policy = args.policy or policy_default()
    try:
        centres = served_centres(args.data, args.centre)
        security = security_args(args.root_certificates, args.auth_key)
        policy = SitePolicy.load(args.policy)
        own = bundle_digest()  # FileNotFoundError: not installed from its source folder
        state = (args.state or state_default(args.site)).resolve()
        ledger = policy.ledger_path(state)
        if args.reset_ledger and reset_ledger(ledger):
            clog.warning("site %s: --reset-ledger: forgot every release in %s", args.site,
                         ledger)
        check_ledger(ledger)  # missing or changed: the site stops here
    except (ValueError, FileNotFoundError, LedgerError) as err:
        log.error("%s", err)
        return EXIT_BAD_INPUT
    lock = SiteLock(state, args.site)
    try:
        lock.acquire()  # first: another client of this site is the likelier cause of a busy port
    except SiteBusy as busy:
        log.error("%s", busy)
        return EXIT_BAD_INPUT
    try:
        if args.port and not port_is_free(args.port):
            log.error("site %s: port %d (--port, the SuperNode's local API) is in use on "
                      "this machine. Fix: leave --port out (a free one is picked) or name a "
                      "free one", args.site, args.port)
            return EXIT_BAD_INPUT
        return _serve(args, lock, policy=policy, own=own, state=state, ledger=ledger,
                      centres=centres, security=security)
    finally:
        lock.release()


def _serve(args: argparse.Namespace, lock: SiteLock, *, policy: SitePolicy, own: str,
           state: Path, ledger: Path, centres: tuple[str, ...], security: list[str]) -> int:
    """`fedcmr client` once its inputs are checked and the site's lock is held (`own`: this
    installation's app bundle digest)."""
    from fedcmr.client.runtime.supernode_main import SUPERNODE_MAIN
    from fedcmr.client.runtime.supernode_watch import SuperNodeWatch, clog
    from fedcmr.client.site.app_approval import APPROVED_ENV
    from fedcmr.common.node_config import NodeConfig
    from fedcmr.common.protocol import FINISHED_MARKER
    from fedcmr.support.flower_env import flower_env, tool
    from fedcmr.support.ports import free_port
    from fedcmr.support.proc_tree import PARENT_ENV

    approved = {own, *(d.lower() for d in policy.approved_bundles)}
    out = args.out.resolve()
    node = NodeConfig(site=args.site, data_path=tuple(p.resolve() for p in args.data),
                      out_dir=out, threads=args.threads, centres=centres,
                      policy=args.policy.resolve() if args.policy else None, state_dir=state)
    command = [sys.executable, "-c", SUPERNODE_MAIN, tool("flower-supernode"), "--superlink",
               args.superlink, "--port", str(args.port or free_port()), "--node-config",
               node.to_text(), *security]
    if args.max_wait_time > 0:
        command += ["--max-wait-time", f"{args.max_wait_time:g}"]
    out.mkdir(parents=True, exist_ok=True)
    (out / FINISHED_MARKER).unlink(missing_ok=True)  # an earlier run's
    watch = SuperNodeWatch(args.site, args.superlink, args.max_wait_time,
                           tls=args.root_certificates is not None,
                           auth_key=args.auth_key is not None, on_start=lock.note_supernode,
                           log_file=out / "logs" / "supernode.log",
                           echo_all=getattr(args, "verbose", False))
    clog.info("site %s release policy (%s): %s", args.site, args.policy or "the defaults",
              "; ".join(policy.lines()))
    clog.info("site %s remembers what it released in %s", args.site, ledger)
    clog.info("site %s runs only app bundles it approved: this installation's (sha256 "
              "%s…) and %d more", args.site, own[:12], len(approved) - 1)
    if "--insecure" in security:
        clog.warning("INSECURE: no --root-certificates, so this site talks to %s in "
                     "plaintext and unauthenticated; anyone on the network can read and "
                     "change what passes. Fix: --root-certificates CA --auth-key KEY "
                     "(docs/security.md)", args.superlink)
    clog.info("site %s serving %s to the coordinator at %s (%s); Flower's own output in %s "
              "(-v: here too)", args.site, ", ".join(map(str, args.data)), args.superlink,
              "serving until stopped" if args.serve_forever else
              "stops when the coordinator's run is over", out / "logs" / "supernode.log")
    # the SuperNode dies with this process, however it ends; it installs the app bundles it
    # runs in a Flower home of this site's own (unless FLWR_HOME says where), so that two
    # sites on one machine never install into one folder at once
    env = flower_env(**{APPROVED_ENV: ",".join(sorted(approved)), PARENT_ENV: str(os.getpid()),
                        "FLWR_HOME": os.environ.get("FLWR_HOME") or str(state / "flwr")})
    return watch.run(command, env, out / FINISHED_MARKER, args.serve_forever)


def served_centres(caches: list[Path], centres: list[str] | None) -> tuple[str, ...]:
    """The --centre filter, checked against the caches now (not at the first message)."""
    from fedcmr.common.cache_format import read_manifest

    held = {e.centre for cache in caches for e in read_manifest(cache)}
    missing = sorted(set(centres or ()) - held)
    if missing:
        raise ValueError(f"--centre {', '.join(missing)}: not in {', '.join(map(str, caches))} "
                         f"(they hold {', '.join(sorted(held))}). Fix: name a centre the "
                         "caches hold, or drop --centre to serve all")
    return tuple(centres or ())


def security_args(ca: Path | None, key: Path | None) -> list[str]:
    """flower-supernode's security flags; ValueError for settings that would not protect
    what the site thinks they protect (fail closed, never a silent fallback)."""
    for what, path in (("--root-certificates", ca), ("--auth-key", key)):
        if path is not None and not Path(path).is_file():
            raise ValueError(f"{what} {path}: no such file. Fix: point it at the file "
                             "deploy/make_certificates.sh wrote for this site")
    if key is not None and ca is None:
        raise ValueError("--auth-key without --root-certificates: node authentication needs "
                         "TLS, and without the CA this site would talk in plaintext. Fix: "
                         "add --root-certificates CA (the federation's ca.crt)")
    if key is not None:
        from fedcmr.client.site.keys import check_private_key

        check_private_key(key)
    if ca is None:
        return ["--insecure"]
    args = ["--root-certificates", str(ca)]
    return args + (["--auth-supernode-private-key", str(key)] if key else [])


def cmd_keygen(args: argparse.Namespace) -> int:
    """Make the site's key pair; an existing key is never overwritten (exit 2)."""
    from fedcmr.client.site.keys import KeyExists, make_site_keys

    try:
        private, public = make_site_keys(args.site, args.out)
    except KeyExists as err:
        log.error("%s", err)
        return EXIT_BAD_INPUT
    print(f"private key: {private} (mode 600: it stays at this site; `fedcmr client "
          f"--auth-key {private}`)")
    print(f"public key:  {public} (send this file to the coordinator, who registers it)")
    return EXIT_OK


"""Handlers of the coordinator-side commands."""

from __future__ import annotations

import argparse
import json
import logging

from fedcmr.common.cli import EXIT_BAD_INPUT, EXIT_OK
from fedcmr.common.run_config import RunConfig

log = logging.getLogger("fedcmr")


def run_config_from_args(args: argparse.Namespace, centres: list[str]) -> RunConfig:
    folds = None if args.fold == "all" else tuple(int(f) for f in str(args.fold).split(","))
    phases = tuple(p.strip().upper() for p in args.phases.split(",") if p.strip())
    return RunConfig(protocol=args.protocol, folds=folds, seed=args.seed,
                     split_seed=args.split_seed, prior=args.prior, augment=args.augment,
                     phases=phases, profile=args.profile, epochs=args.epochs,
                     pretrained=args.pretrained,
                     min_subjects=args.min_subjects, centres=tuple(sorted(centres)))


def cmd_centralized(args: argparse.Namespace) -> int:
    from fedcmr.client.dataset import load_cache
    from fedcmr.common.results import auc_table
    from fedcmr.server.centralized import run_centralized

    try:
        frames = load_cache(args.cache)
        config = run_config_from_args(args, sorted({f.entry.centre for f in frames}))
        config.fold_list()
    except (FileNotFoundError, ValueError) as err:
        log.error("%s", err)
        return EXIT_BAD_INPUT
    frames = [f for f in frames if f.entry.phase in config.phases]
    log.info("%d frames from %d centres; %s, folds %s, profile %s", len(frames),
             len(config.centres), config.protocol, config.fold_list(), config.profile)
    metrics = run_centralized(frames, config, args.out, progress=not args.quiet)
    print(auc_table(metrics))
    log.info("predictions and metrics in %s", args.out)
    return EXIT_OK


def settings_from_args(args: argparse.Namespace, centres: list[str]):
    from fedcmr.server.settings import FederationSettings
    from fedcmr.server.strategies import strategy_alpha

    alpha = strategy_alpha(args.strategy, args.vote_alpha)
    return FederationSettings(strategy=args.strategy, vote_alpha=alpha, out_dir=args.out,
                              round_timeout=args.round_timeout,
                              run=run_config_from_args(args, centres))


def cmd_federate(args: argparse.Namespace) -> int:
    from fedcmr.common.results import auc_table
    from fedcmr.server.local_federation import run_local_federation, sites_from_caches
    from fedcmr.server.security import security_from_dir

    try:
        sites = sites_from_caches(args.cache)
        settings = settings_from_args(args, [])
        security = security_from_dir(args.secure, [s.name for s in sites]) \
            if args.secure else None
        if security and args.runtime == "simulation":
            raise ValueError("--secure protects SuperNode connections; the simulation "
                             "runtime has none. Fix: drop --secure or use --runtime deployment")
    except (FileNotFoundError, ValueError) as err:
        log.error("%s", err)
        return EXIT_BAD_INPUT
    metrics = run_local_federation(args.cache, settings, args.out, security,
                                   args.threads_per_site,
                                   echo=(lambda _: None) if args.quiet else print,
                                   runtime=args.runtime)
    print(auc_table(metrics))
    log.info("federated run in %s (%.0f s): metrics.json, predictions.csv, rounds.csv",
             args.out, metrics.get("elapsed_s", 0))
    return EXIT_OK


def cmd_server(args: argparse.Namespace) -> int:
    from fedcmr.server.local_federation import LocalFederation, run_to_completion
    from fedcmr.server.security import security_from_dir

    try:
        settings = settings_from_args(args, []).model_copy(update={
            "out_dir": args.out.resolve(), "min_sites": args.sites,
            "wait_sites_timeout": args.wait_sites})
        security = security_from_dir(args.secure) if args.secure else None
    except (FileNotFoundError, ValueError) as err:
        log.error("%s", err)
        return EXIT_BAD_INPUT
    with LocalFederation(args.out.resolve(), [], security=security, port=args.port,
                         host=args.host) as fed:
        log.info("SuperLink serving on %s:%d; waiting for %d hospital(s)", args.host,
                 fed.port, args.sites)
        run_to_completion(fed, settings, print)
    from fedcmr.common.results import auc_table

    metrics = json.loads((args.out / "metrics.json").read_text())
    print(auc_table(metrics))
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    """synth -> prepare (one cache per hospital) -> federate -> AUC table."""
    from fedcmr.common.centres import STUDY_MNMS_CENTRES, slug
    from fedcmr.common.cli import main as fedcmr

    if args.runtime == "simulation":  # say so now, not after preparing the data
        from fedcmr.server.local_federation import require_ray

        try:
            require_ray()
        except RuntimeError as err:
            log.error("%s", err)
            return EXIT_BAD_INPUT
    quiet = ["-q"] if args.quiet else []
    data, caches = args.out / "data", args.out / "cache"
    log.info("1/3 synthesising a four-centre cohort (scale %s) in %s", args.scale, data)
    if fedcmr([*quiet, "synth", "--out", str(data), "--scale", str(args.scale), "--seed",
               str(args.seed), "--workers", str(args.workers)]) != EXIT_OK:
        return EXIT_BAD_INPUT
    log.info("2/3 preparing each hospital's data (N4, 1 mm, crop)")
    jobs = [("mnms", data / "mnms", centre) for centre in STUDY_MNMS_CENTRES]
    jobs.append(("acdc", data / "acdc", "ACDC"))
    for dataset, root, centre in jobs:
        extra = ["--centre", centre] if dataset == "mnms" else []
        code = fedcmr([*quiet, "prepare", "--dataset", dataset, "--root", str(root), "--out",
                       str(caches / slug(centre)), "--workers", str(args.workers), *extra])
        if code not in (EXIT_OK, 3):
            return code
    log.info("3/3 federating four hospitals (%s runtime, %s, profile %s, fold %s)",
             args.runtime, args.strategy, args.profile, args.fold)
    argv = [*quiet, "federate", "--cache", *(str(caches / slug(c)) for *_, c in jobs),
            "--strategy", args.strategy, "--profile", args.profile, "--fold", args.fold,
            "--runtime", args.runtime,
            "--out", str(args.out / "federated"), "--round-timeout", str(args.round_timeout)]
    if args.epochs is not None:
        argv += ["--epochs", str(args.epochs)]
    if args.vote_alpha is not None:
        argv += ["--vote-alpha", str(args.vote_alpha)]
    return fedcmr(argv)

"""Handlers of the coordinator-side commands."""

from __future__ import annotations

import argparse
import logging

from fedcmr.common.cli import EXIT_BAD_INPUT, EXIT_OK
from fedcmr.common.run_config import RunConfig

log = logging.getLogger("fedcmr")


def run_config_from_args(args: argparse.Namespace, centres: list[str]) -> RunConfig:
    folds = None if args.fold == "all" else tuple(int(f) for f in str(args.fold).split(","))
    phases = tuple(p.strip().upper() for p in args.phases.split(",") if p.strip())
    return RunConfig(protocol=args.protocol, folds=folds, seed=args.seed,
                     split_seed=args.split_seed, prior=args.prior, augment=args.augment,
                     phases=phases, profile=args.profile, pretrained=args.pretrained,
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
    except (FileNotFoundError, ValueError) as err:
        log.error("%s", err)
        return EXIT_BAD_INPUT
    metrics = run_local_federation(args.cache, settings, args.out, security,
                                   args.threads_per_site,
                                   echo=(lambda _: None) if args.quiet else print)
    print(auc_table(metrics))
    log.info("federated run in %s (%.0f s): metrics.json, predictions.csv, rounds.csv",
             args.out, metrics.get("elapsed_s", 0))
    return EXIT_OK

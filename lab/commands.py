"""Handlers of the researcher's commands: `synth`, `centralized` (the pooled baseline,
which needs pooled data and so runs at neither side), `federate` and `demo`."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from fedcmr.common.run_config import RunConfig
from fedcmr.support.cli_options import EXIT_BAD_INPUT, EXIT_OK, run_config_from_args

log = logging.getLogger("fedcmr")


def cmd_synth(args: argparse.Namespace) -> int:
    from fedcmr.lab.synthetic import synthesize

    try:
        summary = synthesize(args.out, seed=args.seed, scale=args.scale,
                             workers=args.workers, progress=not args.quiet)
    except FileExistsError as err:
        log.error("%s. Fix: choose an empty --out folder (or one fedcmr synth wrote)", err)
        return EXIT_BAD_INPUT
    for c in summary.centres.values():
        log.info("%-16s %-5s %-8s NOR %3d  HCM %3d  (+%d outside the study)", c.centre,
                 c.dataset, c.vendor, c.nor, c.hcm, c.other)
    log.info("synthetic cohort in %s (%.0f MB, %.0f s)", args.out, summary.bytes_written / 1e6,
             summary.seconds)
    if args.sites:
        from fedcmr.lab.site_folders import write_site_folders

        for centre, folder in write_site_folders(args.out, args.out / "sites").items():
            log.info("site folder of %s: %s", centre, folder)
    return EXIT_OK


def cmd_centralized(args: argparse.Namespace) -> int:
    from fedcmr.common.bundle import preprocessing_of_caches
    from fedcmr.common.learning.data import load_cache
    from fedcmr.common.measures import read_all_measures
    from fedcmr.common.models import registry
    from fedcmr.common.results import auc_table
    from fedcmr.lab.centralized import run_centralized

    try:
        frames = load_cache(args.cache)
        config = run_config_from_args(args, sorted({f.entry.centre for f in frames}))
        config.fold_list()
        if config.private:
            raise ValueError("--dp-clip applies to federated runs (it protects the weights "
                             "a site releases); the centralised baseline pools the data. "
                             "Fix: drop --dp-clip, or run fedcmr federate")
        needs = registry.get(config.model).needs_measures
        measures = read_all_measures(args.cache) if needs else None
    except (FileNotFoundError, ValueError) as err:
        log.error("%s", err)
        return EXIT_BAD_INPUT
    try:  # for the folds' bundles (common/bundle.py)
        preprocessing = preprocessing_of_caches(args.cache)
    except ValueError as err:
        preprocessing = None
        log.warning("the bundles will not record a preprocessing, so `fedcmr predict` "
                    "cannot check new data against them: %s", err)
    log.info("%d frames (%s) from %d centres; %s, folds %s, profile %s",
             sum(f.entry.phase in config.phases for f in frames), ",".join(config.phases),
             len(config.centres), config.protocol, config.fold_list(), config.profile)
    metrics = run_centralized(frames, config, args.out, progress=not args.quiet,
                              preprocessing=preprocessing, measures=measures)
    print(auc_table(metrics))
    log.info("predictions and metrics in %s", args.out)
    return EXIT_OK


def federate(caches: list[Path], settings, out: Path, security=None,
             threads_per_site: int = 1, runtime: str = "deployment",
             quiet: bool = False, site_policy: Path | None = None,
             site_per: str = "centre", table: bool = True) -> int:
    """A local federation of the caches (one hospital per centre, or per cache), its AUC
    table printed (unless `table` is False)."""
    from fedcmr.common.results import auc_table
    from fedcmr.lab.local_federation import run_local_federation
    from fedcmr.server.commands import exit_code

    metrics = run_local_federation(caches, settings, out, security, threads_per_site,
                                   echo=(lambda _: None) if quiet else print, runtime=runtime,
                                   site_policy=site_policy, site_per=site_per)
    if table:
        print(auc_table(metrics))
    log.info("federated run in %s (%.0f s): metrics.json, predictions.csv, rounds.csv",
             out, metrics.get("elapsed_s", 0))
    return exit_code(metrics)


def cmd_federate(args: argparse.Namespace) -> int:
    from fedcmr.client.site.policy import SitePolicy
    from fedcmr.lab.sites import sites_from_caches
    from fedcmr.server.checkpoint import check_resume
    from fedcmr.server.commands import settings_from_args
    from fedcmr.server.security import security_from_dir

    try:
        SitePolicy.load(args.site_policy)  # a bad file is named now ($FEDCMR_SITE_POLICY too)
        sites = sites_from_caches(args.cache, args.site_per)
        settings = settings_from_args(args, [])
        check_resume(args.out.resolve(), settings)
        security = security_from_dir(args.secure, [s.name for s in sites]) \
            if args.secure else None
        if security and args.runtime != "deployment":
            raise ValueError(f"--secure protects SuperNode connections; the {args.runtime} "
                             "runtime has none. Fix: drop --secure or use --runtime deployment")
    except (FileNotFoundError, ValueError) as err:
        log.error("%s", err)
        return EXIT_BAD_INPUT
    return federate(args.cache, settings, args.out, security, args.threads_per_site,
                    args.runtime, args.quiet, args.site_policy, args.site_per)


#: The demo's hospitals' policy, relative to the source folder (the file says why).
SYNTHETIC_SITE_POLICY = "deploy/synthetic-site-policy.toml"


def cmd_demo(args: argparse.Namespace) -> int:
    """synth -> prepare (one cache per hospital) -> federate the model, and the measures
    model beside it -> one AUC table with intervals."""
    from fedcmr.client.site.policy import SitePolicy, policy_default
    from fedcmr.common.app_bundle import app_dir
    from fedcmr.lab.demo_table import interval_table
    from fedcmr.lab.study.cohort import synthetic_caches
    from fedcmr.server.checkpoint import check_resume
    from fedcmr.server.settings import FederationSettings
    from fedcmr.server.superlink import require_ray

    models = [args.model] + ([args.beside] if args.beside not in ("none", args.model) else [])
    runs = {model: args.out / ("federated" if i == 0 else f"federated-{model}")
            for i, model in enumerate(models)}
    try:
        args.site_policy = args.site_policy or policy_default()
        SitePolicy.load(args.site_policy)
        if args.runtime == "simulation":  # say so now, not after preparing the data
            require_ray()
        settings = {}
        for model, folder in runs.items():
            settings[model] = FederationSettings.build(
                args.strategy, args.vote_alpha,
                RunConfig(folds=args.fold, model=model, profile=args.profile,
                          epochs=args.epochs, min_subjects=args.min_subjects),
                round_timeout=args.round_timeout, min_sites=args.min_sites,
                rejoin_timeout=args.rejoin_timeout,
                # a demo run again continues its earlier run (same settings) or says why not
                resume=args.resume or (folder / "checkpoint/settings.json").exists())
            check_resume(folder.resolve(), settings[model])
    except (RuntimeError, ValueError) as err:
        log.error("%s", err)
        return EXIT_BAD_INPUT
    steps = 1 + len(runs)
    log.info("1/%d a four-centre synthetic cohort, each hospital's data prepared", steps)
    try:
        caches = synthetic_caches(args.out, args.scale, args.seed, args.workers,
                                  progress=not args.quiet)
    except ValueError as err:
        log.error("%s", err)
        return EXIT_BAD_INPUT
    policy = args.site_policy or app_dir() / SYNTHETIC_SITE_POLICY
    log.info("the synthetic hospitals' release policy (%s): %s", policy,
             "; ".join(SitePolicy.load(policy).lines()))
    code = EXIT_OK
    for step, (model, folder) in enumerate(runs.items(), start=2):
        what = ("federating four hospitals: the %s model" if step == 2 else
                "the %s model beside it, federated on the same cohort and fold")
        log.info("%d/%d " + what + " (%s runtime, %s, profile %s, fold %s)", step, steps,
                 model, args.runtime, args.strategy, args.profile, args.fold)
        code = federate(caches, settings[model], folder, runtime=args.runtime,
                        quiet=args.quiet, site_policy=policy, table=False)
        if code != EXIT_OK:
            break
    done = {model: folder for model, folder in runs.items()
            if (folder / "predictions.csv").exists()}
    if done:
        print(interval_table(done))
    return code

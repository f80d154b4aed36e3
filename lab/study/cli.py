"""`fedcmr study`: its options and handler."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from fedcmr.support.cli_options import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, lazy

log = logging.getLogger("fedcmr.study")


def add_study(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("study", help="the paper's protocol as one command: a resumable grid "
                                     "of CDS and FL runs, results.csv and a report")
    p.add_argument("--config", type=Path, required=True,
                   help="STUDY.toml (studies/small.toml, studies/paper.toml)")
    p.add_argument("--out", type=Path, required=True,
                   help="study folder; run again to resume, share it to work in parallel")
    p.add_argument("--cache", type=Path, nargs="+", default=None,
                   help="prepared caches (replace the config's; none anywhere: the "
                        "synthetic cohort the config names)")
    p.add_argument("--profile", choices=["smoke", "quick", "paper"], default=None,
                   help="compute profile (default: the config's)")
    p.add_argument("--runtime", choices=["in-process", "simulation", "deployment"],
                   default=None, help="FL cells on Flower's simulation engine in the cell's "
                                      "process, on its simulation runtime (Ray per cell), or "
                                      "one SuperNode process per site (default: the config's)")
    p.add_argument("--ray", default=None, metavar="ADDRESS",
                   help="run the cells as Ray tasks on this Ray cluster (auto, HOST:PORT, or "
                        "local; one GPU per cell where it has GPUs; default: the config's "
                        "`ray`, empty: this machine's processes); docs/study.md")
    p.add_argument("--only", action="append", default=[], metavar="KEY=VALUE[,VALUE]",
                   help="run only the cells with these settings (repeatable), e.g. "
                        "framework=cds, seed=0,1, protocol=lco")
    p.add_argument("--workers", type=int, default=1,
                   help="processes running cells at once on this machine")
    p.add_argument("--no-report", action="store_true", help="results.csv only")
    p.add_argument("--report-only", action="store_true",
                   help="no cell runs: results.csv and the report from the finished cells")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=lazy("fedcmr.lab.study.cli:cmd_study"))


def cmd_study(args: argparse.Namespace) -> int:
    from fedcmr.lab.study.cells import parse_only
    from fedcmr.lab.study.config import StudyConfig
    from fedcmr.lab.study.runner import Study, start_workers, study_data
    from fedcmr.server.processes import exit_on_termination

    exit_on_termination()
    if threads := os.environ.get("FEDCMR_STUDY_THREADS"):
        import torch

        torch.set_num_threads(int(threads))
    try:
        config = StudyConfig.load(args.config)
        update = {k: v for k, v in (("profile", args.profile), ("runtime", args.runtime),
                                    ("ray", args.ray)) if v is not None}
        config = config.model_copy(update=update)
        only = parse_only(args.only)
        if args.workers < 1:
            raise ValueError("--workers must be at least 1")
        if config.ray and args.workers > 1:
            raise ValueError("--workers runs cells in this machine's processes; on Ray the "
                             "cluster's CPUs and GPUs decide. Fix: drop one of --workers "
                             "and --ray")
        args.out.mkdir(parents=True, exist_ok=True)
        data = study_data(config, args.out.resolve(), args.cache, progress=not args.quiet)
        study = Study.open(config, args.out.resolve(), data, only)
    except (FileNotFoundError, ValueError) as err:
        log.error("%s", err)
        return EXIT_BAD_INPUT
    log.info("study %s: %d cells (%s), %d site(s): %s; folder %s", config.name,
             len(study.cells), config.profile, len(data.sites), ", ".join(data.sites),
             args.out)
    workers = []
    if not args.report_only and config.ray:
        from fedcmr.lab.study.ray_cells import work_on_ray

        try:
            work_on_ray(study, config.ray, config.cpus_per_cell)
        except ValueError as err:
            log.error("%s", err)
            return EXIT_BAD_INPUT
    elif not args.report_only:
        if args.workers > 1 and not args.worker:
            threads = max(1, (os.cpu_count() or 1) // args.workers)
            import torch

            torch.set_num_threads(threads)
            workers = start_workers(args.workers - 1, _worker_argv(args), threads)
        study.work()
        for proc in workers:
            proc.wait()
    if args.worker:
        return EXIT_FAILED if study.failed else EXIT_OK
    results = study.gather()
    log.info("results: %s", results)
    if not args.no_report:
        from fedcmr.lab.study.report import write_report

        md, html = write_report(args.out.resolve())
        log.info("report: %s and %s", md, html)
    undone = sum(not study.done(c) for c in study.cells)
    if study.failed or undone:
        log.error("%d of %d cells are not done (failed: %s); rerun the same command to "
                  "retry them", undone, len(study.cells),
                  ", ".join(sorted(study.failed)) or "none here")
        return EXIT_FAILED
    return EXIT_OK


def _worker_argv(args: argparse.Namespace) -> list[str]:
    argv = ["--quiet", "study", "--config", str(args.config.resolve()), "--out",
            str(args.out.resolve())]
    if args.cache:
        argv += ["--cache", *(str(c.resolve()) for c in args.cache)]
    for flag, value in (("--profile", args.profile), ("--runtime", args.runtime)):
        if value:
            argv += [flag, value]
    for item in args.only:
        argv += ["--only", item]
    return argv

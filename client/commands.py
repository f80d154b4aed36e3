"""Handlers of the hospital-side commands (`synth`, `prepare`)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from fedcmr.client.errors import DatasetError
from fedcmr.client.loaders.result import LoadResult
from fedcmr.common.cli import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, EXIT_SKIPPED

log = logging.getLogger("fedcmr.prepare")


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
        from fedcmr.client.loaders.acdc import load_acdc
        return load_acdc(args.root), [args.root]
    if args.dataset == "mnms":
        from fedcmr.client.loaders.mnms import load_mnms
        from fedcmr.common.centres import parse_centre_map
        centre_map = parse_centre_map(args.centre_map) if args.centre_map else None
        return load_mnms(args.root, args.csv, args.centre, centre_map), [args.root]
    from fedcmr.client.loaders.site_folder import load_site_folder, parse_label_numbers
    labels = parse_label_numbers(args.label_numbers) if args.label_numbers else None
    centre = (args.centre or [args.root.parent.name])[0]
    return load_site_folder(args.root, centre, args.vendor, labels), [args.root.parent]


def cmd_prepare(args: argparse.Namespace) -> int:
    from fedcmr.client.bias_field import N4Params
    from fedcmr.client.prep_config import PrepConfig
    from fedcmr.client.prepare import check_out_not_in_root, run_prepare

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
    for reason, n in sorted(loaded.excluded.items()):
        log.info("not in the study: %d subject(s) with %s", n, reason)
    log.info("%d subjects to prepare into %s", len(loaded.subjects), args.out)
    report = run_prepare(loaded, config, args.out, workers=args.workers,
                         progress=not args.quiet)
    for err in report.skipped:
        log.warning("skipped %s", err.line())
    log.info("%d frames of %d subjects ready in %s (%d computed, %d reused)", report.frames,
             report.subjects, args.out, report.computed, report.frames - report.computed)
    if report.skipped:
        log.warning("%d subject(s) skipped; see %s", len(report.skipped),
                    args.out / "skipped.csv")
        return EXIT_FAILED if args.strict else EXIT_SKIPPED
    return EXIT_OK


def cmd_synth(args: argparse.Namespace) -> int:
    from fedcmr.client.synthetic_cohort import synthesize

    summary = synthesize(args.out, seed=args.seed, scale=args.scale, workers=args.workers,
                         progress=not args.quiet)
    for c in summary.centres.values():
        log.info("%-16s %-5s %-8s NOR %3d  HCM %3d  (+%d outside the study)", c.centre,
                 c.dataset, c.vendor, c.nor, c.hcm, c.other)
    log.info("synthetic cohort in %s (%.0f MB, %.0f s)", args.out, summary.bytes_written / 1e6,
             summary.seconds)
    if args.sites:
        from fedcmr.client.site_folders import write_site_folders

        for centre, folder in write_site_folders(args.out, args.out / "sites").items():
            log.info("site folder of %s: %s", centre, folder)
    return EXIT_OK


def cmd_client(args: argparse.Namespace) -> int:
    """Run the hospital's SuperNode in the foreground until the coordinator is done."""
    import json
    import os
    import sys

    from fedcmr.server.local_federation import tool

    missing = [p for p in args.data if not (p / "manifest.csv").exists()]
    if missing:
        log.error("%s: no prepared cache (manifest.csv). Fix: fedcmr prepare ... --out %s",
                  missing[0], missing[0])
        return EXIT_BAD_INPUT
    node_config = " ".join([
        f"site={json.dumps(args.site)}",
        f"data-path={json.dumps(','.join(str(p.resolve()) for p in args.data))}",
        f"out-dir={json.dumps(str(args.out.resolve()))}", f"threads={args.threads}"])
    command = [tool("flower-supernode"), "--superlink", args.superlink, "--port",
               str(args.port), "--node-config", node_config]
    if args.root_certificates:
        command += ["--root-certificates", str(args.root_certificates)]
        if args.auth_key:
            command += ["--auth-supernode-private-key", str(args.auth_key)]
    else:
        command.append("--insecure")
    if args.max_wait_time:
        command += ["--max-wait-time", str(args.max_wait_time)]
    args.out.mkdir(parents=True, exist_ok=True)
    log.info("site %s serving %s to %s", args.site, ", ".join(map(str, args.data)),
             args.superlink)
    # The SuperNode starts flower-superexec by name: this environment's bin must be on PATH
    # even when fedcmr was called by its full path without activating the environment.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
           "PATH": path}
    sys.stdout.flush()
    os.execve(command[0], command, env)  # the SuperNode replaces this process
    return EXIT_OK

"""The coordinator's Flower ServerApp: one study run (every requested fold), checkpointed
after every round, resumable with `resume`, and honest about the sites it covers.

OUT/status.json says how the run ended: "completed" (every site in every fold's figures),
"partial" (finished, but the figures miss a site: named, with the reason) or "stopped" (too
few sites; the checkpoint is kept for --resume). The launchers turn it into exit codes.
"""

from __future__ import annotations

import json
import logging

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedcmr.common import __version__
from fedcmr.common.atomic import write_json
from fedcmr.common.metrics import auc_text
from fedcmr.server.audit_trail import write_jsonl
from fedcmr.server.checkpoint import Checkpoint
from fedcmr.server.fl_outputs import (
    FoldBundle,
    metrics_from_counts,
    privacy_report,
    site_coverage,
    write_fold,
    write_rounds,
)
from fedcmr.server.selection import record as selection_record
from fedcmr.server.settings import FederationSettings
from fedcmr.server.study_runner import FoldOutcome, SiteFailure, StudyRunner
from fedcmr.support import flower_patches

log = logging.getLogger("fedcmr.server")
flower_patches.apply()  # this process pulls the sites' replies

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    settings = FederationSettings.from_flat(context.run_config)
    out = settings.out_dir
    out.mkdir(parents=True, exist_ok=True)
    (out / "status.json").unlink(missing_ok=True)  # an earlier attempt's
    checkpoint = Checkpoint(out, settings)
    checkpoint.open()
    events = out / "site_events.jsonl"
    earlier = ([json.loads(line) for line in events.read_text().splitlines()]
               if settings.resume and events.exists() else [])  # their losses still count
    runner = StudyRunner(grid, settings, checkpoint, events=earlier)
    try:
        outcomes = run_study(runner, out)
    except SiteFailure as err:
        write_json(out / "status.json", {"status": "stopped", "reason": str(err),
                                         "sites": site_coverage([], runner.roster)})
        write_jsonl(out / "site_events.jsonl", runner.roster.events)
        raise
    coverage = site_coverage(outcomes, runner.roster)
    metrics = metrics_from_counts(outcomes, list(runner.sites.values()))
    metrics["config"] = runner.run.model_dump()
    metrics["strategy"] = {"name": settings.strategy, "vote_alpha": settings.vote_alpha}
    metrics["sites"] = coverage
    metrics["rejected_updates"] = [{"fold": o.fold, **r} for o in outcomes for r in o.rejected]
    metrics["selection"] = [{"fold": o.fold, **selection_record(o.best_round, o.unvalidated)}
                            for o in outcomes]
    if privacy := privacy_report(runner.run, outcomes, len(runner.sites)):
        metrics["privacy"] = privacy
        log.info("differential privacy: epsilon %s at delta %g over %d noisy rounds",
                 privacy["epsilon"], privacy["delta"], privacy["releases_total"])
    write_json(out / "metrics.json", metrics)
    write_jsonl(out / "site_events.jsonl", runner.roster.events)
    status = "partial" if coverage["lost"] else "completed"
    write_json(out / "status.json", {"status": status, "sites": coverage})
    if coverage["lost"]:
        log.error("the figures cover %d of %d sites (%s); lost: %s", len(coverage["covered"]),
                  len(coverage["asked"]), ", ".join(coverage["covered"]),
                  "; ".join(f"{n} ({why})" for n, why in coverage["lost"].items()))
    log.info("federated run finished: total AUC %s", auc_text(metrics["auc"].get("total")))
    from fedcmr.server.farewell import announce_finished  # hospitals stop: server/farewell.py
    announce_finished(grid, names={n: s.name for n, s in runner.sites.items()})


def run_study(runner: StudyRunner, out) -> list[FoldOutcome]:
    runner.discover()
    settings = runner.settings
    write_json(out / "config.json", {"mode": "federated", "fedcmr_version": __version__,
                                     "settings": settings.model_dump(mode="json"),
                                     "centres": runner.run.centres})
    outcomes: list[FoldOutcome] = []

    def progress(outcome: FoldOutcome) -> None:
        done = [*outcomes, outcome]
        write_rounds(out / "rounds.csv", done)
        write_jsonl(out / "audit.jsonl", [row for o in done for row in o.audit])

    for fold in runner.run.fold_list():
        outcome = runner.finished_fold(fold)
        if outcome is not None:
            log.info("fold %d: finished in the checkpoint; kept", fold)
        else:
            log.info("fold %d of %s: %s", fold, runner.run.fold_list(), runner.run.protocol)
            outcome = runner.run_fold(fold, on_round=progress)
            write_fold(out, outcome, FoldBundle.of(runner.run, settings.strategy,
                                                   settings.vote_alpha, runner.roster))
            runner.save_finished(outcome)
        outcomes.append(outcome)
        write_rounds(out / "rounds.csv", outcomes)
        write_jsonl(out / "audit.jsonl", [row for o in outcomes for row in o.audit])
    return outcomes

"""The coordinator's Flower ServerApp: one study run (every requested fold)."""

from __future__ import annotations

import logging

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedcmr.common import __version__
from fedcmr.common.atomic import write_json
from fedcmr.server.fl_outputs import metrics_from_counts, write_fold, write_rounds
from fedcmr.server.settings import FederationSettings
from fedcmr.server.study_runner import StudyRunner

log = logging.getLogger("fedcmr.server")

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    settings = FederationSettings.from_flat(context.run_config)
    out = settings.out_dir
    out.mkdir(parents=True, exist_ok=True)
    runner = StudyRunner(grid, settings)
    runner.discover()
    write_json(out / "config.json", {"mode": "federated", "fedcmr_version": __version__,
                                     "settings": settings.model_dump(mode="json"),
                                     "centres": runner.run.centres})
    outcomes = []
    for fold in runner.run.fold_list():
        log.info("fold %d of %s: %s", fold, runner.run.fold_list(), runner.run.protocol)
        outcome = runner.run_fold(fold)
        write_fold(out, outcome)
        outcomes.append(outcome)
        write_rounds(out / "rounds.csv", outcomes)
    metrics = metrics_from_counts(outcomes, list(runner.sites.values()))
    metrics["config"] = runner.run.model_dump()
    metrics["strategy"] = {"name": settings.strategy, "vote_alpha": settings.vote_alpha}
    metrics["rejected_updates"] = [{"fold": o.fold, **r} for o in outcomes for r in o.rejected]
    write_json(out / "metrics.json", metrics)
    log.info("federated run finished: total AUC %s", metrics["auc"].get("total"))

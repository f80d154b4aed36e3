"""Running one cell through the real code paths: CDS through the centralised trainer, FL
through the Flower app on a local federation (Flower's simulation engine in this process
unless asked otherwise), with identical splits (both derive them from the same RunConfig).
The cell's rows come from its per-frame predictions with one AUC estimator for every
framework."""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedcmr.common.atomic import write_json
from fedcmr.common.metrics import auc
from fedcmr.common.results import PREDICTIONS_CSV, read_predictions
from fedcmr.common.seeds import derive_seed
from fedcmr.lab.study.cells import CellSpec
from fedcmr.lab.study.layout import RESULT_JSON, RUN_DIR
from fedcmr.lab.study.stats import bootstrap_auc_ci

log = logging.getLogger("fedcmr.study")


@dataclass(frozen=True)
class StudyData:
    """The study's hospitals as every cell sees them."""

    caches: tuple[Path, ...]
    site_per: str
    #: The hospitals, in the order they run: name -> the centres it holds.
    sites: dict[str, tuple[str, ...]]
    digest: str
    runtime: str = "in-process"
    site_policy: Path | None = None
    bootstrap: int = 1000


def clear_half_written(run_dir: Path) -> None:
    """A run folder without its cell's result.json is from a claimant that died: stop what
    it left running (server/processes.py: every process it listed, and any of fedcmr's or
    Flower's still working in the folder). A federation that checkpointed a round is
    continued from there (`_federated`); anything else starts afresh."""
    if not run_dir.exists():
        return
    from fedcmr.server.checkpoint import CHECKPOINT_DIR, SETTINGS_FILE
    from fedcmr.server.processes import ProcessGroup

    left = ProcessGroup(run_dir, {}).stop_leftovers()
    if left:
        log.warning("stopped %d process(es) a dead claimant left running in %s", len(left),
                    run_dir)
    if not (run_dir / CHECKPOINT_DIR / SETTINGS_FILE).exists():
        shutil.rmtree(run_dir)


def run_cell(spec: CellSpec, data: StudyData, cell: Path) -> dict:
    """Run the cell, write its result.json (last: that marks it done) and return it."""
    run_dir = cell / RUN_DIR
    clear_half_written(run_dir)
    started = time.monotonic()
    with (cell / "cell.log").open("a", encoding="utf-8") as handle:
        echo = _echo(handle)
        echo(f"===== {spec.key} ({time.strftime('%Y-%m-%d %H:%M:%S')}) =====")
        if spec.federated:
            _federated(spec, data, run_dir, echo)
        else:
            _centralised(spec, data, run_dir)
    wall = round(time.monotonic() - started, 1)
    predictions = read_predictions(run_dir / PREDICTIONS_CSV)
    result = {"key": spec.key, "wall_s": wall, "runtime": data.runtime if spec.federated
              else "in-process", "rows": result_rows(spec, predictions, wall, data.bootstrap)}
    write_json(cell / RESULT_JSON, result)
    return result


def _echo(handle):
    def echo(line: str) -> None:
        handle.write(line.rstrip("\n") + "\n")
        handle.flush()
    return echo


def _centralised(spec: CellSpec, data: StudyData, run_dir: Path) -> None:
    from fedcmr.common.bundle import preprocessing_of_caches
    from fedcmr.common.learning.data import load_cache
    from fedcmr.common.measures import read_all_measures
    from fedcmr.common.models import registry
    from fedcmr.lab.centralized import run_centralized

    frames = load_cache(list(data.caches), centres=spec.centres)
    needs = registry.get(spec.model).needs_measures
    measures = read_all_measures(data.caches) if needs else None
    run_centralized(frames, spec.run_config(), run_dir, progress=False, measures=measures,
                    preprocessing=preprocessing_of_caches(data.caches))


def _federated(spec: CellSpec, data: StudyData, run_dir: Path, echo) -> None:
    import torch

    from fedcmr.lab.local_federation import run_local_federation
    from fedcmr.server.checkpoint import Checkpoint
    from fedcmr.server.settings import FederationSettings

    settings = FederationSettings.build(spec.strategy, spec.vote_alpha, spec.run_config())
    # an attempt stopped mid-run (its study killed) left its checkpoint: continue it, which
    # gives bit for bit the run it would have been (server/checkpoint.py)
    resumed = Checkpoint(run_dir, settings).exists()
    if resumed:
        echo(f"resuming the run in {run_dir} from its checkpoint")
    settings = settings.model_copy(update={"resume": resumed})
    # in-process, the sites train in turn in this process: each with all of its threads
    threads = torch.get_num_threads() if data.runtime == "in-process" else 1
    metrics = run_local_federation(list(data.caches), settings, run_dir, echo=echo,
                                   runtime=data.runtime, site_policy=data.site_policy,
                                   site_per=data.site_per, only=spec.sites,
                                   threads_per_site=threads)
    lost = (metrics.get("sites") or {}).get("lost")
    if lost:
        raise RuntimeError("the run's figures miss site(s) " + "; ".join(
            f"{n}: {why}" for n, why in lost.items()) + f" (see {run_dir / 'logs'})")


def result_rows(spec: CellSpec, predictions: Sequence[dict], wall_s: float,
                n_boot: int) -> list[dict]:
    """results.csv's rows of the cell: the total, then each test centre; AUC over frames as
    in the paper, its 95% CI by bootstrap over subjects."""
    if not predictions:
        raise RuntimeError(f"cell {spec.key}: the run wrote no test predictions")
    centres = sorted({r["centre"] for r in predictions})
    rows = []
    for centre in ["total", *centres]:
        subset = [r for r in predictions if centre in ("total", r["centre"])]
        labels = np.array([r["label"] for r in subset])
        scores = np.array([r["score"] for r in subset])
        subjects = np.array([f"{r['centre']}/{r['subject']}" for r in subset])
        value = auc(labels, scores)
        low = high = None
        if value is not None:
            with contextlib.suppress(ValueError):
                low, high = bootstrap_auc_ci(labels, scores, subjects, n_boot=n_boot,
                                             seed=derive_seed(spec.key, centre))
        by_subject = {s: lab for s, lab in zip(subjects, labels, strict=True)}
        rows.append({**spec.settings(), "centre": centre, "auc": _round(value),
                     "ci_low": _round(low), "ci_high": _round(high), "n_frames": len(subset),
                     "n_subjects": len(by_subject),
                     "n_hcm": sum(v == 1 for v in by_subject.values()),
                     "n_nor": sum(v == 0 for v in by_subject.values()), "wall_s": wall_s})
    return rows


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 6)

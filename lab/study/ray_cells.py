"""`fedcmr study --ray ADDRESS`: the study's cells as Ray tasks on a Ray cluster, one cell per
task, each holding `cpus_per_cell` CPUs (its torch threads) and one GPU where the cluster
has any. A federated cell runs its whole federation inside its task (the in-process runtime:
Flower's simulation engine, nothing else started), so a cell costs no Ray start, no process
start and no network hop of its own.

The study folder stays the record, exactly as without Ray: a task claims its cell (the same
flock as `fedcmr study` processes take, so both can work on one folder), runs it and writes
result.json last. A task whose node dies is retried by Ray on another node (`max_retries`);
the retry finds the dead attempt's run folder and continues its federation from the last
checkpointed round, or starts the cell afresh (run_cell.clear_half_written). A rerun of the
command after any failure, the driver's own included, runs what is missing and nothing twice.
Every node must see the study folder and the caches at the same paths (a shared file system
whose locks span the nodes), and have fedcmr installed: docs/study.md.
"""

from __future__ import annotations

import logging
import socket
import time
from pathlib import Path

from fedcmr.lab.study import layout
from fedcmr.lab.study.cells import CellSpec
from fedcmr.lab.study.run_cell import StudyData

log = logging.getLogger("fedcmr.study")
#: Ray retries a task whose worker or node died this many times (then the cell is failed
#: for this run; a rerun tries it again).
NODE_RETRIES = 3
#: Seconds before a cell another process holds is offered again.
CLAIMED_WAIT = 2.0


def run_cell_task(cell: CellSpec, data: StudyData, out: Path, threads: int) -> dict:
    """The Ray task: claim the cell, run it here, return run_claimed's outcome; {"status":
    "claimed"} when another process holds it, {"status": "done"} with no result when it
    finished elsewhere meanwhile."""
    import ray
    import torch

    from fedcmr.lab.study.claims import try_claim
    from fedcmr.lab.study.runner import run_claimed

    torch.set_num_threads(threads)
    folder = layout.cell_dir(out, cell.key)
    claim = try_claim(folder)
    if claim is None:
        return {"status": "claimed"}
    with claim:
        if (folder / layout.RESULT_JSON).exists():
            return {"status": "done", "result": None}
        return run_claimed(cell, data, out, host=socket.gethostname(),
                           node=ray.get_runtime_context().get_node_id())


def work_on_ray(study, address: str, cpus_per_cell: int) -> None:
    """Run every cell of `study` (runner.Study) that is not done as a Ray task on the
    cluster at `address`; returns when each is done or failed."""
    import ray

    try:
        ray.init(address=None if address == "local" else address, include_dashboard=False,
                 log_to_driver=False, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise ValueError(f"--ray {address}: no Ray cluster answers there ({err}). Fix: start "
                         "one (`ray start --head` on its head node) or give its address "
                         "(HOST:6379); `--ray local` starts one for this study") from None
    try:
        gpus = ray.cluster_resources().get("GPU", 0)
        log.info("Ray cluster %s: %d node(s), %g CPUs, %g GPUs; each cell holds %d CPU(s)%s",
                 address, len([n for n in ray.nodes() if n["Alive"]]),
                 ray.cluster_resources().get("CPU", 0), gpus, cpus_per_cell,
                 " and one GPU" if gpus >= 1 else "")
        task = ray.remote(run_cell_task).options(
            num_cpus=cpus_per_cell, num_gpus=1 if gpus >= 1 else 0, max_retries=NODE_RETRIES,
            retry_exceptions=False)
        _drive(study, task, cpus_per_cell)
    finally:
        ray.shutdown()


def _drive(study, task, threads: int) -> None:
    import ray

    study.report_progress()
    running: dict = {}  # task -> cell
    later: dict[str, float] = {}  # cell key -> when to offer it again (claimed elsewhere)
    while True:
        now = time.monotonic()
        busy = {cell.key for cell in running.values()}
        for cell in study.cells:
            if (cell.key in busy or cell.key in study.failed or study.done(cell)
                    or later.get(cell.key, 0) > now):
                continue
            running[task.remote(cell, study.data, study.out, threads)] = cell
        if not running:
            if all(study.done(c) or c.key in study.failed for c in study.cells):
                return
            time.sleep(CLAIMED_WAIT)  # only cells other processes hold are left
            continue
        finished, _ = ray.wait(list(running), num_returns=1, timeout=CLAIMED_WAIT)
        for ref in finished:
            cell = running.pop(ref)
            try:
                outcome = ray.get(ref)
            except Exception as err:  # retries used up: its nodes kept dying
                outcome = {"status": "failed", "error": f"the Ray task failed: {err}"}
            if outcome["status"] == "claimed":
                later[cell.key] = time.monotonic() + CLAIMED_WAIT
            elif outcome["status"] == "failed" or outcome["result"] is not None:
                study.note(cell, outcome)

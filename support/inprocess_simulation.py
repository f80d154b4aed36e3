"""Flower's simulation engine in this process, for a study's cells: the ServerApp in a thread
on Flower's InMemoryGrid and link state, the sites' messages served by the Simulation
Runtime's own worker loop (`vce_api.run_api`), with a backend that runs each site's
ClientApp here, in turn, instead of in Ray actors.

Why: a cell of `fedcmr study` is one unit of work on one device (a Ray task holding one GPU,
or the study's own process). Flower's RayBackend would start (or join) a Ray instance per
run, size an actor pool to the whole cluster, and `ray.shutdown()` at the end; a SuperLink
and `flwr run` add a process start, HTTP hops and a Ray start per cell (about 40 s, and
3.5 s per message exchange: issue #31). Here nothing starts and a message is a function
call: the same ServerApp and ClientApp objects, the same Message API and grid, messages
through Flower's in-memory link state. Sites run one after another (one worker): they share
the process's global RNG and its device, so that a cell is reproducible bit for bit.

Every name used from Flower is checked against the installed version
(`flower_patches.check_version`) and by tests/test_inprocess_simulation.py.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from queue import Empty, Queue

from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.client_app import ClientAppException, LoadClientAppError
from flwr.common.config import get_fused_config_from_dir
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.proto.task_pb2 import Task  # pylint: disable=E0611
from flwr.server.superlink.fleet.vce import vce_api
from flwr.server.superlink.fleet.vce.backend.backend import Backend
from flwr.server.superlink.fleet.vce.metrics import VceMetrics
from flwr.server.superlink.linkstate import LinkStateFactory
from flwr.server.superlink.linkstate.in_memory_linkstate import RunRecord
from flwr.serverapp import ServerApp
from flwr.simulation.run_simulation import run_serverapp_th
from flwr.supercore.constant import FLWR_IN_MEMORY_DB_NAME, NOOP_FEDERATION_ID
from flwr.supercore.object_store import ObjectStoreFactory
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity
from flwr.superlink.federation import NoOpFederationManager
from flwr.superlink.grid import InMemoryGrid

from fedcmr.support import flower_patches

#: Seconds to wait for the ServerApp thread's end after the engine stopped.
JOIN_S = 30.0


class InProcessBackend(Backend):
    """Runs a message through the ClientApp in this process (what Flower's ClientAppActor
    does in a Ray actor)."""

    def __init__(self) -> None:
        self.app_fn: Callable[[], ClientApp] | None = None

    def build(self, app_fn: Callable[[], ClientApp]) -> None:
        self.app_fn = app_fn

    @property
    def num_workers(self) -> int:
        return 1  # sites in turn: they share this process's RNG and device

    def is_worker_idle(self) -> bool:
        return True

    def terminate(self) -> None:
        """Nothing to stop: no process, no Ray."""

    def process_message(self, message: Message, context: Context) -> tuple[Message, Context]:
        if self.app_fn is None:
            raise ValueError("build() the backend before it processes messages")
        try:
            return self.app_fn()(message=message, context=context), context
        except LoadClientAppError:
            raise
        except Exception as err:  # what the Ray actor does: the engine replies with an Error
            raise ClientAppException(str(err)) from err


def run_in_process(server_app: ServerApp, client_app: ClientApp, run_config: Mapping,
                   num_nodes: int, app_dir: Path, run_id: int = 1) -> Context:
    """Run the ServerApp against `num_nodes` simulated nodes whose ClientApp runs here;
    returns the ServerApp's final context. Node i has partition id i (its node config).
    Every context's run config is `app_dir`'s pyproject.toml [tool.flwr.app.config] with
    `run_config` over it (as `flwr run --run-config`; a key it lacks is refused). A
    ServerApp exception is raised here."""
    flower_patches.check_version()
    state_factory = LinkStateFactory(FLWR_IN_MEMORY_DB_NAME, NoOpFederationManager(),
                                     ObjectStoreFactory())
    run = Run.create_empty(run_id=run_id)
    run.override_config = dict(run_config)
    run.primary_task_id, run.federation_id = run_id, NOOP_FEDERATION_ID
    state = state_factory.state()
    state.run_ids[run.run_id] = RunRecord(run=run)
    state.task_store[run.primary_task_id] = Task(task_id=run.primary_task_id, run_id=run_id)
    grid = InMemoryGrid(state_factory=state_factory)
    grid.set_run(run)
    # whom this process's Messages come from (the ServerApp's; Flower's run_simulation too)
    TaskIdentity.task_id, TaskIdentity.run_id = run.primary_task_id, run_id
    TaskIdentity.node_id = SUPERLINK_NODE_ID

    stop, errors, contexts = threading.Event(), Queue(), Queue()
    fused = get_fused_config_from_dir(Path(app_dir), run.override_config)
    server_context = Context(run_id=run_id, node_id=0, node_config={}, state=RecordDict(),
                             run_config=fused)
    # the nodes exist before the ServerApp starts (it may ask for them at once)
    nodes = vce_api._register_nodes(num_nodes, state_factory)  # noqa: SLF001
    stores = vce_api._register_node_info_stores(nodes, run, str(app_dir))  # noqa: SLF001
    thread = run_serverapp_th(None, server_app, server_context, grid, "", stop, errors, False,
                              contexts)
    try:
        # returns once the ServerApp thread has set `stop` (its end, or its exception)
        vce_api.run_api(lambda: client_app, lambda: InProcessBackend(),
                        nodes, state_factory, stores, stop, VceMetrics())
    finally:
        stop.set()
        thread.join(JOIN_S)
    try:
        raise errors.get_nowait()
    except Empty:
        pass
    try:
        return contexts.get_nowait()
    except Empty:
        return server_context

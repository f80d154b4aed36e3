"""The ServerApp's protocol (StudyRunner) against in-process sites: real ClientApp handlers
behind the site's audit gate and real training, no Flower runtime. Fast enough to pin down
the model-selection rule."""

from __future__ import annotations

import itertools

import pytest
import torch
from cache_factory import write_site_cache
from flwr.app import ArrayRecord, Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedcmr.client import client_app
from fedcmr.client.audit import audit_mod
from fedcmr.common.protocol import ARRAYS, Kind
from fedcmr.common.run_config import RunConfig
from fedcmr.server.settings import FederationSettings
from fedcmr.server.study_runner import StudyRunner

HANDLERS = client_app.HANDLERS


class InProcessGrid:
    """Delivers each message to the ClientApp handler of its node, through the audit mod, as
    a SuperNode would. Flower's Metadata has no setters for the ids the SuperLink assigns, so
    they are written where Metadata keeps them."""

    def __init__(self, contexts: dict[int, Context]):
        self.contexts = contexts
        self.ids = itertools.count(1)
        self.sent: list[str] = []
        self.trained: list[ArrayRecord] = []  # the global model each train exchange sent

    def get_node_ids(self) -> list[int]:
        return sorted(self.contexts)

    def send_and_receive(self, messages, timeout=None) -> list[Message]:
        replies = []
        if messages and messages[0].metadata.message_type == Kind.TRAIN:
            self.trained.append(messages[0].content.array_records[ARRAYS])
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = f"m{next(self.ids)}"
            msg.metadata.__dict__["_src_node_id"] = 0
            self.sent.append(msg.metadata.message_type)
            node = msg.metadata.dst_node_id
            reply = audit_mod(msg, self.contexts[node], HANDLERS[msg.metadata.message_type])
            reply.metadata.__dict__["_src_node_id"] = node
            replies.append(reply)
        return replies


@pytest.fixture(autouse=True)
def server_identity(monkeypatch):
    """What the ServerApp process has under Flower's runtime: messages need a run id."""
    for attr, value in (("_run_id", 1), ("_node_id", 0), ("_task_id", 1)):
        monkeypatch.setattr(TaskIdentity, attr, value)


@pytest.fixture(scope="module")
def grid(tmp_path_factory) -> InProcessGrid:
    root = tmp_path_factory.mktemp("sites")
    contexts = {}
    for node, (centre, seed) in enumerate((("Alpha", 0), ("Bravo", 1)), start=101):
        write_site_cache(root / centre, centre, 8, 8, seed=seed)
        config = {"site": centre, "data-path": str(root / centre),
                  "out-dir": str(root / f"out-{centre}")}
        contexts[node] = Context(run_id=1, node_id=node, node_config=config, state=RecordDict(),
                                 run_config={})
    return InProcessGrid(contexts)


def same_weights(a: ArrayRecord, b: ArrayRecord) -> bool:
    x, y = a.to_torch_state_dict(), b.to_torch_state_dict()
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def runner(grid: InProcessGrid, epochs: int) -> StudyRunner:
    run = RunConfig(profile="smoke", epochs=epochs, min_subjects=5)
    study = StudyRunner(grid, FederationSettings(min_sites=2, wait_sites_timeout=5, run=run))
    study.discover()
    return study


def test_the_untrained_model_is_never_selected_even_with_the_lowest_loss(grid, monkeypatch):
    """Round r's replies validate round r-1's global model; round 1's is the untrained one.
    Scripted pooled validation (AUC, loss) per round, then the final validation."""
    scripted = iter([(0.5, 0.01),   # round 1: untrained model, lowest loss of all
                     (0.6, 0.90),   # round 2: model of round 1
                     (0.7, 0.40),   # round 3: model of round 2  <- the best candidate
                     (0.7, 0.60),   # round 4: model of round 3
                     (0.7, 0.50)])  # after the last round: model of round 4
    monkeypatch.setattr(StudyRunner, "_pooled_val", staticmethod(lambda replies: next(scripted)))
    study = runner(grid, epochs=4)
    sent_before = len(grid.trained)
    outcome = study.run_fold(0)
    assert outcome.best_round == 2
    # the kept weights are the global model after round 2, which round 3 sent out
    assert same_weights(outcome.best_arrays, grid.trained[sent_before + 2])
    assert not same_weights(outcome.best_arrays, grid.trained[sent_before + 1])
    assert next(scripted, None) is None  # every round and the final validation were scored
    rounds = sorted({r["round"] for r in outcome.rounds})
    assert rounds == [1, 2, 3, 4]
    assert set(outcome.test) == {"Alpha", "Bravo"}


def test_the_final_model_is_selected_when_it_validates_best(grid, monkeypatch):
    scripted = iter([(0.5, 0.69), (0.6, 0.60), (0.8, 0.20)])
    monkeypatch.setattr(StudyRunner, "_pooled_val", staticmethod(lambda replies: next(scripted)))
    study = runner(grid, epochs=2)
    outcome = study.run_fold(0)
    assert outcome.best_round == 2
    # after the last round the final model is validated, then the selected one tested
    assert grid.sent[-4:] == [Kind.VALIDATE] * 2 + [Kind.TEST] * 2

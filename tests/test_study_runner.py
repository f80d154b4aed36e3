"""The ServerApp's protocol (StudyRunner) against in-process sites: real ClientApp handlers
behind the site's audit gate and real training, no Flower runtime. Fast enough to pin down
the model-selection rule. The protocol is the same for every model: the sites train the
tests' toy model begun by the histogram round (tests/toy_model.py, "toy-nyul"), except
where the CNN's own start is what is tested."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from cache_factory import write_site_cache
from conftest import SMALL_SITE_POLICY
from flwr.app import ArrayRecord, Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedcmr.client.site import client_app
from fedcmr.client.site.audit import audit_mod
from fedcmr.common.packing import unpack
from fedcmr.common.protocol import ARRAYS, Kind, Order
from fedcmr.common.results import read_predictions
from fedcmr.common.run_config import RunConfig
from fedcmr.server.settings import FederationSettings
from fedcmr.server.study_runner import StudyRunner

HANDLERS = client_app.HANDLERS
MODEL = "toy-nyul"


class InProcessGrid:
    """Delivers each message to the ClientApp handler of its node, through the audit mod, as
    a SuperNode would. Flower's Metadata has no setters for the ids the SuperLink assigns, so
    they are written where Metadata keeps them."""

    def __init__(self, contexts: dict[int, Context]):
        self.contexts = contexts
        self.ids = itertools.count(1)
        self.sent: list[str] = []
        self.routes: list[tuple[str, int]] = []  # (message type, destination node)
        self.trained: list[ArrayRecord] = []  # the global model each train exchange sent
        self.waiting: dict[str, Message] = {}  # replies not pulled yet, by message id

    def get_node_ids(self) -> list[int]:
        return sorted(self.contexts)

    def push_messages(self, messages) -> list[str]:
        """Each message answered at once by its node's handler; the replies wait to be
        pulled, as at a SuperLink. The models travel packed, as on the wire."""
        if messages and messages[0].metadata.message_type == Kind.TRAIN:
            self.trained.append(unpack(messages[0].content.array_records[ARRAYS]))
        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = f"m{next(self.ids)}"
            msg.metadata.__dict__["_src_node_id"] = 0
            self.sent.append(msg.metadata.message_type)
            node = msg.metadata.dst_node_id
            self.routes.append((msg.metadata.message_type, node))
            reply = audit_mod(msg, self.contexts[node], HANDLERS[msg.metadata.message_type])
            reply.metadata.__dict__["_src_node_id"] = node
            self.waiting[msg.metadata.message_id] = reply
            ids.append(msg.metadata.message_id)
        return ids

    def pull_messages(self, message_ids) -> list[Message]:
        return [self.waiting.pop(i) for i in list(message_ids) if i in self.waiting]


@pytest.fixture(autouse=True)
def toy_models(monkeypatch):
    from process_tools import TOY_MODELS

    from fedcmr.common.models import registry

    monkeypatch.setenv(registry.ENV, TOY_MODELS)


@pytest.fixture(autouse=True)
def server_identity(monkeypatch):
    """What the ServerApp process has under Flower's runtime: messages need a run id."""
    for attr, value in (("_run_id", 1), ("_node_id", 0), ("_task_id", 1)):
        monkeypatch.setattr(TaskIdentity, attr, value)


def make_grid(root, sizes: dict[str, tuple[int, int]], policy=SMALL_SITE_POLICY
              ) -> InProcessGrid:
    """One in-process node per site, with the small-site policy (or `policy`; "": the
    defaults)."""
    contexts = {}
    for node, (centre, (n_nor, n_hcm)) in enumerate(sizes.items(), start=101):
        write_site_cache(root / centre, centre, n_nor, n_hcm, seed=node)
        config = {"site": centre, "data-path": str(root / centre),
                  "out-dir": str(root / f"out-{centre}"), "policy": str(policy)}
        contexts[node] = Context(run_id=1, node_id=node, node_config=config, state=RecordDict(),
                                 run_config={})
    return InProcessGrid(contexts)


@pytest.fixture(scope="module")
def grid(tmp_path_factory) -> InProcessGrid:
    return make_grid(tmp_path_factory.mktemp("sites"), {"Alpha": (8, 8), "Bravo": (8, 8)})


def same_weights(a: ArrayRecord, b: ArrayRecord) -> bool:
    x, y = a.to_torch_state_dict(), b.to_torch_state_dict()
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def runner(grid: InProcessGrid, epochs: int, **run_settings) -> StudyRunner:
    run = RunConfig(profile="smoke", epochs=epochs, **{"min_subjects": 5, **run_settings})
    study = StudyRunner(grid, FederationSettings(sites=len(grid.contexts),
                                                 wait_sites_timeout=5, rejoin_timeout=0,
                                                 run=run))
    study.discover()
    return study


def toy_runner(grid: InProcessGrid, epochs: int, **run_settings) -> StudyRunner:
    """`runner` training the toy model begun by the histogram round (this module's tests;
    the modules that import `runner` train the CNN)."""
    return runner(grid, epochs, model=MODEL, **run_settings)


def test_the_untrained_model_is_never_selected_even_with_the_lowest_loss(grid, monkeypatch):
    """Round r's replies validate round r-1's global model; round 1's is the untrained one.
    Scripted pooled validation (AUC, loss) per round, then the final validation."""
    scripted = iter([(0.5, 0.01),   # round 1: untrained model, lowest loss of all
                     (0.6, 0.90),   # round 2: model of round 1
                     (0.7, 0.40),   # round 3: model of round 2  <- the best candidate
                     (0.7, 0.60),   # round 4: model of round 3
                     (0.7, 0.50)])  # after the last round: model of round 4
    monkeypatch.setattr(StudyRunner, "_pooled_val", staticmethod(lambda replies: next(scripted)))
    study = toy_runner(grid, epochs=4)
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
    study = toy_runner(grid, epochs=2)
    outcome = study.run_fold(0)
    assert outcome.best_round == 2
    # after the last round the final model is validated, then the selected one tested
    assert grid.sent[-4:] == [Kind.VALIDATE] * 2 + [Kind.TEST] * 2


def test_the_loop_stops_after_patience_rounds_without_a_new_best(grid, monkeypatch):
    """Smoke patience is 2: the models of rounds 2 and 3 validate worse than round 1's, so
    the run stops after round 4 and tests round 1's model, with no final validation."""
    scripted = iter([(0.5, 0.01), (0.6, 0.50), (0.6, 0.60), (0.6, 0.70), (0.9, 0.05)])
    monkeypatch.setattr(StudyRunner, "_pooled_val", staticmethod(lambda replies: next(scripted)))
    study = toy_runner(grid, epochs=5)
    assert study.run.hyper.patience == 2
    sent_before = len(grid.sent)
    outcome = study.run_fold(0)
    assert sorted({r["round"] for r in outcome.rounds}) == [1, 2, 3, 4]
    assert outcome.best_round == 1
    assert Kind.VALIDATE not in grid.sent[sent_before:]
    assert next(scripted) == (0.9, 0.05)  # round 5 and its validation never ran


class LosingGrid(InProcessGrid):
    """`lost`'s node goes offline once `after` train exchanges have been answered (as after
    missed heartbeats: the roster names the site lost and goes on without it)."""

    def __init__(self, contexts: dict[int, Context], lost: int, after: int):
        super().__init__(contexts)
        self.lost, self.after = lost, after

    def get_node_ids(self) -> list[int]:
        gone = self.sent.count(Kind.TRAIN) >= self.after * len(self.contexts)
        return [n for n in super().get_node_ids() if not (gone and n == self.lost)]


@pytest.mark.parametrize("others", ["withhold", "hold no validation frames"])
def test_a_fold_whose_validation_vanishes_keeps_a_trained_model_and_says_so(
        tmp_path, monkeypatch, caplog, others):
    """Alpha holds the fold's only released validation frames and is lost after round 1,
    when only the untrained start has been validated. The others either withhold their
    counts (their policy) or release counts of no frames (a split that gives them none):
    either way no model after the start is scored. The fold keeps the latest trained model,
    never the untrained start, says so, and records the rule (before, counts of no frames
    made the pooled loss inf: early stop after round 3, the untrained model tested)."""
    from fedcmr.client.site import work as site_work
    from fedcmr.common.replies import ScoreCounts

    if others == "hold no validation frames":
        none = ScoreCounts.of(np.zeros(0, np.int64), np.zeros(0, np.float32), 0.0)

        def without_frames(honest):
            def step(site, order, state):
                reply = honest(site, order, state)
                return reply if site.name == "Alpha" else reply.model_copy(update={"val": none})

            return step

        for step in (site_work.train, site_work.validate):
            monkeypatch.setattr(site_work, step.__name__, without_frames(step))
        policy = SMALL_SITE_POLICY
    else:
        monkeypatch.delenv("FEDCMR_SITE_POLICY")  # the defaults: small sites withhold
        policy = ""
    sizes = {"Alpha": (20, 20), "Bravo": (14, 10), "Charlie": (14, 10)}
    base = make_grid(tmp_path, sizes, policy=policy)
    if others == "hold no validation frames":  # Alpha alone under the defaults releases
        base.contexts[101].node_config["policy"] = ""
    grid = LosingGrid(base.contexts, lost=101, after=1)
    study = toy_runner(grid, epochs=4)
    study.settings = study.settings.model_copy(update={"min_sites": 1})
    with caplog.at_level("WARNING", logger="fedcmr.server"):
        outcome = study.run_fold(0)
    assert "site Alpha lost" in caplog.text
    assert outcome.best_round == 4, outcome.best_round  # the latest trained model
    assert outcome.unvalidated == [1, 2, 3, 4]
    assert "no site released validation frames for the model of round 1" in caplog.text
    assert "the model of round 4 is kept unscored: latest trained model" in caplog.text
    assert sorted({r["round"] for r in outcome.rounds}) == [1, 2, 3, 4]  # no early stop
    from fedcmr.server.fl_outputs import write_fold

    write_fold(tmp_path / "run", outcome)  # the fold's summary.json records the rule
    summary = json.loads((tmp_path / "run" / "fold_0" / "summary.json").read_text())
    assert summary["selection"]["best_round"] == 4
    assert summary["selection"]["unvalidated_rounds"] == [1, 2, 3, 4]
    assert summary["selection"]["rule"].startswith("latest trained model: no site released")


def test_an_unscored_model_never_replaces_a_scored_one(grid, monkeypatch):
    """Validation released for the models of rounds 1 and 2, missing for round 3's (its
    sites lost, say), then back: round 3's model is not kept for being the latest, and its
    round does not count against the patience."""
    # the fourth: what the pooled counts would say had they been released (the best of all)
    scripted = iter([(0.5, 0.69), (0.6, 0.60), (0.7, 0.40), (0.99, 0.01), (0.7, 0.50),
                     (0.7, 0.55)])
    monkeypatch.setattr(StudyRunner, "_pooled_val", staticmethod(lambda counts: next(scripted)))
    real = StudyRunner._released_val
    calls = itertools.count(1)

    def released(self, fold, rnd, answers):
        counts = real(self, fold, rnd, answers)
        return [] if next(calls) == 4 else counts  # the fourth validation: none released

    monkeypatch.setattr(StudyRunner, "_released_val", released)
    study = toy_runner(grid, epochs=5)
    outcome = study.run_fold(0)
    assert outcome.best_round == 2 and outcome.unvalidated == [3]


def test_histogram_refusals_are_left_out_and_named(tmp_path, monkeypatch, caplog):
    from fedcmr.client.site import work as site_work
    from fedcmr.common.learning.harmonise import Harmoniser
    from fedcmr.common.models import registry
    from fedcmr.common.replies import NyulReply
    from fedcmr.server.study_runner import SiteFailure

    small = make_grid(tmp_path, {"Alpha": (8, 8), "Charlie": (2, 2), "Delta": (8, 8)})
    study = runner(small, epochs=1)
    cnn = registry.get("cnn")
    real = cnn.site_start

    def delta_sends_nothing(site, order, floor):
        return NyulReply(site=site.name) if site.name == "Delta" else real(site, order, floor)

    monkeypatch.setattr(cnn, "site_start", delta_sends_nothing)
    with caplog.at_level("WARNING", logger="fedcmr.server"):
        begin = study.begin_fold(0)
    # Charlie (too few subjects) refused, Delta sent no summary: neither counts
    assert sorted(begin.refused) == ["Charlie", "Delta"]
    assert ("Charlie sent no histogram summary: refused by the site's policy (min_subjects)"
            in caplog.text)
    assert "Delta sent no histogram summary: none" in caplog.text
    alpha = site_work.Site.open("Alpha", [tmp_path / "Alpha"], tmp_path / "x")
    order = Order(run=study.run, fold=0)
    alone = Harmoniser(study.run.prior).fit(alpha.parts(order)["train"])
    assert begin.landmarks == pytest.approx(alone.landmarks, abs=1e-9)
    # when no train split is large enough, the run stops with the reason
    # Alpha and Delta hold 16 subjects
    strict = runner(small, epochs=1, min_subjects=15)
    with pytest.raises(SiteFailure, match="no site released a histogram summary"):
        strict.begin_fold(0)
    # and when no site holds enough subjects at all, it stops at discovery, with the counts
    with pytest.raises(SiteFailure, match="every site holds fewer subjects than min-subjects "
                                          r"\(50\): Alpha 16, Charlie 4, Delta 16"):
        runner(small, epochs=1, min_subjects=50)


def test_leave_centre_out_trains_only_the_other_centres(grid):
    study = toy_runner(grid, epochs=1, protocol="lco")
    nodes = {info.name: node for node, info in study.sites.items()}
    assert study.run.test_centre(0) == "Alpha"
    assert study.training_nodes(0) == [nodes["Bravo"]]
    start = len(grid.routes)
    outcome = study.run_fold(0)
    routes = grid.routes[start:]
    for kind in (Kind.NYUL, Kind.TRAIN, Kind.VALIDATE):
        assert {dst for k, dst in routes if k == kind} == {nodes["Bravo"]}, kind
    assert {dst for k, dst in routes if k == Kind.TEST} == set(nodes.values())
    assert outcome.test["Alpha"].examples == 32  # every Alpha frame is a test frame
    assert {r["site"] for r in outcome.rounds} == {"Bravo"}


def test_end_diastole_only_federation_trains_and_tests_on_ed_frames(grid):
    from fedcmr.client.site import work as site_work

    study = toy_runner(grid, epochs=1, phases=("ED",))
    outcome = study.run_fold(0)
    for node, info in study.sites.items():
        name, config = info.name, grid.contexts[node].node_config
        site = site_work.Site.open(name, [Path(config["data-path"])], Path(config["out-dir"]))
        parts = site.parts(Order(run=study.run, fold=0))
        assert {f.entry.phase for p in parts.values() for f in p} == {"ED"}
        (row,) = [r for r in outcome.rounds if r["site"] == name]
        assert row["n_k"] == len(parts["train"])
        predictions = read_predictions(site.out_dir / "fold_0" / "predictions.csv")
        assert {r["phase"] for r in predictions} == {"ED"}
        assert outcome.test[name].examples == len(predictions) == len(parts["test"])


def test_a_bad_update_is_rejected_and_the_round_goes_on(grid, monkeypatch, caplog):
    """Bravo's weights turn to NaN in round 2: that update is left out, named in the log
    and in the outcome, and the fold finishes on Alpha's updates."""
    import numpy as np
    from flwr.app import Array

    from fedcmr.client.site import work as site_work

    real = site_work.train

    def bravo_breaks_in_round_2(site, order, state):
        reply = real(site, order, state)
        if site.name != "Bravo" or order.server_round != 2:
            return reply
        nan = {k: Array(np.full_like(v.numpy(), np.nan) if v.numpy().dtype.kind == "f"
                        else v.numpy()) for k, v in reply.arrays.items()}
        return reply.model_copy(update={"arrays": ArrayRecord(nan)})

    from fedcmr.server.study_runner import SiteFailure

    monkeypatch.setattr(site_work, "train", bravo_breaks_in_round_2)
    study = toy_runner(grid, epochs=2)
    # with min-sites 2 of two training sites, one rejected update stops the run at once
    # (sent again, the same update would come back), naming the site and the reason
    with pytest.raises(SiteFailure, match=r"fold 0 round 2: fewer than min-sites \(2\) .*"
                                          "Bravo: tensor .* holds NaN or Inf"):
        study.run_fold(0)
    study.settings = study.settings.model_copy(update={"min_sites": 1})
    with caplog.at_level("ERROR", logger="fedcmr.server"):
        outcome = study.run_fold(0)
    assert outcome.rejected == [{"round": 2, "site": "Bravo",
                                 "reason": outcome.rejected[0]["reason"]}]
    assert "holds NaN or Inf" in outcome.rejected[0]["reason"]
    assert "rejected the update of site Bravo" in caplog.text
    assert {r["site"] for r in outcome.rounds if r["round"] == 2} == {"Alpha"}
    final = outcome.best_arrays.to_torch_state_dict()
    assert all(bool(v.isfinite().all()) for v in final.values() if v.is_floating_point())


def test_a_site_prepared_otherwise_is_refused_at_discovery_and_reported_lost(tmp_path):
    """Three sites prepared with a 4,24,24 crop, Delta with 4,20,20: Delta is refused at the
    first message with the field, both values and the fix, never trained with, and the
    run's coverage names it (exit code 4 at the launcher)."""
    from cache_factory import write_prep_info

    from fedcmr.client.data.prep_config import PrepConfig
    from fedcmr.server.fl_outputs import site_coverage

    grid = make_grid(tmp_path, {"Alpha": (8, 8), "Bravo": (8, 8), "Charlie": (8, 8),
                                "Delta": (8, 8)})
    write_prep_info(tmp_path / "Delta", PrepConfig(crop=(4, 20, 20)))
    study = toy_runner(grid, epochs=1)
    assert sorted(study.roster.sites) == ["Alpha", "Bravo", "Charlie"]
    reason = study.roster.refused["Delta"]
    assert "crop" in reason and "4,20,20" in reason and "--crop 4,24,24" in reason
    assert "Delta" not in study.run.centres
    coverage = site_coverage([], study.roster)
    assert coverage["asked"] == ["Alpha", "Bravo", "Charlie", "Delta"]
    assert coverage["lost"]["Delta"] == reason


def test_a_site_failing_describe_is_named_not_numbered(tmp_path):
    """A damaged cache at Vall d'Hebron: its describe fails in the ClientApp; the run goes
    on with the others and names the site (parsed from the error reply) as lost."""
    from fedcmr.server.fl_outputs import site_coverage

    grid = make_grid(tmp_path, {"Alpha": (8, 8), "Bravo": (8, 8), "Vall d'Hebron": (8, 8)})
    (tmp_path / "Vall d'Hebron" / "manifest.csv").write_text("garbage\n")
    study = toy_runner(grid, epochs=1)
    assert sorted(study.roster.sites) == ["Alpha", "Bravo"]
    reason = study.roster.refused["Vall d'Hebron"]
    assert "data error (CacheError)" in reason and "manifest" not in reason  # no path leaves
    coverage = site_coverage([], study.roster)
    assert coverage["asked"] == ["Alpha", "Bravo", "Vall d'Hebron"]
    assert coverage["lost"]["Vall d'Hebron"] == study.roster.refused["Vall d'Hebron"]


def test_on_the_default_policy_the_run_goes_on_without_withheld_counts(tmp_path, caplog,
                                                                       monkeypatch):
    """A SantPau-sized site (validation split 1 NOR + 1 HCM) beside an ACDC-sized one, both
    on the default policy: SantPau trains and tests but withholds its validation counts,
    the coordinator says so once and selects on ACDC's, and every request is in each
    site's audit log with its settings."""
    monkeypatch.delenv("FEDCMR_SITE_POLICY")  # no policy file: the defaults
    grid = make_grid(tmp_path, {"ACDC": (20, 20), "SantPau": (14, 10)}, policy="")
    study = toy_runner(grid, epochs=2)
    with caplog.at_level("WARNING", logger="fedcmr.server"):
        outcome = study.run_fold(0)
    rows = {(r["round"], r["site"]): r for r in outcome.rounds}
    assert rows[2, "SantPau"]["val_auc_received"] is None and rows[2, "SantPau"]["n_k"] > 0
    assert rows[2, "ACDC"]["val_loss_received"] is not None
    assert caplog.text.count("site SantPau withholds its validation counts: refused by the "
                             "site's policy (min_eval_subjects)") == 1
    assert sorted(outcome.test) == ["ACDC", "SantPau"] and outcome.best_round >= 1

    log = [json.loads(line) for line in (tmp_path / "out-SantPau" / "audit.jsonl").open()]
    train = [entry for entry in log if entry["type"] == "train"]
    assert len(train) == 2 and all(e["withheld"]["rule"] == "min_eval_subjects"
                                      for e in train)
    assert train[0]["request"]["order"]["run"]["split_seed"] == 0
    assert train[0]["request"]["order"]["server_round"] == 1


def test_a_site_whose_policy_refuses_its_update_is_rejected_not_waited_for(tmp_path):
    """Charlie's policy wants 50 subjects behind a model update: its refusal names the rule,
    is listed as rejected in the round, and the round goes on with the others at once
    (the same request would be refused again; only an absence is waited for)."""
    import time

    grid = make_grid(tmp_path, {"Alpha": (8, 8), "Bravo": (8, 8), "Charlie": (8, 8)})
    strict = tmp_path / "strict.toml"
    strict.write_text("min_subjects = 50\nmin_eval_subjects = 1\nmin_difference = 1\n")
    for context in grid.contexts.values():
        if context.node_config["site"] == "Charlie":
            context.node_config["policy"] = str(strict)
    run = RunConfig(profile="smoke", epochs=1, min_subjects=5, model=MODEL)
    study = StudyRunner(grid, FederationSettings(sites=3, wait_sites_timeout=5,
                                                 rejoin_timeout=600, run=run))
    study.discover()
    started = time.monotonic()
    outcome = study.run_fold(0)
    # waiting for Charlie would take the whole 600 s rejoin timeout; a one-epoch smoke fold
    # takes seconds, so only a wait (not load) reaches it
    assert time.monotonic() - started < 600
    assert all(row["away"] == {} for row in outcome.audit)  # never counted as away
    (rejected,) = outcome.rejected
    assert rejected["site"] == "Charlie" and rejected["round"] == 1
    assert "refused by the site's policy (min_subjects): fold 0 model update would come " \
        "from" in rejected["reason"]
    assert {r["site"] for r in outcome.rounds} == {"Alpha", "Bravo"}
    assert "Charlie" not in study.roster.away and not study.roster.events  # not lost

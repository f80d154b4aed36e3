"""The coordinator's side of a federated study run, fold by fold:

describe -> histogram round (Nyul summaries, combined N_k / N) -> training rounds (each reply
also validates the model it received) -> validation of the last model -> test of the best
model at every site (per-class binned score counts only).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from fedcmr.common import nyul, replies
from fedcmr.common.learning.early_stopping import EarlyStopping
from fedcmr.common.learning.harmonise import Harmoniser
from fedcmr.common.metrics import auc_from_counts
from fedcmr.common.model import build_model
from fedcmr.common.protocol import ARRAYS, CONFIG, Kind, Order
from fedcmr.common.replies import ScoreCounts, TrainReply
from fedcmr.common.run_config import RunConfig
from fedcmr.server.settings import FederationSettings
from fedcmr.server.strategies import make_strategy
from fedcmr.server.update_checks import screen

log = logging.getLogger("fedcmr.server")


@dataclass(frozen=True)
class SiteInfo:
    node_id: int
    name: str
    centres: tuple[str, ...]
    frames: int
    subjects: int = 0


@dataclass
class FoldOutcome:
    fold: int
    rounds: list[dict] = field(default_factory=list)
    test: dict[str, ScoreCounts] = field(default_factory=dict)  # site -> its test counts
    best_round: int = 0
    refused: list[str] = field(default_factory=list)
    #: Updates left out of aggregation: {"round", "site", "reason"}.
    rejected: list[dict] = field(default_factory=list)
    best_arrays: ArrayRecord | None = None
    histogram: list[float] | None = None
    bin_edges: list[float] | None = None


class SiteFailure(RuntimeError):
    pass


class StudyRunner:
    def __init__(self, grid: Grid, settings: FederationSettings):
        self.grid = grid
        self.settings = settings
        self.sites: dict[int, SiteInfo] = {}
        self.run: RunConfig = settings.run

    # -- message plumbing ------------------------------------------------------------
    def _exchange(self, message_type: Kind, nodes: list[int], content: RecordDict
                  ) -> list[Message]:
        messages = [Message(content=content, message_type=message_type, dst_node_id=n)
                    for n in nodes]
        received = list(self.grid.send_and_receive(messages, timeout=self.settings.round_timeout))
        ok = [r for r in received if not r.has_error()]
        for r in received:
            if r.has_error():
                name = self._name(r.metadata.src_node_id)
                log.error("site %s failed %s: %s", name, message_type, r.error.reason)
        missing = len(nodes) - len(received)
        if missing:
            log.error("%d site(s) did not answer %s within %.0f s", missing, message_type,
                      self.settings.round_timeout)
        if not ok:
            raise SiteFailure(f"no site answered {message_type}; see the errors above")
        return ok

    def _name(self, node_id: int) -> str:
        info = self.sites.get(node_id)
        return info.name if info else f"node {node_id}"

    def _order(self, fold: int, **kw) -> RecordDict:
        return RecordDict({CONFIG: Order(run=self.run, fold=fold, **kw).to_record()})

    # -- the protocol ------------------------------------------------------------------
    def discover(self) -> None:
        deadline = time.monotonic() + self.settings.wait_sites_timeout
        while len(nodes := list(self.grid.get_node_ids())) < self.settings.min_sites:
            if time.monotonic() > deadline:
                raise SiteFailure(f"only {len(nodes)} of {self.settings.min_sites} sites "
                                  f"connected within {self.settings.wait_sites_timeout:.0f} s")
            time.sleep(1)
        for message in self._exchange(Kind.DESCRIBE, nodes, RecordDict({CONFIG: ConfigRecord()})):
            reply = replies.DescribeReply.from_message(message)
            info = SiteInfo(message.metadata.src_node_id, reply.site, reply.centres,
                            reply.frames, reply.subjects)
            self.sites[info.node_id] = info
            log.info("site %s: centres %s, %d frames", info.name, ", ".join(info.centres),
                     info.frames)
        self._check_counts()
        centres = sorted({c for s in self.sites.values() for c in s.centres})
        self.run = self.run.model_copy(update={"centres": tuple(centres)})

    def _check_counts(self) -> None:
        """A site with fewer subjects than min-subjects will refuse its histogram summary;
        when every site would, say so now rather than after the first fold's exchanges."""
        least = self.run.min_subjects
        small = sorted((s.name, s.subjects) for s in self.sites.values() if s.subjects < least)
        if small and len(small) == len(self.sites):
            counts = ", ".join(f"{name} {n}" for name, n in small)
            raise SiteFailure(f"every site holds fewer subjects than min-subjects ({least}): "
                              f"{counts}; none can release a histogram summary. Fix: add "
                              "data, or lower --min-subjects only if every site agrees")
        for name, n in small:
            log.warning("site %s holds %d subjects, fewer than min-subjects (%d): it will "
                        "release no histogram summary", name, n, least)

    def training_nodes(self, fold: int) -> list[int]:
        held_out = self.run.test_centre(fold)
        return sorted(n for n, s in self.sites.items() if held_out not in s.centres)

    def histogram_round(self, fold: int, outcome: FoldOutcome) -> Harmoniser:
        summaries = []
        for message in self._exchange(Kind.NYUL, self.training_nodes(fold), self._order(fold)):
            reply = replies.NyulReply.from_message(message)
            if reply.summary is None:
                outcome.refused.append(reply.site)
                log.warning("site %s sent no histogram summary: %s", reply.site,
                            reply.refused or "no summary")
                continue
            if reply.summary.n_subjects < self.run.min_subjects:  # should have refused
                outcome.refused.append(reply.site)
                continue
            summaries.append(reply.summary)
        if not summaries:
            raise SiteFailure("no site released a histogram summary; lower min-subjects only "
                              "if every site agrees")
        outcome.histogram = nyul.combine_histograms(summaries).tolist()
        outcome.bin_edges = list(summaries[0].bin_edges)
        return Harmoniser(self.run.prior).with_summaries(summaries)

    def run_fold(self, fold: int) -> FoldOutcome:
        outcome = FoldOutcome(fold=fold)
        landmarks = self.histogram_round(fold, outcome).landmarks
        model, init = build_model(self.run.pretrained, self.run.fold_seed(fold))
        arrays = ArrayRecord(model.state_dict())
        strategy = make_strategy(self.settings.strategy, self.settings.vote_alpha)
        strategy.train_nodes = self.training_nodes(fold)
        hyper = self.run.hyper
        stopper = EarlyStopping(hyper.patience)
        best_arrays, best_round = arrays, 0
        for rnd in range(1, hyper.max_epochs + 1):
            order = Order(run=self.run, fold=fold, server_round=rnd, landmarks=landmarks,
                          init_source=init.source).to_record()
            received = list(self.grid.send_and_receive(
                strategy.configure_train(rnd, arrays, order, self.grid),
                timeout=self.settings.round_timeout))
            received, rejected = screen(received, arrays, {n: s.frames for n, s in
                                                           self.sites.items()},
                                        {n: s.name for n, s in self.sites.items()}, rnd)
            outcome.rejected += [{"round": rnd, "site": r.site, "reason": r.reason}
                                 for r in rejected]
            ok = [r for r in received if not r.has_error()]
            if not ok:
                why = "; ".join(f"{r.site}: {r.reason}" for r in rejected) or "no reply"
                raise SiteFailure(f"round {rnd}: no usable update from any training site "
                                  f"({why})")
            trained = {r.metadata.src_node_id: TrainReply.from_message(r) for r in ok}
            val_auc, val_loss = self._pooled_val([t.val for t in trained.values()])
            new_arrays, _ = strategy.aggregate_train(rnd, received)
            self._log_round(outcome, rnd, trained, strategy.weights.get(rnd, {}), val_auc,
                            val_loss)
            # The model these replies validated is the previous round's global model. Round
            # 1's is the untrained initialisation: never a candidate (the centralised loop
            # never scores its untrained model either), though its loss of ln 2 can beat
            # overconfident trained models on a validation split of a few frames.
            if rnd > 1 and stopper.update(val_auc, val_loss, rnd - 1):
                best_arrays, best_round = arrays, rnd - 1
            arrays = new_arrays if new_arrays is not None else arrays
            if stopper.should_stop:
                log.info("fold %d: early stop after round %d (best: round %d)", fold, rnd,
                         best_round)
                break
        else:
            final = self._exchange(Kind.VALIDATE, self.training_nodes(fold), RecordDict(
                {ARRAYS: arrays, CONFIG: Order(run=self.run, fold=fold, landmarks=landmarks
                                               ).to_record()}))
            final_val = [replies.ValidateReply.from_message(m).val for m in final]
            if stopper.update(*self._pooled_val(final_val), hyper.max_epochs):
                best_arrays, best_round = arrays, hyper.max_epochs
        outcome.best_round, outcome.best_arrays = best_round, best_arrays
        self.test_round(fold, landmarks, best_arrays, outcome)
        return outcome

    def test_round(self, fold: int, landmarks, arrays: ArrayRecord, outcome: FoldOutcome) -> None:
        content = RecordDict({ARRAYS: arrays, CONFIG: Order(run=self.run, fold=fold,
                                                            landmarks=landmarks).to_record()})
        for message in self._exchange(Kind.TEST, sorted(self.sites), content):
            reply = replies.TestReply.from_message(message)
            outcome.test[reply.site] = reply.test

    @staticmethod
    def _pooled_val(counts: list[ScoreCounts]) -> tuple[float | None, float]:
        """AUC (from the summed binned counts) and loss of the received model over every
        site's validation frames, the loss weighted by each site's validation frames."""
        total = n = 0.0
        neg = pos = 0
        for c in counts:
            total += c.loss * c.examples
            n += c.examples
            neg = neg + np.asarray(c.neg)
            pos = pos + np.asarray(c.pos)
        return auc_from_counts(neg, pos), (total / n if n else np.inf)

    def _log_round(self, outcome: FoldOutcome, rnd: int, trained: dict[int, TrainReply],
                   weights: dict[int, float], pooled_auc: float | None,
                   pooled_val: float) -> None:
        for node, r in trained.items():
            outcome.rounds.append({
                "fold": outcome.fold, "round": rnd, "site": self._name(node),
                "n_k": r.num_examples, "weight": round(weights.get(node, 0.0), 6),
                "train_loss": r.train_loss, "batch_size": r.batch_size,
                "val_loss_received": r.val.loss, "val_auc_received": r.val.auc(),
                "pooled_val_loss_received": pooled_val,
                "pooled_val_auc_received": pooled_auc})
        shown = ", ".join(f"{row['site']} {row['weight']:.3f}" for row in outcome.rounds
                          if row["round"] == rnd)
        auc_text = "n/a" if pooled_auc is None else f"{pooled_auc:.3f}"
        log.info("fold %d round %d: received model pooled val AUC %s, loss %.4f; weights: %s",
                 outcome.fold, rnd, auc_text, pooled_val, shown)

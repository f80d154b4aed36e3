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

from fedcmr.common import nyul
from fedcmr.common.metrics import auc_from_counts
from fedcmr.common.model import build_model
from fedcmr.common.protocol import (
    ARRAYS,
    CONFIG,
    DESCRIBE,
    METRICS,
    NUM_EXAMPLES,
    NYUL,
    SITE,
    TEST,
    VALIDATE,
    Order,
)
from fedcmr.common.run_config import RunConfig
from fedcmr.server.early_stopping import EarlyStopping
from fedcmr.server.settings import FederationSettings
from fedcmr.server.strategies import make_strategy

log = logging.getLogger("fedcmr.server")


@dataclass(frozen=True)
class SiteInfo:
    node_id: int
    name: str
    centres: tuple[str, ...]
    frames: int


@dataclass
class FoldOutcome:
    fold: int
    rounds: list[dict] = field(default_factory=list)
    test: dict[str, dict] = field(default_factory=dict)  # site -> test metrics
    best_round: int = 0
    refused: list[str] = field(default_factory=list)
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
    def _exchange(self, message_type: str, nodes: list[int], content: RecordDict
                  ) -> list[Message]:
        messages = [Message(content=content, message_type=message_type, dst_node_id=n)
                    for n in nodes]
        replies = list(self.grid.send_and_receive(messages, timeout=self.settings.round_timeout))
        ok = [r for r in replies if not r.has_error()]
        for r in replies:
            if r.has_error():
                name = self._name(r.metadata.src_node_id)
                log.error("site %s failed %s: %s", name, message_type, r.error.reason)
        missing = len(nodes) - len(replies)
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
        for reply in self._exchange(DESCRIBE, nodes, RecordDict({CONFIG: ConfigRecord()})):
            site = reply.content.config_records[SITE]
            metrics = reply.content.metric_records[METRICS]
            info = SiteInfo(reply.metadata.src_node_id, str(site["name"]),
                            tuple(c for c in str(site["centres"]).split(",") if c),
                            int(metrics["frames"]))
            self.sites[info.node_id] = info
            log.info("site %s: centres %s, %d frames", info.name, ", ".join(info.centres),
                     info.frames)
        centres = sorted({c for s in self.sites.values() for c in s.centres})
        self.run = self.run.model_copy(update={"centres": tuple(centres)})

    def training_nodes(self, fold: int) -> list[int]:
        held_out = self.run.test_centre(fold)
        return sorted(n for n, s in self.sites.items() if held_out not in s.centres)

    def histogram_round(self, fold: int, outcome: FoldOutcome) -> np.ndarray:
        summaries = []
        for reply in self._exchange(NYUL, self.training_nodes(fold), self._order(fold)):
            site = reply.content.config_records[SITE]
            if "refused" in site:
                outcome.refused.append(str(site["name"]))
                log.warning("site %s sent no histogram summary: %s", site["name"],
                            site["refused"])
                continue
            summary = nyul.NyulSummary.from_record_dict(dict(reply.content.metric_records[METRICS]))
            if summary.n_subjects < self.run.min_subjects:  # the site should have refused
                outcome.refused.append(str(site["name"]))
                continue
            summaries.append(summary)
        if not summaries:
            raise SiteFailure("no site released a histogram summary; lower min-subjects only "
                              "if every site agrees")
        outcome.histogram = nyul.combine_histograms(summaries).tolist()
        outcome.bin_edges = list(summaries[0].bin_edges)
        return nyul.combine(summaries)

    def run_fold(self, fold: int) -> FoldOutcome:
        outcome = FoldOutcome(fold=fold)
        landmarks = tuple(float(x) for x in self.histogram_round(fold, outcome))
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
            replies = list(self.grid.send_and_receive(
                strategy.configure_train(rnd, arrays, order, self.grid),
                timeout=self.settings.round_timeout))
            ok = [r for r in replies if not r.has_error()]
            if not ok:
                raise SiteFailure(f"round {rnd}: no training site replied")
            val_auc, val_loss = self._pooled_val(ok)
            new_arrays, _ = strategy.aggregate_train(rnd, replies)
            self._log_round(outcome, rnd, ok, strategy.weights.get(rnd, {}), val_auc, val_loss)
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
            final = self._exchange(VALIDATE, self.training_nodes(fold), RecordDict(
                {ARRAYS: arrays, CONFIG: Order(run=self.run, fold=fold, landmarks=landmarks
                                               ).to_record()}))
            if stopper.update(*self._pooled_val(final), hyper.max_epochs):
                best_arrays, best_round = arrays, hyper.max_epochs
        outcome.best_round, outcome.best_arrays = best_round, best_arrays
        self.test_round(fold, landmarks, best_arrays, outcome)
        return outcome

    def test_round(self, fold: int, landmarks, arrays: ArrayRecord, outcome: FoldOutcome) -> None:
        content = RecordDict({ARRAYS: arrays, CONFIG: Order(run=self.run, fold=fold,
                                                            landmarks=landmarks).to_record()})
        for reply in self._exchange(TEST, sorted(self.sites), content):
            metrics = reply.content.metric_records[METRICS]
            outcome.test[str(reply.content.config_records[SITE]["name"])] = {
                "neg": np.asarray(metrics["test-neg"]), "pos": np.asarray(metrics["test-pos"]),
                "loss": float(metrics["test-loss"]), "n": int(metrics["test-examples"])}

    @staticmethod
    def _pooled_val(replies: list[Message]) -> tuple[float | None, float]:
        """AUC (from the summed binned counts) and loss of the received model over every
        site's validation frames."""
        total = n = 0.0
        neg = pos = 0
        for r in replies:
            m = r.content.metric_records[METRICS]
            total += float(m["val-loss"]) * float(m["val-examples"])
            n += float(m["val-examples"])
            neg = neg + np.asarray(m["val-neg"])
            pos = pos + np.asarray(m["val-pos"])
        return auc_from_counts(neg, pos), (total / n if n else np.inf)

    def _log_round(self, outcome: FoldOutcome, rnd: int, replies: list[Message],
                   weights: dict[int, float], pooled_auc: float | None,
                   pooled_val: float) -> None:
        for r in replies:
            m = r.content.metric_records[METRICS]
            node = r.metadata.src_node_id
            outcome.rounds.append({
                "fold": outcome.fold, "round": rnd, "site": self._name(node),
                "n_k": int(m[NUM_EXAMPLES]), "weight": round(weights.get(node, 0.0), 6),
                "train_loss": float(m["train-loss"]), "batch_size": int(m["batch-size"]),
                "val_loss_received": float(m["val-loss"]),
                "val_auc_received": auc_from_counts(np.asarray(m["val-neg"]),
                                                    np.asarray(m["val-pos"])),
                "pooled_val_loss_received": pooled_val,
                "pooled_val_auc_received": pooled_auc})
        shown = ", ".join(f"{row['site']} {row['weight']:.3f}" for row in outcome.rounds
                          if row["round"] == rnd)
        auc_text = "n/a" if pooled_auc is None else f"{pooled_auc:.3f}"
        log.info("fold %d round %d: received model pooled val AUC %s, loss %.4f; weights: %s",
                 outcome.fold, rnd, auc_text, pooled_val, shown)

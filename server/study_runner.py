"""The coordinator's side of a federated study run, fold by fold:

describe -> the fold's start (the run's model's: common/models/, e.g. the CNN's histogram
round, Nyul summaries combined N_k / N) -> training rounds (each reply also validates the
model it received) -> validation of the last model -> test of the best model at every site
(per-class binned score counts only).

Sites come and go (server/roster.py): a round is aggregated from the training sites that
answer with a usable update, when there are at least min-sites of them; otherwise the round
waits (at most rejoin-timeout) for lost sites to come back and is sent again, or the run
stops, resumable from the checkpoint written after every completed round
(server/checkpoint.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from flwr.app import ArrayRecord, Message, RecordDict
from flwr.serverapp import Grid

from fedcmr.common import replies
from fedcmr.common.learning.early_stopping import EarlyStopping
from fedcmr.common.metrics import auc_from_counts, auc_text
from fedcmr.common.models import registry
from fedcmr.common.models.base import FoldBegin, StartError
from fedcmr.common.protocol import ARRAYS, CONFIG, Kind, Order
from fedcmr.common.replies import START_REPLIES, ScoreCounts, TrainReply
from fedcmr.common.run_config import RunConfig
from fedcmr.common.update_codec import update_bytes
from fedcmr.server.audit_trail import model_hash
from fedcmr.server.checkpoint import Checkpoint, FoldState, restore_rng, state_dict
from fedcmr.server.handshake import HandshakeError, check_sites
from fedcmr.server.roster import POLL, Roster, SiteFailure, SiteInfo
from fedcmr.server.selection import UNSCORED, FoldSelection
from fedcmr.server.settings import FederationSettings
from fedcmr.server.strategies import FoldTraining, make_strategy
from fedcmr.server.update_checks import screen

log = logging.getLogger("fedcmr.server")
__all__ = ["FoldOutcome", "SiteFailure", "SiteInfo", "StudyRunner"]


@dataclass
class FoldOutcome:
    fold: int
    rounds: list[dict] = field(default_factory=list)
    test: dict[str, ScoreCounts] = field(default_factory=dict)  # site -> its test counts
    best_round: int = 0
    refused: list[str] = field(default_factory=list)
    #: Updates left out of aggregation: {"round", "site", "reason"}.
    rejected: list[dict] = field(default_factory=list)
    #: One row per aggregated round (server/audit_trail.py).
    audit: list[dict] = field(default_factory=list)
    best_arrays: ArrayRecord | None = None
    histogram: list[float] | None = None
    bin_edges: list[float] | None = None
    #: Every training site's released NyulSummary (as a dict), by site: the report's
    #: per-centre histograms before and after harmonisation.
    site_summaries: dict[str, dict] = field(default_factory=dict)
    #: The combined (reference) landmarks every site standardises to.
    landmarks: list[float] | None = None
    #: Where the fold's initial weights came from (common/model.InitInfo.source).
    init_source: str = "random"
    #: The rounds whose global model no site released validation frames for.
    unvalidated: list[int] = field(default_factory=list)

    @classmethod
    def of(cls, state: FoldState) -> FoldOutcome:
        best = None if state.best_arrays is None else ArrayRecord(state.best_arrays)
        return cls(fold=state.fold, rounds=state.rounds, test=state.test_counts(),
                   best_round=state.best_round, refused=state.refused,
                   rejected=state.rejected, audit=state.audit, best_arrays=best,
                   histogram=state.histogram, bin_edges=state.bin_edges,
                   site_summaries=state.site_summaries,
                   landmarks=None if state.landmarks is None else list(state.landmarks),
                   init_source=state.init_source, unvalidated=list(state.unvalidated))


class StudyRunner:
    def __init__(self, grid: Grid, settings: FederationSettings,
                 checkpoint: Checkpoint | None = None, events: list[dict] | None = None):
        """`events`: the site losses and returns of the run's earlier attempts (resume)."""
        self.grid = grid
        self.settings = settings
        self.roster = Roster(grid, settings, admit=self._admit, events=list(events or []))
        self.run: RunConfig = settings.run
        #: The run's model (common/models/): how a fold starts, and its bundle.
        self.model = registry.get(self.run.model)
        self.checkpoint = checkpoint
        #: (fold, site) whose withheld validation counts were logged; (fold, None): none.
        self._withheld: set[tuple[int, str | None]] = set()

    @property
    def sites(self) -> dict[int, SiteInfo]:
        """The sites by their current node id."""
        return {s.node_id: s for s in self.roster.sites.values()}

    def _order(self, fold: int, **kw) -> RecordDict:
        return RecordDict({CONFIG: Order(run=self.run, fold=fold, **kw).to_record()})

    # -- the protocol ------------------------------------------------------------------
    def discover(self) -> None:
        self.roster.wait_for(self.settings.sites, self.settings.wait_sites_timeout)
        self.roster.refresh("discovery")
        try:
            refused = check_sites({n: r.fingerprint for n, r in self.roster.described.items()})
        except HandshakeError as err:
            raise SiteFailure(str(err)) from err
        for name, reason in refused.items():
            self.roster.refuse(name, reason)
        if self.checkpoint:
            known = self.checkpoint.remember_sites(sorted(self.roster.sites))
            self.roster.expect(known)
            for name in sorted(set(known) - set(self.roster.sites)):
                log.error("site %s took part before the resume and is not back", name)
        if not self.roster.sites:
            why = "; ".join(f"{n}: {r}" for n, r in sorted(self.roster.refused.items()))
            raise SiteFailure(f"no site answered describe ({why})")
        self._check_counts()
        centres = sorted({c for s in self.roster.sites.values() for c in s.centres})
        self.run = self.run.model_copy(update={"centres": tuple(centres)})

    def _admit(self, reply: replies.DescribeReply) -> str | None:
        """A site coming back must still pass the handshake against the others."""
        others = {n: r.fingerprint for n, r in self.roster.described.items() if n != reply.site}
        try:
            return check_sites({**others, reply.site: reply.fingerprint}).get(reply.site)
        except HandshakeError as err:
            return str(err)

    def _check_counts(self) -> None:
        """A site with fewer subjects than min-subjects will refuse its histogram summary;
        when every site would, say so now rather than after the first fold's exchanges."""
        least = self.run.min_subjects
        sites = self.roster.sites.values()
        small = sorted((s.name, s.subjects) for s in sites if s.subjects < least)
        if small and len(small) == len(sites):
            counts = ", ".join(f"{name} {n}" for name, n in small)
            raise SiteFailure(f"every site holds fewer subjects than min-subjects ({least}): "
                              f"{counts}; none can release a histogram summary. Fix: add "
                              "data, or lower --min-subjects only if every site agrees")
        for name, n in small:
            log.warning("site %s holds %d subjects, fewer than min-subjects (%d): it will "
                        "release no histogram summary", name, n, least)

    def training_sites(self, fold: int) -> list[str]:
        held_out = self.run.test_centre(fold)
        return sorted(n for n, s in self.roster.sites.items() if held_out not in s.centres)

    def training_nodes(self, fold: int) -> list[int]:
        return sorted(self.roster.sites[n].node_id for n in self.training_sites(fold))

    def _start_fold(self, fold: int) -> FoldState:
        saved = self.checkpoint.load(fold) if self.checkpoint else None
        if saved is not None:
            log.info("fold %d: resuming after round %d (best so far: round %d)", fold,
                     saved.round, saved.best_round)
            restore_rng(saved.rng)
            return saved
        begin = self.begin_fold(fold)
        return FoldState(fold=fold, arrays=begin.state, best_arrays=begin.state,
                         landmarks=begin.landmarks, init_source=begin.init_source,
                         histogram=begin.histogram, bin_edges=begin.bin_edges,
                         refused=list(begin.refused), site_summaries=begin.site_summaries)

    def begin_fold(self, fold: int) -> FoldBegin:
        """The fold's first exchange, the model's (none where it has no start), and the
        global model the model makes of the training sites' replies."""
        replies = []
        if self.model.start is not None:
            reply_type, what = START_REPLIES[self.model.start]
            answers = self.roster.ask_all(self.model.start, self.training_sites(fold),
                                          self._order(fold), f"fold {fold} {what}")
            replies = [reply_type.from_message(m) for m in answers.values()]
        try:
            begin = self.model.begin_fold(self.run, fold, replies)
        except StartError as err:
            raise SiteFailure(str(err)) from err
        for site, why in begin.refused.items():
            log.warning("site %s %s", site, why)
        return begin

    def finished_fold(self, fold: int) -> FoldOutcome | None:
        saved = self.checkpoint.load(fold) if self.checkpoint else None
        return FoldOutcome.of(saved) if saved is not None and saved.done else None

    def run_fold(self, fold: int,
                 on_round: Callable[[FoldOutcome], None] = lambda outcome: None
                 ) -> FoldOutcome:
        """One fold; `on_round` is called after every completed round with the fold's
        outcome so far."""
        state = self._start_fold(fold)
        strategy = make_strategy(self.settings.strategy, self.settings.vote_alpha, self.run,
                                 weights=state.strategy_weights)
        chosen = FoldSelection(EarlyStopping.restore(self.run.hyper.patience, state.stopper),
                               ArrayRecord(state.best_arrays), state.best_round,
                               list(state.unvalidated))
        arrays = ArrayRecord(state.arrays)
        outcome = FoldOutcome.of(state)
        max_rounds = self.run.hyper.max_epochs
        stopped = chosen.should_stop
        for rnd in range(state.round + 1, max_rounds + 1):
            if stopped:
                break
            ok, trained = self._train_round(fold, rnd, arrays, strategy, state, outcome)
            counts = self._released_val(fold, rnd, trained.values())
            val_auc, val_loss = self._pooled_val(counts)
            new_arrays, _ = strategy.aggregate_train(rnd, ok)
            weights = strategy.weights.get(rnd, {})
            self._log_round(outcome, rnd, trained, weights, val_auc, val_loss)
            # these replies validated the previous round's global model (server/selection.py)
            chosen.offer(rnd - 1, arrays, (val_auc, val_loss) if counts else None)
            new_arrays = new_arrays if new_arrays is not None else arrays
            outcome.audit.append(self._audit_row(fold, rnd, trained, weights, outcome,
                                                 arrays, new_arrays))
            arrays = new_arrays
            stopped = chosen.should_stop
            self._save(state, outcome, rnd, arrays, chosen, strategy)
            on_round(outcome)
            if stopped:
                log.info("fold %d: early stop after round %d (best: round %d)", fold, rnd,
                         chosen.best_round)
        if not stopped:
            final = self.roster.ask_all(Kind.VALIDATE, self.training_sites(fold), RecordDict(
                {ARRAYS: arrays, CONFIG: Order(run=self.run, fold=fold,
                                               landmarks=state.landmarks).to_record()}),
                f"fold {fold} final validation")
            final_val = self._released_val(fold, max_rounds + 1, [
                replies.ValidateReply.from_message(m) for m in final.values()])
            chosen.offer(max_rounds, arrays, self._pooled_val(final_val) if final_val else None)
        chosen.say(fold)
        outcome.best_round, outcome.best_arrays = chosen.best_round, chosen.best_arrays
        outcome.unvalidated = chosen.unvalidated
        self.test_round(fold, state.landmarks, outcome.best_arrays, outcome)
        return outcome

    def save_finished(self, outcome: FoldOutcome) -> None:
        """Mark the fold done in the checkpoint (after its outputs are written): the
        outcome without the weights, which are in fold_K/best_model.pt."""
        if self.checkpoint:
            self.checkpoint.save(FoldState(
                fold=outcome.fold, round=self.run.hyper.max_epochs,
                best_round=outcome.best_round, histogram=outcome.histogram,
                bin_edges=outcome.bin_edges, refused=outcome.refused, rounds=outcome.rounds,
                rejected=outcome.rejected, audit=outcome.audit, done=True,
                unvalidated=outcome.unvalidated,
                site_summaries=outcome.site_summaries,
                landmarks=None if outcome.landmarks is None else tuple(outcome.landmarks),
                test={s: c.model_dump() for s, c in outcome.test.items()}))

    def _train_round(self, fold: int, rnd: int, arrays: ArrayRecord, strategy: FoldTraining,
                     state: FoldState, outcome: FoldOutcome
                     ) -> tuple[list[Message], dict[int, TrainReply]]:
        """The usable updates of round `rnd` from at least min-sites training sites: sent
        again to the sites present when too few came back, waiting at most rejoin-timeout
        in all for lost sites to return."""
        when = f"fold {fold} round {rnd}"
        wanted = self.training_sites(fold)
        need = min(self.settings.min_sites, len(wanted))
        deadline = time.monotonic() + self.settings.rejoin_timeout
        order = Order(run=self.run, fold=fold, server_round=rnd, landmarks=state.landmarks,
                      init_source=state.init_source).to_record()
        while True:
            self.roster.refresh(when)
            present = self.roster.present(wanted)
            for name in sorted(set(wanted) - set(present)):
                self.roster.note_lost(name, "offline (its node missed the SuperLink's "
                                            "heartbeats)", when)
            rejected: dict[str, str] = {}
            if len(present) >= need:
                ok, trained = self._collect(rnd, arrays, strategy, present, order, outcome,
                                            when)
                if len(ok) >= need:
                    return ok, trained
                rejected = {r["site"]: r["reason"] for r in outcome.rejected
                            if r["round"] == rnd}
                log.error("%s: %d usable update(s), fewer than min-sites (%d)", when,
                          len(ok), need)
            short = {n: rejected.get(n) or self.roster.away.get(n) for n in wanted
                     if n in rejected or n in self.roster.away}
            # rejected updates come back the same when sent again: only an absence may heal
            waiting = set(short) - set(rejected)
            if not waiting or time.monotonic() > deadline:
                why = "; ".join(f"{n}: {r}" for n, r in sorted(short.items()))
                raise SiteFailure(
                    f"{when}: fewer than min-sites ({need}) of the training sites "
                    f"({', '.join(wanted)}) sent a usable update; {why}. "
                    + (f"The checkpoint after round {rnd - 1} is kept: " if rnd > 1 else "")
                    + "fix or bring back the sites and rerun the same command with --resume")
            log.warning("%s: waiting for %s to come back (%.0f s left of --rejoin-timeout), "
                        "then the round is sent again", when, ", ".join(sorted(waiting)),
                        deadline - time.monotonic())
            time.sleep(POLL)

    def _collect(self, rnd, arrays, strategy, present, order, outcome, when):
        strategy.train_on(sorted(self.roster.sites[n].node_id for n in present))
        targets = {m.metadata.dst_node_id: m for m in
                   strategy.configure_train(rnd, arrays, order, self.grid)}
        by_name = {n: self.roster.sites[n].node_id for n in present}
        answers, failed = self.roster.exchange_messages(
            Kind.TRAIN, {n: targets[node] for n, node in by_name.items()}, when)
        # a site's policy refuses the same request again: rejected, not waited for
        outcome.rejected += [{"round": rnd, "site": n, "reason": str(f)}
                             for n, f in failed.items() if f.refusal is not None]
        screened = screen(list(answers.values()), arrays, self.roster.node_frames(),
                          self.roster.node_names(), rnd, self.run.update_encoding)
        outcome.rejected += [{"round": rnd, "site": r.site, "reason": r.reason}
                             for r in screened.rejected]
        return screened.messages, screened.replies

    def _save(self, state, outcome, rnd, arrays, chosen: FoldSelection, strategy) -> None:
        if not self.checkpoint:
            return
        state.round, state.best_round = rnd, chosen.best_round
        state.arrays, state.best_arrays = state_dict(arrays), state_dict(chosen.best_arrays)
        state.stopper, state.unvalidated = chosen.stopper.state(), list(chosen.unvalidated)
        state.strategy_weights = strategy.weights
        state.rounds, state.rejected, state.audit = outcome.rounds, outcome.rejected, \
            outcome.audit
        self.checkpoint.save(state)

    def _audit_row(self, fold, rnd, trained, weights, outcome, before, after) -> dict:
        names = self.roster.node_names()
        return {"fold": fold, "round": rnd,
                "contributed": [{"site": names.get(n, f"node {n}"), "n_k": t.num_examples,
                                 "weight": weights.get(n), **({} if t.dp_epsilon is None else
                                                              {"dp_epsilon": t.dp_epsilon})}
                                for n, t in sorted(
                                     trained.items(), key=lambda kv: names.get(kv[0], ""))],
                "rejected": [r for r in outcome.rejected if r["round"] == rnd],
                "away": dict(sorted(self.roster.away.items())),
                "model_before": model_hash(before), "model_after": model_hash(after)}

    def test_round(self, fold: int, landmarks, arrays: ArrayRecord, outcome: FoldOutcome) -> None:
        content = RecordDict({ARRAYS: arrays, CONFIG: Order(run=self.run, fold=fold,
                                                            landmarks=landmarks).to_record()})
        answers = self.roster.ask_all(Kind.TEST, sorted(self.roster.sites), content,
                                      f"fold {fold} test")
        for message in answers.values():
            reply = replies.TestReply.from_message(message)
            if reply.test is None:
                log.warning("fold %d: site %s withheld its test counts: %s", fold, reply.site,
                            reply.withheld)
                continue
            outcome.test[reply.site] = reply.test

    def _released_val(self, fold: int, rnd: int, answers) -> list[ScoreCounts]:
        """The validation counts the sites released for the model round `rnd` sent (a
        site's policy may withhold its own: said once per fold), leaving out counts of no
        frames. None at all: said once per fold (server/selection.py has the rule)."""
        counts = []
        for reply in answers:
            if not reply.withheld:
                counts += [reply.val] if reply.val.examples > 0 else []
            elif (fold, reply.site) not in self._withheld:
                self._withheld.add((fold, reply.site))
                log.warning("fold %d: site %s withholds its validation counts: %s", fold,
                            reply.site, reply.withheld)
        if not counts and rnd > 1 and (fold, None) not in self._withheld:
            self._withheld.add((fold, None))
            log.warning("fold %d: no site released validation frames for the model of round "
                        "%d (the sites that hold them are lost or withhold them): %s", fold,
                        rnd - 1, UNSCORED)
        return counts

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
        for node, r in sorted(trained.items(), key=lambda kv: kv[1].site):
            outcome.rounds.append({
                "fold": outcome.fold, "round": rnd, "site": r.site,
                "n_k": r.num_examples, "weight": round(weights.get(node, 0.0), 6),
                "update_bytes": update_bytes(r.arrays),
                "train_loss": r.train_loss, "batch_size": r.batch_size,
                "val_loss_received": None if r.withheld else r.val.loss,
                "val_auc_received": None if r.withheld else r.val.auc(),
                "pooled_val_loss_received": pooled_val,
                "pooled_val_auc_received": pooled_auc})
        shown = ", ".join(f"{row['site']} {row['weight']:.3f}" for row in outcome.rounds
                          if row["round"] == rnd)
        log.info("fold %d round %d: received model pooled val AUC %s, loss %.4f; weights: %s",
                 outcome.fold, rnd, auc_text(pooled_auc), pooled_val, shown)

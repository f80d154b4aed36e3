"""A fold's first exchange, before any training round: what the model starts from.

The CNN: the histogram round (each training site's Nyul summary of its training frames,
combined N_k / N into the reference landmarks every site standardises to). The measures
model: the training sites' per-measure sums, combined into the standardisation it starts
with (zero coefficients). A mixin of StudyRunner (server/study_runner.py), which supplies
`roster`, `run`, `training_sites` and `_order`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from fedcmr.common import nyul, replies
from fedcmr.common.learning import measures_model
from fedcmr.common.learning.harmonise import Harmoniser
from fedcmr.common.protocol import Kind
from fedcmr.server.roster import SiteFailure

if TYPE_CHECKING:
    from fedcmr.server.study_runner import FoldOutcome

log = logging.getLogger("fedcmr.server")


class FoldStart:
    def histogram_round(self, fold: int, outcome: FoldOutcome) -> Harmoniser:
        summaries = []
        answers = self.roster.ask_all(Kind.NYUL, self.training_sites(fold), self._order(fold),
                                      f"fold {fold} histogram round")
        for message in answers.values():
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
            outcome.site_summaries[reply.site] = reply.summary.model_dump()
        if not summaries:
            raise SiteFailure("no site released a histogram summary; lower min-subjects only "
                              "if every site agrees")
        outcome.histogram = nyul.combine_histograms(summaries).tolist()
        outcome.bin_edges = list(summaries[0].bin_edges)
        harmoniser = Harmoniser(self.run.prior).with_summaries(summaries)
        outcome.landmarks = list(harmoniser.landmarks)
        return harmoniser

    def measure_stats_round(self, fold: int, outcome: FoldOutcome) -> dict:
        """The measures model's start: its standardisation from the training sites' released
        sums (pooled mean and SD), zero coefficients."""
        parts = []
        answers = self.roster.ask_all(Kind.MEASURE_STATS, self.training_sites(fold),
                                      self._order(fold), f"fold {fold} measure sums")
        for message in answers.values():
            reply = replies.MeasureStatsReply.from_message(message)
            if reply.sums is None or reply.sums.n < self.run.min_subjects:
                outcome.refused.append(reply.site)
                log.warning("site %s sent no measure sums: %s", reply.site,
                            reply.refused or f"{reply.sums.n} subjects")
                continue
            parts.append(reply.sums)
        if not parts:
            raise SiteFailure("no site released its measure sums; lower min-subjects only "
                              "if every site agrees")
        mean, std = measures_model.combine_sums(parts)
        return measures_model.initial_state(mean, std)

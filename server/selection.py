"""Which global model a federated fold keeps (the study runner's rule, in one place).

Round r's train replies validate round r - 1's global model; after the last round the final
model is validated on its own. A model is scored by the pooled validation of every site that
released validation frames for it (common/learning/early_stopping.py ranks them and counts
the patience). Two rules keep the untrained start from ever being kept:
- round 0's model (the initialisation) is never offered: its loss of ln 2 can beat
  overconfident trained models on a validation split of a few frames;
- a model no site released validation frames for (the sites that hold them lost, or their
  policy withholding them) is not scored and does not count for patience; it is kept as the
  best only while no trained model has been scored, so that the latest trained model, not
  the untrained start, is kept when validation is missing from the start or vanishes before
  any trained model was scored.
Which rule kept the fold's model, and which models went unscored, are recorded in
summary.json and metrics.json (`record`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from flwr.app import ArrayRecord

from fedcmr.common.learning.early_stopping import EarlyStopping

log = logging.getLogger("fedcmr.server")
#: What happens to a model no site released validation frames for (said once per fold).
UNSCORED = ("it is not scored, and an unscored model is kept only while no trained model of "
            "the fold has been scored")


@dataclass
class FoldSelection:
    stopper: EarlyStopping
    best_arrays: ArrayRecord | None
    best_round: int
    #: The rounds whose global model no site released validation frames for.
    unvalidated: list[int] = field(default_factory=list)

    def offer(self, model_round: int, arrays: ArrayRecord,
              pooled: tuple[float | None, float] | None) -> None:
        """Round `model_round`'s global model, with its pooled validation (AUC, loss), or
        None when no site released validation frames for it."""
        if model_round < 1:
            return
        if pooled is None:
            self.unvalidated.append(model_round)
            if self.stopper.best_step < 0:
                self.best_arrays, self.best_round = arrays, model_round
        elif self.stopper.update(*pooled, model_round):
            self.best_arrays, self.best_round = arrays, model_round

    @property
    def should_stop(self) -> bool:
        return self.stopper.should_stop

    def say(self, fold: int) -> None:
        """A warning when the model kept was never scored."""
        if self.best_round in self.unvalidated:
            log.warning("fold %d: the model of round %d is kept unscored: %s", fold,
                        self.best_round, record(self.best_round, self.unvalidated)["rule"])


def record(best_round: int, unvalidated: list[int]) -> dict:
    """How the fold's model was selected, for summary.json and metrics.json."""
    if best_round in unvalidated:
        rule = ("latest trained model: no site released validation frames for it, and no "
                "trained model of the fold was scored")
    else:
        rule = "lowest pooled validation loss (ties: higher AUC) among the scored models"
    return {"best_round": best_round, "rule": rule, "unvalidated_rounds": list(unvalidated)}

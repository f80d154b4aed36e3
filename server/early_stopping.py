"""Which model to keep, and when to stop: shared by the centralised loop and the federated
study runner, so both select the same way."""

from __future__ import annotations

import math


class EarlyStopping:
    """Best model by validation AUC, ties broken by validation loss, with patience.

    AUC first because it is the study's metric and, unlike the loss, does not punish a model
    for confident outputs whose ranking is right (with few batches per epoch BatchNorm's
    running statistics lag and inflate the validation loss while the ranking improves).
    An undefined AUC (one class) ranks below any defined one.
    """

    def __init__(self, patience: int):
        self.patience = patience
        self.best: tuple[float, float] = (-math.inf, -math.inf)
        self.best_step = -1
        self.bad = 0

    def update(self, auc: float | None, loss: float, step: int) -> bool:
        """True when (auc, loss) is a new best."""
        key = (-math.inf if auc is None else auc, -loss)
        if key > self.best:
            self.best, self.best_step, self.bad = key, step, 0
            return True
        self.bad += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.bad >= self.patience

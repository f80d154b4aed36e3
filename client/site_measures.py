"""What a hospital does for each message when the run trains the measures model
(common/learning/measures_model.py): the same messages, policy and release rules as the
CNN's (client/site_work.py), on its subjects' clinical measures from CACHE/measures.csv.

What leaves: the per-measure sums of its training subjects (once per fold), the model's
four arrays after its local steps, n_k, and binned validation and test score counts. The
per-subject measures and scores stay at the site.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
import torch
from flwr.app import ArrayRecord

from fedcmr.client.site_policy import PolicyRefusal
from fedcmr.common.learning import measures_model as mm
from fedcmr.common.protocol import Order
from fedcmr.common.replies import (
    MeasureStatsReply,
    ScoreCounts,
    TestReply,
    TrainReply,
    ValidateReply,
)
from fedcmr.common.results import prediction_rows, write_predictions

if TYPE_CHECKING:
    from fedcmr.client.site_work import Site

log = logging.getLogger("fedcmr.client")
StateDict = dict[str, torch.Tensor]


def stats(site: Site, order: Order) -> MeasureStatsReply:
    """The sums of the training subjects' measures, or a refusal the server can log."""
    train = site.parts(order)["train"]
    try:
        site.policy.admit(order.run)
        site.release("train", train, site.policy.histogram_floor(order.run),
                     f"fold {order.fold} measure sums")
    except PolicyRefusal as err:
        return MeasureStatsReply(site=site.name, refused=str(err))
    _, x, _ = mm.subject_table(train, site.measures())
    return MeasureStatsReply(site=site.name, sums=mm.sums(x))


def _counts(site: Site, order: Order, part: str, state: Mapping[str, torch.Tensor]
            ) -> tuple[ScoreCounts, np.ndarray]:
    frames = site.parts(order)[part]
    labels, scores, loss = mm.frame_scores(frames, site.measures(), state)
    return ScoreCounts.of(labels, scores, loss), scores


def _val(site: Site, order: Order, state) -> tuple[ScoreCounts, str | None]:
    withheld = site.release_scores(site.parts(order)["val"],
                                   f"fold {order.fold} validation counts")
    if withheld:
        return ScoreCounts.of(np.zeros(0), np.zeros(0), 0.0), withheld
    return _counts(site, order, "val", state)[0], None


def train(site: Site, order: Order, state: StateDict) -> TrainReply:
    """Validate the received model, then `local_iterations` full-batch gradient steps on the
    site's training subjects (n_k: its training frames, as for the CNN)."""
    site.policy.admit(order.run)
    frames = site.parts(order)["train"]
    site.release("train", frames, site.policy.min_subjects, f"fold {order.fold} model update")
    val, withheld = _val(site, order, state)
    _, x, y = mm.subject_table(frames, site.measures())
    steps = order.run.hyper.local_iterations
    new_state, start_loss = mm.local_steps(state, x, y, steps)
    return TrainReply(site=site.name, arrays=ArrayRecord(new_state), num_examples=len(frames),
                      train_loss=start_loss, train_batches=steps, batch_size=len(x),
                      server_round=order.server_round, val=val, withheld=withheld)


def validate(site: Site, order: Order, state: StateDict) -> ValidateReply:
    site.policy.admit(order.run)
    val, withheld = _val(site, order, state)
    return ValidateReply(site=site.name, val=val, withheld=withheld)


def test(site: Site, order: Order, state: StateDict) -> TestReply:
    """Score the test split; per-frame scores stay in the site's own folder."""
    site.policy.admit(order.run)
    frames = site.parts(order)["test"]
    counts, scores = _counts(site, order, "test", state)
    write_predictions(site.out_dir / f"fold_{order.fold}" / "predictions.csv",
                      prediction_rows(frames, scores, order.fold))
    withheld = site.release_scores(frames, f"fold {order.fold} test counts")
    return TestReply(site=site.name, test=None if withheld else counts, withheld=withheld)

"""Aggregation strategies: Flower's FedAvg with the site weights the study compares.

`WeightedVote` overrides two steps of FedAvg and nothing else: `configure_train` (only the
fold's training sites get a train message) and `aggregate_train` (weights n_k ** alpha).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fedcmr.common.protocol import METRICS, SITE
from fedcmr.common.replies import NUM_EXAMPLES
from fedcmr.server.settings import strategy_alpha

log = logging.getLogger("fedcmr.server")

VOTE = "vote-weight"


class WeightedVote(FedAvg):
    """FedAvg with site weights proportional to n_k ** vote_alpha.

    Parameters
    ----------
    vote_alpha : float (default: 1.0)
        1 gives FedAvg (n_k / n), 0 the equal vote of FL-EV (1 / K), values in between the
        intermediate schemes the paper leaves as future work.
    **kwargs
        Passed to FedAvg.
    """

    def __init__(self, vote_alpha: float = 1.0, **kwargs) -> None:
        super().__init__(weighted_by_key=VOTE, **kwargs)
        self.vote_alpha = vote_alpha
        #: Node ids that train this fold (None: every connected node, as in FedAvg).
        self.train_nodes: list[int] | None = None
        #: Effective weight per node id, by server round.
        self.weights: dict[int, dict[int, float]] = {}

    def summary(self) -> None:
        """Log this strategy's settings, then FedAvg's."""
        log.info("\t├──> WeightedVote settings:")
        log.info("\t│\t├── vote_alpha (site weight n_k ** alpha): %s", self.vote_alpha)
        log.info("\t│\t└── training nodes: %s",
                 "all" if self.train_nodes is None else self.train_nodes)
        super().summary()

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """Train messages to this fold's training sites only."""
        if self.train_nodes is None:
            return super().configure_train(server_round, arrays, config, grid)
        config["server-round"] = server_round
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        return [Message(content=record, message_type=MessageType.TRAIN, dst_node_id=node)
                for node in self.train_nodes]

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Attach each site's vote n_k ** alpha to its reply, then FedAvg's weighted mean.

        Replies are summed in a fixed order (by site name, then node id), not in their order
        of arrival: float addition is not associative, and a run must replay exactly.
        """
        replies = sorted(replies, key=_reply_order)
        valid = [m for m in replies if not m.has_error()]
        votes = {}
        for msg in valid:
            metrics = msg.content.metric_records[METRICS]
            votes[msg.metadata.src_node_id] = float(metrics[NUM_EXAMPLES]) ** self.vote_alpha
            metrics[VOTE] = votes[msg.metadata.src_node_id]
        total = sum(votes.values())
        self.weights[server_round] = {k: v / total for k, v in votes.items()} if total else {}
        return super().aggregate_train(server_round, replies)


def _reply_order(msg: Message) -> tuple[str, int]:
    site = "" if msg.has_error() else str(msg.content.config_records.get(SITE, {}).get("name", ""))
    return site, msg.metadata.src_node_id


def make_strategy(name: str, vote_alpha: float | None = None) -> WeightedVote:
    alpha = strategy_alpha(name, vote_alpha)
    # Every site is sampled; the train set is fixed per fold by train_nodes.
    return WeightedVote(vote_alpha=alpha, fraction_evaluate=0.0, min_train_nodes=1,
                        min_evaluate_nodes=0, min_available_nodes=1)

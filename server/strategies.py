"""Aggregation strategies: Flower's own, with what every fedcmr strategy adds.

`FoldTraining` overrides two steps and nothing else: `configure_train` (only the fold's
training sites get a train message) and `aggregate_train` (replies in a fixed order, each
site's vote n_k ** alpha attached, integer buffers kept as counts, fp16 deltas decoded
against the round's global model: common/update_codec.py). Mixed into Flower's FedAvg it
gives the study's weighted means (fedavg, equal-vote, tempered); mixed into FedMedian,
FedTrimmedAvg and Krum it gives the robust rules, applied to the same messages.

With four hospitals (three training sites under leave-centre-out): the coordinate-wise
median (`median`) and the trimmed mean (`trimmed-mean`, beta 0.25: one site cut at each
end of four, none of three) tolerate one bad site without knowing which; Krum (`krum`, one
assumed bad site) needs at least 2 f + 3 = 5 training sites and is refused with fewer.
The robust rules weigh no site by n_k, so rounds.csv records no per-site weight for them.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable

from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, FedMedian, FedTrimmedAvg, Krum

from fedcmr.common.learning.privacy import mean_noise_std
from fedcmr.common.protocol import METRICS, SITE
from fedcmr.common.replies import NUM_EXAMPLES
from fedcmr.common.run_config import RunConfig, UpdateEncoding
from fedcmr.server.settings import strategy_alpha
from fedcmr.server.strategy_names import VOTE_STRATEGIES
from fedcmr.server.update_checks import (
    as_numpy,
    decoded_message,
    integer_tensors,
    with_tensors,
)

log = logging.getLogger("fedcmr.server")

VOTE = "vote-weight"
#: Trimmed mean: the share of sites cut at each end.
TRIM_BETA = 0.25
#: Krum: the number of bad sites it is asked to tolerate.
KRUM_BAD_SITES = 1


class FoldTraining:
    """The fold's training sites, a fixed reply order, votes n_k ** vote_alpha, counts kept.

    Parameters
    ----------
    vote_alpha : float (default: 1.0)
        1 gives FedAvg (n_k / n), 0 the equal vote of FL-EV (1 / K), values in between the
        intermediate schemes the paper leaves as future work.
    update_encoding : str (default: "fp32")
        How the sites send their weights (RunConfig.update_encoding); deltas are decoded
        against the global model `configure_train` sent, before aggregation.
    **kwargs
        Passed to the Flower strategy this is mixed into.
    """

    #: Whether the aggregate is the vote-weighted mean (False: a robust rule).
    weighted = True

    def __init__(self, vote_alpha: float = 1.0, update_encoding: UpdateEncoding = "fp32",
                 weights: dict[int, dict[int, float]] | None = None, **kwargs) -> None:
        super().__init__(weighted_by_key=VOTE, **kwargs)
        self.vote_alpha = vote_alpha
        self.update_encoding = update_encoding
        #: The global model sent for each round (what deltas are decoded against).
        self.sent: dict[int, ArrayRecord] = {}
        #: Node ids that train this fold (None: every connected node, as in FedAvg).
        self.train_nodes: list[int] | None = None
        #: Effective weight per node id, by server round (NaN: the rule weighs none); a
        #: resumed fold starts from its checkpoint's (`weights`).
        self.weights: dict[int, dict[int, float]] = dict(weights or {})

    def train_on(self, nodes: Iterable[int]) -> None:
        """The node ids that train the next rounds (the fold's training sites present)."""
        self.train_nodes = list(nodes)

    def summary(self) -> None:
        """Log this strategy's settings, then Flower's."""
        log.info("\t├──> %s settings:", type(self).__name__)
        log.info("\t│\t├── vote_alpha (site weight n_k ** alpha): %s", self.vote_alpha)
        log.info("\t│\t└── training nodes: %s",
                 "all" if self.train_nodes is None else self.train_nodes)
        super().summary()

    def check_sites(self, n_sites: int) -> None:
        """Raise when the rule cannot work with this many training sites."""

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """Train messages to this fold's training sites only."""
        self.sent = {server_round: arrays}
        if self.train_nodes is None:
            return super().configure_train(server_round, arrays, config, grid)
        self.check_sites(len(self.train_nodes))
        config["server-round"] = server_round
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        return [Message(content=record, message_type=MessageType.TRAIN, dst_node_id=node)
                for node in self.train_nodes]

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Attach each site's vote n_k ** alpha to its reply, then Flower's aggregation.

        Replies are summed in a fixed order (by site name, then node id), not in their order
        of arrival: float addition is not associative, and a run must replay exactly. A
        site whose vote is not a positive number is left out (the server's update checks
        reject it first, with the reason); with none left there is no aggregate.
        """
        reference = None
        if self.update_encoding != "fp32":
            if server_round not in self.sent:
                raise ValueError(f"round {server_round}: no global model was sent for it, so "
                                 f"its {self.update_encoding} updates cannot be decoded")
            reference = as_numpy(self.sent[server_round])
        replies = [decoded_message(m, reference, self.update_encoding) for m in replies]
        kept, votes = [], {}
        for msg in sorted(replies, key=_reply_order):
            if msg.has_error():
                kept.append(msg)
                continue
            metrics = msg.content.metric_records[METRICS]
            n_k = float(metrics[NUM_EXAMPLES])
            if not (n_k > 0 and math.isfinite(n_k)):
                log.error("round %d: left out a reply with n_k = %s", server_round, n_k)
                continue
            votes[msg.metadata.src_node_id] = n_k ** self.vote_alpha
            metrics[VOTE] = votes[msg.metadata.src_node_id]
            kept.append(msg)
        total = sum(votes.values())
        self.weights[server_round] = ({k: v / total for k, v in votes.items()} if self.weighted
                                      else dict.fromkeys(votes, math.nan))
        if not votes:
            return None, None
        # read before aggregating: Flower's median and trimmed mean consume the records
        counts = integer_tensors(next(m for m in kept if not m.has_error()))
        arrays, metrics = super().aggregate_train(server_round, kept)
        return (None if arrays is None else with_tensors(arrays, counts)), metrics


def _reply_order(msg: Message) -> tuple[str, int]:
    site = "" if msg.has_error() else str(msg.content.config_records.get(SITE, {}).get("name", ""))
    return site, msg.metadata.src_node_id


class WeightedVote(FoldTraining, FedAvg):
    """FedAvg with site weights proportional to n_k ** vote_alpha."""


class PrivateVote(WeightedVote):
    """WeightedVote under differential privacy. The sites clip their updates and add the
    noise themselves (common/learning/privacy.py has the whole scheme); this strategy adds
    nothing and records the noise each round's mean carries (each site's own epsilon goes
    into the audit trail with its update).

    Parameters
    ----------
    dp_clip : float
        The L2 norm to which each site clipped its update (the run's dp-clip).
    dp_noise : float
        The noise multiplier Z: each site's noise has standard deviation Z * dp_clip.
    **kwargs
        Passed to WeightedVote.
    """

    def __init__(self, vote_alpha: float = 1.0, dp_clip: float = 1.0, dp_noise: float = 1.0,
                 **kwargs) -> None:
        super().__init__(vote_alpha, **kwargs)
        self.dp_clip, self.dp_noise = dp_clip, dp_noise
        #: The standard deviation of the noise on the weighted mean, by server round.
        self.noise_stds: dict[int, float] = {}

    def summary(self) -> None:
        log.info("\t├──> differential privacy at the sites: clip %s, noise multiplier %s",
                 self.dp_clip, self.dp_noise)
        super().summary()

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """WeightedVote's aggregate of the sites' noisy updates; the noise it carries."""
        arrays, metrics = super().aggregate_train(server_round, replies)
        if arrays is not None:
            self.noise_stds[server_round] = mean_noise_std(
                self.dp_noise, self.dp_clip, self.weights[server_round].values())
        return arrays, metrics


class Median(FoldTraining, FedMedian):
    """The coordinate-wise median of the sites' weights."""

    weighted = False


class TrimmedMean(FoldTraining, FedTrimmedAvg):
    """The coordinate-wise mean after cutting TRIM_BETA of the sites at each end."""

    weighted = False

    def __init__(self, vote_alpha: float = 1.0, **kwargs) -> None:
        super().__init__(vote_alpha, beta=TRIM_BETA, **kwargs)


class KrumVote(FoldTraining, Krum):
    """The site update closest to its n - f - 2 nearest others (f = KRUM_BAD_SITES)."""

    weighted = False

    def __init__(self, vote_alpha: float = 1.0, **kwargs) -> None:
        super().__init__(vote_alpha, num_malicious_nodes=KRUM_BAD_SITES, **kwargs)

    def check_sites(self, n_sites: int) -> None:
        need = 2 * KRUM_BAD_SITES + 3
        if n_sites < need:
            raise ValueError(f"krum tolerating {KRUM_BAD_SITES} bad site needs at least "
                             f"{need} training sites; this fold has {n_sites}. Fix: use "
                             "--strategy median or trimmed-mean")


#: Each strategy's class, by its name (server/strategy_names.py: every weighted vote is a
#: WeightedVote with its exponent; tests/test_strategies.py checks the names agree).
STRATEGIES: dict[str, type[FoldTraining]] = {
    **dict.fromkeys(VOTE_STRATEGIES, WeightedVote),
    "median": Median, "trimmed-mean": TrimmedMean, "krum": KrumVote}


def make_strategy(name: str, vote_alpha: float | None = None, run: RunConfig | None = None,
                  weights: dict[int, dict[int, float]] | None = None) -> FoldTraining:
    """The strategy `name`; PrivateVote when the run asks for differential privacy.
    `weights`: the site weights of the rounds a resumed fold already aggregated."""
    alpha = strategy_alpha(name, vote_alpha)
    # Every site is sampled; the train set is fixed per fold by train_on.
    common = {"fraction_evaluate": 0.0, "min_train_nodes": 1, "min_evaluate_nodes": 0,
              "min_available_nodes": 1, "weights": weights,
              "update_encoding": "fp32" if run is None else run.update_encoding}
    if run is None or not run.private:
        return STRATEGIES[name](vote_alpha=alpha, **common)
    if not STRATEGIES[name].weighted:
        raise ValueError(f"--dp-clip works with the weighted strategies "
                         f"({', '.join(VOTE_STRATEGIES)}), whose noise it can calibrate; "
                         f"not with {name}")
    return PrivateVote(vote_alpha=alpha, dp_clip=run.dp_clip, dp_noise=run.dp_noise,
                       **common)

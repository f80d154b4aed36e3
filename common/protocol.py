"""The messages between coordinator and hospitals: types, record keys, and the complete list
of what a hospital may send back. The audit mod (client/audit.py) and its test check every
reply against REPLY_ALLOWED, so nothing else can leave a site unnoticed.
"""

from __future__ import annotations

from flwr.app import ConfigRecord, MessageType
from pydantic import BaseModel, ConfigDict

from fedcmr.common.run_config import RunConfig

DESCRIBE = "query.describe"  # who are you: site name, centres, frame counts
NYUL = "query.nyul"  # the site's histogram summary of its training frames
TRAIN = MessageType.TRAIN  # local training (+ validation of the received model)
VALIDATE = "query.validate"  # validation of a global model (after the last round)
TEST = "query.test"  # scoring of the best model on the site's test split

ARRAYS, CONFIG, METRICS, SITE = "arrays", "config", "metrics", "site"
#: FedAvg's weighting key: a site's number of training frames (n_k).
NUM_EXAMPLES = "num-examples"

_COUNTS = ("neg", "pos")  # per-class binned score counts (common.metrics.binned_counts)

#: For every message type, the records and keys a reply may hold (nothing per subject).
REPLY_ALLOWED: dict[str, dict[str, set[str]]] = {
    DESCRIBE: {SITE: {"name", "centres"}, METRICS: {"frames", "subjects"}},
    NYUL: {SITE: {"name", "refused"},
           METRICS: {"landmark_sum", "n_images", "n_subjects", "histogram", "bin_edges"}},
    TRAIN: {SITE: {"name"}, ARRAYS: {"*"},
            METRICS: {NUM_EXAMPLES, "train-loss", "train-batches", "batch-size", "val-loss",
                      "val-examples", *(f"val-{c}" for c in _COUNTS)}},
    VALIDATE: {SITE: {"name"}, METRICS: {"val-loss", "val-examples",
                                         *(f"val-{c}" for c in _COUNTS)}},
    TEST: {SITE: {"name"}, METRICS: {"test-loss", "test-examples",
                                     *(f"test-{c}" for c in _COUNTS)}},
}


class Order(BaseModel):
    """What the server asks of a site for one message: the run, the fold, the reference
    landmarks once the histogram round has produced them."""

    model_config = ConfigDict(frozen=True)

    run: RunConfig
    fold: int = 0
    server_round: int = 0
    landmarks: tuple[float, ...] | None = None
    #: How the global model was initialised ("kinetics400", "file:..", "random"): the body
    #: learning rate depends on it.
    init_source: str = "random"

    def to_record(self) -> ConfigRecord:
        return ConfigRecord({"order": self.model_dump_json()})

    @classmethod
    def from_record(cls, record: ConfigRecord) -> Order:
        return cls.model_validate_json(str(record["order"]))

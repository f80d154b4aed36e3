"""The messages between coordinator and hospitals: their kinds, record names and the request.

Every kind is spelled once, here (`Kind`); the ClientApp registers its handlers with
`Kind.X.action` and the server sends `Kind.X`. What a site may send back is typed in
common/replies.py, whose models also give the audit gate its allow-list.
"""

from __future__ import annotations

from enum import StrEnum

from flwr.app import ConfigRecord, MessageType
from pydantic import BaseModel, ConfigDict

from fedcmr.common.run_config import RunConfig


class Kind(StrEnum):
    """A message's type as Flower carries it (`<category>` or `<category>.<action>`)."""

    DESCRIBE = f"{MessageType.QUERY}.describe"  # who are you: site name, centres, counts
    NYUL = f"{MessageType.QUERY}.nyul"  # the site's histogram summary of its training frames
    #: The measures model's standardisation: per-measure sums over the training subjects.
    MEASURE_STATS = f"{MessageType.QUERY}.measure_stats"
    TRAIN = MessageType.TRAIN  # local training (+ validation of the received model)
    VALIDATE = f"{MessageType.QUERY}.validate"  # validation of a global model (final round)
    TEST = f"{MessageType.QUERY}.test"  # scoring of the best model on the site's test split
    #: The study run is over: the site marks it in its out-dir and its `fedcmr client`
    #: stops (client/supernode_watch.py); sent once, after the results are written.
    FINISHED = f"{MessageType.QUERY}.finished"

    @property
    def action(self) -> str | None:
        """The action after the category ("describe"), None for a bare category."""
        return self.value.partition(".")[2] or None


#: Record names inside a message's RecordDict.
ARRAYS, CONFIG, METRICS, SITE = "arrays", "config", "metrics", "site"
#: The file a site writes into its out-dir on FINISHED (its run id and time, as JSON).
FINISHED_MARKER = ".run-finished"
#: How a site's refusal under its own policy reads (an error reply, a withheld part): the
#: same request would be refused again, so the coordinator does not wait for it to heal.
POLICY_REFUSED = "refused by the site's policy"


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

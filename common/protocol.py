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
    #: stops (client/runtime/supernode_watch.py); sent once, after the results are written.
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


class RefusalRule(StrEnum):
    """The rule of a site's release policy (client/site/policy.py) that refused a request
    or withheld part of a reply. A refused request comes back as a Flower error whose code
    is the rule's `code`; a withheld part as a `Refusal` in the reply: the coordinator reads
    the code, never the text."""

    MODELS = "models"
    PROTOCOLS = "protocols"
    CCV_FOLDS = "ccv_folds"
    VAL_FRACTIONS = "val_fractions"
    SPLIT_SEED = "split_seed"
    MIN_SUBJECTS = "min_subjects"
    MIN_EVAL_SUBJECTS = "min_eval_subjects"
    MIN_DIFFERENCE = "min_difference"
    MAX_RELEASED_SETS = "max_released_sets"
    #: One released subject set scored under more distinct models than the policy allows.
    MAX_MODELS_PER_SET = "max_models_per_set"
    #: A received model outside the bounds the site accepts (a measures model whose slope
    #: would single out a subject).
    MODEL_BOUNDS = "model_bounds"
    #: The run's differential privacy is weaker than the site requires, or absent.
    DIFFERENTIAL_PRIVACY = "differential_privacy"

    @property
    def code(self) -> int:
        """The Flower error code of a request refused under this rule."""
        return REFUSAL_CODE_BASE + list(RefusalRule).index(self)

    @classmethod
    def of_code(cls, code: int) -> RefusalRule | None:
        """The rule behind a Flower error code; None for any other error."""
        rules = list(cls)
        index = code - REFUSAL_CODE_BASE
        return rules[index] if 0 <= index < len(rules) else None


#: Flower's own error codes are small integers (flwr.common.constant.ErrorCode).
REFUSAL_CODE_BASE = 4030


class Refusal(BaseModel):
    """Why a site's policy refused or withheld something: the rule, and a text that names
    the rule and counts, never a path or a subject (it may leave the site in full)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rule: RefusalRule
    text: str

    def __str__(self) -> str:
        return f"{POLICY_REFUSED} ({self.rule}): {self.text}"


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

"""What a hospital sends back, one pydantic model per message kind, typed at both ends.

A reply travels as a Flower RecordDict: the site's name (and other text) in the `site`
ConfigRecord, numbers in the `metrics` MetricRecord, model weights in the `arrays`
ArrayRecord. Where each field travels is declared once on the field (`Wire`); `to_content`
and `from_content` follow it, and `allowed()` derives from it the complete list of records
and keys a reply may hold, which the site's audit gate (client/site/audit.py) enforces.
Nothing here is per subject.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from typing import Annotated, Any, ClassVar, get_args, get_origin

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from pydantic import BaseModel, ConfigDict

from fedcmr.common.handshake import SiteFingerprint
from fedcmr.common.measures import MeasureSums
from fedcmr.common.metrics import auc_from_counts, binned_counts
from fedcmr.common.nyul import NyulSummary
from fedcmr.common.protocol import ARRAYS, METRICS, SITE, Kind, Refusal

ANY_KEY = "*"


@dataclass(frozen=True)
class Wire:
    """Where a field travels: its record, and its key there (default: the field name with
    dashes). A nested model is flattened into the record, each of its keys behind
    `prefix-` (or as they are, with prefix "")."""

    record: str
    key: str | None = None
    prefix: str | None = None


class ScoreCounts(BaseModel):
    """A site's scores of one split as the federation may see them: per-class binned counts
    (common.metrics.binned_counts), the mean loss and the frame count."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    loss: float
    examples: int
    neg: list[int]
    pos: list[int]

    @classmethod
    def of(cls, labels: np.ndarray, scores: np.ndarray, loss: float) -> ScoreCounts:
        neg, pos = binned_counts(labels, scores)
        return cls(loss=float(loss) if len(labels) else 0.0, examples=int(len(labels)),
                   neg=neg.tolist(), pos=pos.tolist())

    def auc(self) -> float | None:
        return auc_from_counts(np.asarray(self.neg), np.asarray(self.pos))


class Reply(BaseModel):
    """Base of every reply: the sending site's name, and the record mapping."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)
    kind: ClassVar[Kind]

    site: Annotated[str, Wire(SITE, key="name")]

    # -- the field -> record mapping -----------------------------------------------------
    @classmethod
    def _wires(cls) -> Iterator[tuple[str, Wire, type[BaseModel] | None]]:
        """(field, wire, nested model or None) for every field."""
        for name, info in cls.model_fields.items():
            wire = next(m for m in info.metadata if isinstance(m, Wire))
            yield name, wire, _nested(info.annotation) if wire.prefix is not None else None

    @staticmethod
    def _key(name: str, wire: Wire) -> str:
        return wire.key or name.replace("_", "-")

    @staticmethod
    def _sub_keys(wire: Wire, nested: type[BaseModel]) -> dict[str, str]:
        """Nested field -> its key in the record."""
        return {sub: f"{wire.prefix}-{sub}" if wire.prefix else sub
                for sub in nested.model_fields}

    @classmethod
    def allowed(cls) -> dict[str, set[str]]:
        """Every record and key this reply may carry (`*`: any key, for model weights)."""
        out: dict[str, set[str]] = {}
        for name, wire, nested in cls._wires():
            keys = out.setdefault(wire.record, set())
            if wire.record == ARRAYS:
                keys.add(ANY_KEY)
            elif nested is not None:
                keys.update(cls._sub_keys(wire, nested).values())
            else:
                keys.add(cls._key(name, wire))
        return out

    # -- to and from Flower records ------------------------------------------------------
    def to_content(self) -> RecordDict:
        records: dict[str, dict[str, Any]] = {}
        arrays: dict[str, ArrayRecord] = {}
        for name, wire, nested in self._wires():
            value = getattr(self, name)
            if value is None:
                continue
            if wire.record == ARRAYS:
                arrays[wire.key or ARRAYS] = value
                continue
            target = records.setdefault(wire.record, {})
            if nested is not None:
                for sub, key in self._sub_keys(wire, nested).items():
                    target[key] = _plain(getattr(value, sub))
            else:
                target[self._key(name, wire)] = _plain(value)
        content = RecordDict(dict(arrays))
        for record, values in records.items():
            content[record] = (ConfigRecord if record == SITE else MetricRecord)(values)
        return content

    @classmethod
    def from_content(cls, content: RecordDict) -> Reply:
        found = {**{k: dict(v) for k, v in content.config_records.items()},
                 **{k: dict(v) for k, v in content.metric_records.items()}}
        values: dict[str, Any] = {}
        for name, wire, nested in cls._wires():
            if wire.record == ARRAYS:
                values[name] = content.array_records.get(wire.key or ARRAYS)
                continue
            record = found.get(wire.record, {})
            if nested is not None:
                sub = {s: record[k] for s, k in cls._sub_keys(wire, nested).items()
                       if k in record}
                values[name] = nested.model_validate(sub) if sub else None
            else:
                values[name] = record.get(cls._key(name, wire))
        return cls.model_validate({k: v for k, v in values.items() if v is not None})

    def to_message(self, request: Message) -> Message:
        return Message(self.to_content(), reply_to=request)

    @classmethod
    def from_message(cls, message: Message) -> Reply:
        return cls.from_content(message.content)


def _nested(annotation: Any) -> type[BaseModel]:
    """The model class inside `Model` or `Model | None`."""
    candidates = [annotation, *get_args(annotation)] if get_origin(annotation) else [annotation]
    return next(c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel))


def _plain(value: Any) -> Any:
    """Tuples -> lists (Flower records take lists), enum members -> their values."""
    if isinstance(value, Enum):
        return value.value
    return list(value) if isinstance(value, tuple) else value


class DescribeReply(Reply):
    """Who the site is, and its fingerprint for the coordinator's handshake (the fedcmr
    version, model digest and what its caches were prepared with: common/handshake.py)."""

    kind = Kind.DESCRIBE

    centres: Annotated[tuple[str, ...], Wire(SITE)]
    frames: Annotated[int, Wire(METRICS)]
    subjects: Annotated[int, Wire(METRICS)]
    fingerprint: Annotated[SiteFingerprint, Wire(SITE, prefix="fingerprint")]


class NyulReply(Reply):
    """The site's histogram summary, or the reason it refused to release one."""

    kind = Kind.NYUL

    summary: Annotated[NyulSummary | None, Wire(METRICS, prefix="")] = None
    refused: Annotated[Refusal | None, Wire(SITE, prefix="refused")] = None


class MeasureStatsReply(Reply):
    """The sums behind the measures model's standardisation (subject count, per-measure sum
    and sum of squares over the training subjects), or the reason they were refused."""

    kind = Kind.MEASURE_STATS

    sums: Annotated[MeasureSums | None, Wire(METRICS, prefix="sums")] = None
    refused: Annotated[Refusal | None, Wire(SITE, prefix="refused")] = None


class TrainReply(Reply):
    """The locally trained weights, n_k, and the validation of the model the site received."""

    kind = Kind.TRAIN

    arrays: Annotated[ArrayRecord, Wire(ARRAYS)]
    #: FedAvg's weighting key: the site's number of training frames (n_k).
    num_examples: Annotated[int, Wire(METRICS)]
    train_loss: Annotated[float, Wire(METRICS)]
    train_batches: Annotated[int, Wire(METRICS)]
    batch_size: Annotated[int, Wire(METRICS)]
    #: The round this reply answers (a late reply to an earlier round is rejected).
    server_round: Annotated[int, Wire(METRICS)]
    #: Counts of nothing where the site's policy withholds them (`withheld` says why).
    val: Annotated[ScoreCounts, Wire(METRICS, prefix="val")]
    withheld: Annotated[Refusal | None, Wire(SITE, prefix="withheld")] = None
    #: Under differential privacy: the epsilon (at the run's delta) of the noise this site
    #: added itself, over every update it released in this run so far.
    dp_epsilon: Annotated[float | None, Wire(METRICS)] = None


class ValidateReply(Reply):
    kind = Kind.VALIDATE

    #: Counts of nothing where the site's policy withholds them (`withheld` says why).
    val: Annotated[ScoreCounts, Wire(METRICS, prefix="val")]
    withheld: Annotated[Refusal | None, Wire(SITE, prefix="withheld")] = None


class TestReply(Reply):
    __test__ = False  # not a pytest class
    kind = Kind.TEST

    #: None where the site's policy withholds them; `withheld` says why.
    test: Annotated[ScoreCounts | None, Wire(METRICS, prefix="test")] = None
    withheld: Annotated[Refusal | None, Wire(SITE, prefix="withheld")] = None


class FinishedReply(Reply):
    """The site took note that the run is over (its `fedcmr client` stops): its name only."""

    kind = Kind.FINISHED


REPLIES: dict[Kind, type[Reply]] = {cls.kind: cls for cls in (
    DescribeReply, NyulReply, MeasureStatsReply, TrainReply, ValidateReply, TestReply,
    FinishedReply)}
#: The contract's exchanges that start a federated fold (a model's `start`): each one's
#: reply type, and what its aggregate is called in the site's release ledger.
START_REPLIES: dict[Kind, tuple[type[Reply], str]] = {
    Kind.NYUL: (NyulReply, "histogram summary"),
    Kind.MEASURE_STATS: (MeasureStatsReply, "measure sums")}
#: For every message kind, the records and keys its reply may hold: derived from the models.
REPLY_ALLOWED: dict[str, dict[str, set[str]]] = {
    kind: cls.allowed() for kind, cls in REPLIES.items()}
#: FedAvg's weighting key in a TrainReply's metrics.
NUM_EXAMPLES = Reply._key("num_examples", Wire(METRICS))
#: A private TrainReply's site epsilon in its metrics.
DP_EPSILON = Reply._key("dp_epsilon", Wire(METRICS))

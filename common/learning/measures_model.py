"""The measures model: logistic regression on standardised clinical measures
(common/measures.py FEATURES), beside the CNN, with the same splits and outputs.

Its state is four arrays, so that it travels and aggregates like the CNN's state dict:
`mean` and `std` (the standardisation), `coef` and `intercept`. The objective is one for
both frameworks: the mean logistic loss over the training subjects plus (l2 / 2) * |coef|^2.

- Centrally (CDS) the pooled training subjects' standardisation and scikit-learn's exact
  minimiser of that objective (`fit_central`).
- Federated: the standardisation from the sites' released sums (n, sum, sum of squares per
  measure: `MeasureSums`, `combine_sums`), then rounds in which every site takes
  `local_steps` full-batch gradient steps from the global coefficients on its own subjects
  (`local_steps`) and the server averages the coefficients (FedAvg). Only sums and
  coefficients leave a site.

One row per subject: both frames of a subject get its score, so predictions.csv and the
frame-level AUC keep the CNN's schema (each subject counted once per phase it has).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from fedcmr.common.measures import FEATURES, MeasureSums, SubjectMeasures

if TYPE_CHECKING:
    from fedcmr.common.learning.data import CachedFrame

StateDict = dict[str, torch.Tensor]
#: The model's arrays, in the order they travel.
STATE_KEYS = ("mean", "std", "coef", "intercept")


class MeasuresParams(BaseModel):
    """The measures model's settings (one source for every default)."""

    model_config = ConfigDict(frozen=True)

    #: L2 penalty on the coefficients (the intercept is not penalised).
    l2: float = Field(0.05, gt=0)
    #: Gradient step of the federated local steps (standardised features: 0.5 is stable).
    lr: float = Field(0.5, gt=0)


PARAMS = MeasuresParams()


def subject_table(frames: Sequence[CachedFrame], measures: Mapping[str, SubjectMeasures]
                  ) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(subjects, X (n, F), y (n,)): one row per subject of `frames`, in first-seen order.
    A subject without measures is a KeyError naming it and the fix."""
    subjects = list(dict.fromkeys(f.subject for f in frames))
    missing = [s for s in subjects if s not in measures]
    if missing:
        raise KeyError(f"no clinical measures for subject(s) {missing[:5]} (of "
                       f"{len(missing)}). Fix: re-run `fedcmr prepare` on their cache; it "
                       "writes measures.csv")
    x = np.array([measures[s].features() for s in subjects], dtype=np.float64)
    y = np.array([measures[s].label for s in subjects], dtype=np.float64)
    return subjects, x.reshape(len(subjects), len(FEATURES)), y


def sums(x: np.ndarray) -> MeasureSums:
    return MeasureSums(n=len(x), total=x.sum(axis=0).tolist(),
                       squares=(x ** 2).sum(axis=0).tolist())


def combine_sums(parts: Sequence[MeasureSums]) -> tuple[np.ndarray, np.ndarray]:
    """Pooled mean and (population) standard deviation, floored so a constant measure
    standardises to 0 rather than dividing by zero."""
    n = sum(p.n for p in parts)
    if n == 0:
        raise ValueError("no subjects behind the measures' sums")
    total = np.sum([p.total for p in parts], axis=0)
    squares = np.sum([p.squares for p in parts], axis=0)
    mean = total / n
    var = np.maximum(squares / n - mean ** 2, 0.0)
    return mean, np.maximum(np.sqrt(var), 1e-8)


def initial_state(mean: np.ndarray, std: np.ndarray) -> StateDict:
    """The untrained model: this standardisation, zero coefficients (P = 0.5 for all)."""
    return to_state(mean, std, np.zeros(len(FEATURES)), np.zeros(1))


def to_state(mean, std, coef, intercept) -> StateDict:
    return {k: torch.as_tensor(np.asarray(v, dtype=np.float64).reshape(-1))
            for k, v in zip(STATE_KEYS, (mean, std, coef, intercept), strict=True)}


def from_state(state: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    missing = [k for k in STATE_KEYS if k not in state]
    if missing:
        raise ValueError(f"not a measures-model state: no {missing}")
    return {k: np.asarray(state[k].detach().cpu().numpy(), dtype=np.float64)
            for k in STATE_KEYS}


def _logits(arrays: Mapping[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    z = (x - arrays["mean"]) / arrays["std"]
    return z @ arrays["coef"] + arrays["intercept"][0]


def predict(state: Mapping[str, torch.Tensor], x: np.ndarray) -> np.ndarray:
    """P(HCM) per row."""
    with np.errstate(over="ignore"):  # a logit below -709: exp overflows, P is 0
        return 1.0 / (1.0 + np.exp(-_logits(from_state(state), x)))


def loss(state: Mapping[str, torch.Tensor], x: np.ndarray, y: np.ndarray) -> float:
    """Mean binary cross-entropy (the CNN's validation loss, comparable)."""
    logits = _logits(from_state(state), x)
    return float(np.mean(np.logaddexp(0.0, logits) - y * logits)) if len(y) else 0.0


def local_steps(state: Mapping[str, torch.Tensor], x: np.ndarray, y: np.ndarray, steps: int,
                params: MeasuresParams = PARAMS) -> tuple[StateDict, float]:
    """`steps` full-batch gradient steps on the objective from `state`; the new state (same
    standardisation) and the mean training loss before the steps."""
    arrays = from_state(state)
    z = (x - arrays["mean"]) / arrays["std"]
    coef, intercept = arrays["coef"].copy(), float(arrays["intercept"][0])
    start = loss(state, x, y)
    for _ in range(steps):
        with np.errstate(over="ignore"):
            p = 1.0 / (1.0 + np.exp(-(z @ coef + intercept)))
        residual = p - y
        coef -= params.lr * (z.T @ residual / len(y) + params.l2 * coef)
        intercept -= params.lr * float(residual.mean())
    return to_state(arrays["mean"], arrays["std"], coef, [intercept]), start


def fit_central(x: np.ndarray, y: np.ndarray, params: MeasuresParams = PARAMS) -> StateDict:
    """The pooled baseline: standardise on these subjects and minimise the objective
    exactly (scikit-learn's C is 1 / (l2 n) for the same optimum)."""
    from sklearn.linear_model import LogisticRegression

    mean, std = combine_sums([sums(x)])
    z = (x - mean) / std
    fitted = LogisticRegression(C=1.0 / (params.l2 * len(y)), tol=1e-10, max_iter=10_000)
    fitted.fit(z, y.astype(int))
    return to_state(mean, std, fitted.coef_[0], fitted.intercept_)


def frame_scores(frames: Sequence[CachedFrame], measures: Mapping[str, SubjectMeasures],
                 state: Mapping[str, torch.Tensor]) -> tuple[np.ndarray, np.ndarray, float]:
    """(labels, scores, loss) per frame: each frame gets its subject's P(HCM)."""
    subjects, x, y = subject_table(frames, measures)
    p = dict(zip(subjects, predict(state, x), strict=True)) if subjects else {}
    labels = np.array([f.entry.label for f in frames], dtype=np.float64)
    scores = np.array([p[f.subject] for f in frames], dtype=np.float64)
    clipped = np.clip(scores, 1e-12, 1 - 1e-12)
    bce = -np.mean(labels * np.log(clipped) + (1 - labels) * np.log(1 - clipped)) \
        if len(frames) else 0.0
    return labels, scores, float(bce)

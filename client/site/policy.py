"""The hospital's release policy: what its site answers, set by the hospital, never by the
coordinator (`fedcmr client --policy FILE`, a TOML or JSON file of these fields; without
one, the file $FEDCMR_SITE_POLICY names in the hospital's environment, else the defaults
below).

The coordinator's run config can only tighten it: the smallest subject count a site
releases a histogram summary of is the larger of the policy's and the run's
`min-subjects`; a run
that asks for a protocol, a fold count, a validation fraction or a split seed the policy
does not allow is refused, with the rule named. The differencing guard
(client/site/ledger.py) adds a memory of every subject set the site released before.
"""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from fedcmr.common.protocol import Refusal, RefusalRule
from fedcmr.common.run_config import Protocol, RunConfig

#: The variable naming the policy file where none is given (`fedcmr client --policy`, a
#: node config's `policy`): the hospital's own environment, never the coordinator's.
POLICY_ENV = "FEDCMR_SITE_POLICY"
#: The variable naming the folder under which each site keeps its state (the release
#: ledger), one subfolder per site; default ~/.local/state/fedcmr (XDG_STATE_HOME).
STATE_ENV = "FEDCMR_SITE_STATE"
LEDGER_FILE = "released-sets.json"


def state_default(site: str) -> Path:
    """A site's state folder where `fedcmr client --state` names none: per site, under
    $FEDCMR_SITE_STATE, else $XDG_STATE_HOME/fedcmr (~/.local/state/fedcmr)."""
    from fedcmr.common.centres import slug

    base = os.environ.get(STATE_ENV) or str(Path(os.environ.get(
        "XDG_STATE_HOME") or Path.home() / ".local" / "state") / "fedcmr")
    return Path(base) / (slug(site) or "site")


def policy_default() -> Path | None:
    value = os.environ.get(POLICY_ENV, "")
    return Path(value) if value else None


class PolicyRefusal(RuntimeError):
    """A request the site's policy does not allow; its text names the rule and holds no
    path or subject, so it may leave the site in full. It leaves as a typed `Refusal`
    (common/protocol.py): the rule as a code the coordinator reads, and this text."""

    def __init__(self, rule: RefusalRule | str, text: str):
        self.refusal = Refusal(rule=RefusalRule(rule), text=text)
        self.rule = self.refusal.rule
        super().__init__(str(self.refusal))


class SitePolicy(BaseModel):
    """A site's rules for what leaves it. The defaults are safe for the paper's protocols
    on the paper's centres (docs/security.md says why each is what it is)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: Training aggregates (histogram summary, model weights and n_k) come from at least
    #: this many subjects; the run's min-subjects (a histogram minimum) may raise it for
    #: histograms, never lower it.
    min_subjects: int = Field(5, ge=1)
    #: Validation and test score counts come from at least this many subjects; below it a
    #: site withholds them (its weights still go).
    min_eval_subjects: int = Field(4, ge=1)
    #: Differencing and intersection guard (client/site/ledger.py): two training sets
    #: (sums leave) are equal or differ by at least this many subjects; every region of the
    #: Venn diagram of the score sets (every intersection and difference of any number of
    #: them) holds no subject or at least this many. 1: no guard.
    min_difference: int = Field(4, ge=1)
    #: At most this many different subject sets per kind of aggregate, across all runs.
    max_released_sets: int = Field(16, ge=1)
    #: At most this many distinct models (by the digest of the arrays received) under
    #: which one subject set's validation or test counts are released, across all runs.
    #: The paper's grid scores one LCO validation set under at most 3 strategies x 5 seeds
    #: x 100 rounds x 3 folds = 4,500 models.
    max_models_per_set: int = Field(5000, ge=1)
    #: Validation and test counts are released in logit bins of this width (a multiple
    #: of common.metrics.LOGIT_WIDTH, 0.002): one release places a frame's score no finer.
    score_bin_width: float = Field(0.1, gt=0)
    #: The measures model sees each subject's measures with a fixed secret perturbation of
    #: this many of the site's standard deviations per measure (client/site/release.py),
    #: in everything it releases: no query, crafted or repeated, can recover a subject's
    #: measures finer than this. 0: the exact measures (no protection).
    measures_resolution: float = Field(0.25, ge=0)
    #: Differential privacy required: a run without it (dp-clip 0), with a larger clip
    #: than `dp_max_clip` or a smaller noise multiplier than `dp_min_noise`, or of a model
    #: that cannot be trained privately, is refused. The site adds the noise itself.
    require_dp: bool = False
    dp_max_clip: float = Field(1.0, gt=0)
    dp_min_noise: float = Field(1.0, ge=0)
    protocols: tuple[Protocol, ...] = ("ccv", "lco")
    #: What the site trains, by model name (common/models/): e.g. ["cnn"] for the CNN alone
    #: (its weights leave), ["measures"] (per-measure sums and coefficients leave). None:
    #: any model installed at this site (the built-in CNN and measures model, and the
    #: plug-ins the hospital installed).
    models: tuple[str, ...] | None = None
    #: Allowed CCV fold counts (more folds: smaller test splits).
    ccv_folds: tuple[int, ...] = (5,)
    #: Allowed validation fractions.
    val_fractions: tuple[float, ...] = (0.1,)
    #: The split seed this site splits with; a run asking for another is refused. "any"
    #: (None): any seed the coordinator asks for (every new seed gives new subject sets).
    split_seed: int | None = 0
    #: App bundles (sha256 of the FAB) this site runs besides the one its own installed
    #: fedcmr builds (client/site/app_approval.py).
    approved_bundles: tuple[str, ...] = ()
    #: Where the differencing guard remembers what was released; default: in the site's
    #: state folder (`fedcmr client --state`), which does not change with --out.
    ledger: Path | None = None

    @field_validator("score_bin_width")
    @classmethod
    def _whole_bins(cls, value: float) -> float:
        from fedcmr.common.metrics import LOGIT_WIDTH

        if abs(value / LOGIT_WIDTH - round(value / LOGIT_WIDTH)) > 1e-6:
            raise ValueError(f"{value} is not a multiple of the score grid's {LOGIT_WIDTH}")
        return value

    @field_validator("split_seed", mode="before")
    @classmethod
    def _any_seed(cls, value: object) -> object:
        return None if value == "any" else value

    @classmethod
    def load(cls, path: Path | None) -> SitePolicy:
        """The policy in `path` (TOML or JSON; None: $FEDCMR_SITE_POLICY's, else the
        defaults); a clear error naming the file and the fix otherwise."""
        path = path or policy_default()
        if path is None:
            return cls()
        fix = "Fix: see docs/security.md for the policy file's fields"
        try:
            text = Path(path).read_text()
            data = json.loads(text) if Path(path).suffix == ".json" else tomllib.loads(text)
        except (OSError, ValueError) as err:
            raise ValueError(f"{path}: cannot read the site policy ({err}). {fix}") from None
        try:
            return cls.model_validate(data)
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise ValueError(f"{path}: site policy field {where!r}: {first['msg']}. "
                             f"{fix}") from None

    def ledger_path(self, folder: Path) -> Path:
        """The ledger: the policy's `ledger`, else in `folder` (the site's state folder)."""
        return self.ledger or Path(folder) / LEDGER_FILE

    def histogram_floor(self, run: RunConfig) -> int:
        """Subjects behind a histogram summary: the run's min-subjects may raise it."""
        return max(self.min_subjects, run.min_subjects)

    def admit(self, run: RunConfig) -> None:
        """Raise PolicyRefusal when the run asks for settings this site does not allow."""
        if self.models is not None and run.model not in self.models:
            raise PolicyRefusal(RefusalRule.MODELS, f"model {run.model!r} is not one of "
                                f"{list(self.models)}")
        if run.protocol not in self.protocols:
            raise PolicyRefusal(RefusalRule.PROTOCOLS, f"protocol {run.protocol!r} is not one of "
                                f"{list(self.protocols)}")
        self.check_splits(run)
        self.check_privacy(run)

    def check_privacy(self, run: RunConfig) -> None:
        """Refuse a run whose differential privacy is weaker than the site requires."""
        if not self.require_dp:
            return
        from fedcmr.common.models import registry

        rule = RefusalRule.DIFFERENTIAL_PRIVACY
        if not registry.get(run.model).supports_dp:
            raise PolicyRefusal(rule, f"this site requires differential privacy, which the "
                                f"{run.model} model's updates cannot have")
        if run.dp_clip <= 0:
            raise PolicyRefusal(rule, "this site requires differential privacy; the run has "
                                f"none (ask for dp-clip <= {self.dp_max_clip:g} and dp-noise "
                                f">= {self.dp_min_noise:g})")
        if run.dp_clip > self.dp_max_clip or run.dp_noise < self.dp_min_noise:
            raise PolicyRefusal(rule, f"the run's dp-clip {run.dp_clip:g} / dp-noise "
                                f"{run.dp_noise:g} is weaker than this site's clip <= "
                                f"{self.dp_max_clip:g}, noise >= {self.dp_min_noise:g}")

    def check_splits(self, run: RunConfig) -> None:
        """The split parameters, under every protocol: LCO's validation split is cut from
        the CCV blocks too (common/learning/split.py), so a fold count the policy does not
        allow would let a coordinator pick new validation subsets under LCO."""
        if run.n_folds_ccv not in self.ccv_folds:
            raise PolicyRefusal(RefusalRule.CCV_FOLDS, f"{run.n_folds_ccv} CCV folds asked; "
                                f"this site allows {list(self.ccv_folds)}")
        if not any(abs(run.val_fraction - v) < 1e-9 for v in self.val_fractions):
            raise PolicyRefusal(RefusalRule.VAL_FRACTIONS, f"validation fraction "
                                f"{run.val_fraction} asked; this site allows "
                                f"{list(self.val_fractions)}")
        if self.split_seed is not None and run.split_seed != self.split_seed:
            raise PolicyRefusal(RefusalRule.SPLIT_SEED, f"this site splits with its own seed "
                                f"{self.split_seed}; the run asked for {run.split_seed}")

    def lines(self) -> list[str]:
        """The policy as `fedcmr client` shows it at start-up."""
        seed = "any" if self.split_seed is None else f"pinned to {self.split_seed}"
        return [
            f"at least {self.min_subjects} subjects behind a histogram or model update, "
            f"{self.min_eval_subjects} behind validation or test counts",
            f"training sets equal or {self.min_difference} subjects apart, every "
            f"intersection and difference of scored sets empty or at least "
            f"{self.min_difference} subjects, at most {self.max_released_sets} sets per kind, "
            f"each scored under at most {self.max_models_per_set} models",
            f"scores in logit bins of {self.score_bin_width:g}; measures perturbed by "
            f"{self.measures_resolution:g} SD; differential privacy "
            + (f"required (clip <= {self.dp_max_clip:g}, noise >= {self.dp_min_noise:g})"
               if self.require_dp else "as the run asks"),
            f"models {'any installed' if self.models is None else ', '.join(self.models)}; "
            f"protocols {', '.join(self.protocols)}; CCV folds "
            f"{', '.join(map(str, self.ccv_folds))}; validation fractions "
            f"{', '.join(map(str, self.val_fractions))}; split seed {seed}",
            "app bundles: this installation's own"
            + (f" and {len(self.approved_bundles)} approved" if self.approved_bundles else ""),
        ]

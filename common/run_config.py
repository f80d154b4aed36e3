"""The configuration of one study run: shared by the centralised baseline, the ServerApp and
every ClientApp, so that each site derives the same splits and settings from it alone."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_serializer,
    field_validator,
    model_validator,
)

from fedcmr.common.flat import FlatModel, is_flat
from fedcmr.common.frames import Phase
from fedcmr.common.models import registry
from fedcmr.common.seeds import derive_seed

Prior = Literal["baseline", "masked", "structures"]
Augment = Literal["none", "basic", "shape", "shape-intensity"]
Protocol = Literal["ccv", "lco"]
ProfileName = Literal["smoke", "quick", "paper"]
#: What is trained: a model's name (common/models/registry.py): the r3d_18 CNN on the
#: images ("cnn"), logistic regression on the clinical measures ("measures"), or a plug-in.
ModelName = str
#: How a site's trained weights travel back (common/update_codec.py): as they are, or each
#: float tensor as the float16 difference from the global model the site received.
UpdateEncoding = Literal["fp32", "fp16-delta"]


class Profile(BaseModel):
    """How much compute a run spends. `paper` is the study's setting; the others shrink it."""

    model_config = ConfigDict(frozen=True)

    #: Network input (z, y, x); the cached crop is resized to it when they differ.
    input_size: tuple[int, int, int]
    max_epochs: int
    patience: int
    batch_size: int
    lr_head: float = 0.01
    lr_body: float = 1e-5
    #: Body learning rate when no pretrained weights could be had: 1e-5 barely moves a
    #: random network, so a from-scratch body needs a higher rate.
    lr_body_random_init: float = 1e-4
    #: Federated: local iterations (batches) per round.
    local_iterations: int = 7


PROFILES: dict[str, Profile] = {
    "paper": Profile(input_size=(10, 150, 150), max_epochs=100, patience=10, batch_size=8),
    # quick and smoke keep the best of all their epochs: with a validation split of a few
    # subjects the AUC is too noisy for a patience shorter than the whole run.
    "quick": Profile(input_size=(6, 64, 64), max_epochs=12, patience=12, batch_size=8),
    "smoke": Profile(input_size=(4, 24, 24), max_epochs=2, patience=2, batch_size=4),
}


class RunConfig(FlatModel):
    """One study run. Flat keys (run config and CLI): fold, seed, split-seed, ..."""

    FLAT: ClassVar[tuple[str, ...]] = (
        "model", "protocol", "folds", "seed", "split_seed", "prior", "augment", "phases", "profile",
        "epochs", "pretrained", "min_subjects", "dp_clip", "dp_noise", "update_encoding")

    model: ModelName = Field(registry.DEFAULT_MODEL, description=(
        "what is trained: the CNN on the images (cnn), logistic regression on the clinical "
        "measures (measures), or a registered model plug-in"))
    protocol: Protocol = Field("ccv", description="collaborative (ccv) or leave-centre-out "
                                                  "(lco) cross-validation")
    #: Fold indices to run; None means all (5 for CCV, one per centre for LCO).
    folds: tuple[int, ...] | None = Field(None, alias="fold",
                                          description="fold index (or 0,2), or 'all'")
    #: CCV folds; also the blocks an LCO training centre's validation split is cut from.
    n_folds_ccv: int = Field(5, ge=2)
    #: Network initialisation seed (the paper repeats each configuration over 5 of these).
    seed: int = Field(0, description="network initialisation seed")
    #: Split seed: fixed across network seeds so that seeds vary only the initialisation.
    split_seed: int = Field(0, description="split seed (kept fixed across network seeds)")
    val_fraction: float = Field(0.1, gt=0, lt=0.5)
    prior: Prior = Field("structures", description="network input channels")
    augment: Augment = Field("none", description="augmentation set-up")
    phases: tuple[Phase, ...] = Field(("ED", "ES"), description="ed,es or ed")
    profile: ProfileName = Field("quick", description="compute profile (paper: the study's)")
    #: At most this many epochs (federated: rounds) instead of the profile's; None: profile.
    epochs: int | None = Field(None, ge=1, description="at most N epochs (federated: "
                                                       "rounds); 0: the profile's")
    #: Pretrained weights: "auto" (torchvision cache if present), "none", or a file path.
    pretrained: str = Field("auto", description="'auto' (torchvision cache), 'none', or a "
                                                "state-dict file")
    #: A site refuses to release a histogram summary of fewer subjects than this.
    min_subjects: int = Field(5, description="smallest subject count a site releases a "
                                             "histogram summary for")
    #: Differential privacy for the weights (common/learning/privacy.py); 0: off.
    dp_clip: float = Field(0.0, ge=0, description="differential privacy (federated runs): "
                                                  "each site clips its model update to this "
                                                  "L2 norm and adds the noise itself; 0: off")
    dp_noise: float = Field(1.0, ge=0, description="differential privacy: noise multiplier "
                                                   "Z (each site's noise std Z * dp-clip)")
    #: δ of the reported (ε, δ) guarantee.
    dp_delta: float = Field(1e-5, gt=0, lt=1)
    #: Federated runs: how each site's update travels back (common/update_codec.py).
    update_encoding: UpdateEncoding = Field(
        "fp32", description="federated runs: a site's trained weights as they are (fp32), "
                            "or as float16 differences from the model it received "
                            "(fp16-delta: half the bytes)")
    #: Every centre of the study, sorted; fixes the LCO fold order for all participants.
    centres: tuple[str, ...] = ()

    @field_validator("model")
    @classmethod
    def _known_model(cls, value: str) -> str:
        return registry.check_name(value)

    @model_validator(mode="after")
    def _combinations(self) -> RunConfig:
        """Settings the model must support (its plug-in says: ModelPlugin.check_run); the
        plug-in is loaded only for such settings, so that a light process that validates a
        plain run never imports a model's code."""
        if self.dp_clip > 0 or self.update_encoding != "fp32":
            registry.get(self.model).check_run(self)
        return self

    @field_validator("folds", mode="before")
    @classmethod
    def _fold_text(cls, value: Any) -> Any:
        """'all' -> None, '0,2' -> (0, 2), 3 -> (3,)."""
        if isinstance(value, str):
            text = value.strip().lower()
            return None if text == "all" else tuple(int(f) for f in text.split(",") if f)
        return (value,) if isinstance(value, int) else value

    @field_validator("phases", mode="before")
    @classmethod
    def _phase_text(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(p.strip().upper() for p in value.split(",") if p.strip())
        return value

    @field_validator("epochs", mode="before")
    @classmethod
    def _no_epochs(cls, value: Any) -> Any:
        return None if value == 0 else value

    @field_validator("phases")
    @classmethod
    def _phases(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value or len(set(value)) != len(value):
            raise ValueError("phases must be a non-empty subset of ED, ES")
        return tuple(sorted(value))  # ED before ES

    @field_serializer("folds", "phases", "epochs", mode="wrap")
    def _flat_text(self, value: Any, handler, info) -> Any:
        """The flat forms: folds 'all' or '0,2', phases 'ed,es', epochs 0 for None."""
        if not is_flat(info):
            return handler(value)
        if info.field_name == "folds":
            return "all" if value is None else ",".join(str(f) for f in value)
        if info.field_name == "phases":
            return ",".join(value).lower()
        return 0 if value is None else value

    @property
    def private(self) -> bool:
        """Whether the weights are released under differential privacy."""
        return self.dp_clip > 0

    @property
    def hyper(self) -> Profile:
        profile = PROFILES[self.profile]
        if self.epochs is None:
            return profile
        return profile.model_copy(update={"max_epochs": self.epochs,
                                          "patience": min(profile.patience, self.epochs)})

    def fold_count(self) -> int:
        return self.n_folds_ccv if self.protocol == "ccv" else len(self.centres)

    def fold_list(self) -> list[int]:
        folds = list(self.folds) if self.folds is not None else list(range(self.fold_count()))
        bad = [f for f in folds if not 0 <= f < self.fold_count()]
        if bad:
            raise ValueError(f"fold(s) {bad} out of range 0..{self.fold_count() - 1}")
        return folds

    def fold_seed(self, fold: int) -> int:
        """A fold's network seed: a function of (run seed, fold) only, never of what ran
        before it in the same process."""
        return derive_seed(self.seed, fold)

    def test_centre(self, fold: int) -> str | None:
        return self.centres[fold] if self.protocol == "lco" else None

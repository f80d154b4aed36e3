"""The configuration of one study run: shared by the centralised baseline, the ServerApp and
every ClientApp, so that each site derives the same splits and settings from it alone."""

from __future__ import annotations

import zlib
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from fedcmr.common.frames import Phase

Prior = Literal["baseline", "masked", "structures"]
Augment = Literal["none", "basic", "shape", "shape-intensity"]
Protocol = Literal["ccv", "lco"]
ProfileName = Literal["smoke", "quick", "paper"]


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


class RunConfig(BaseModel):
    model_config = ConfigDict(frozen=True)

    protocol: Protocol = "ccv"
    #: Fold indices to run; None means all (5 for CCV, one per centre for LCO).
    folds: tuple[int, ...] | None = None
    n_folds_ccv: int = 5
    #: Network initialisation seed (the paper repeats each configuration over 5 of these).
    seed: int = 0
    #: Split seed: fixed across network seeds so that seeds vary only the initialisation.
    split_seed: int = 0
    val_fraction: float = Field(0.1, gt=0, lt=0.5)
    prior: Prior = "structures"
    augment: Augment = "none"
    phases: tuple[Phase, ...] = ("ED", "ES")
    profile: ProfileName = "quick"
    #: At most this many epochs (federated: rounds) instead of the profile's; None: profile.
    epochs: int | None = Field(None, ge=1)
    #: Pretrained weights: "auto" (torchvision cache if present), "none", or a file path.
    pretrained: str = "auto"
    #: A site refuses to release a histogram summary of fewer subjects than this.
    min_subjects: int = 5
    #: Every centre of the study, sorted; fixes the LCO fold order for all participants.
    centres: tuple[str, ...] = ()

    @field_validator("phases")
    @classmethod
    def _phases(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value or len(set(value)) != len(value):
            raise ValueError("phases must be a non-empty subset of ED, ES")
        return tuple(sorted(value))  # ED before ES

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
        return zlib.crc32(f"{self.seed}:{fold}".encode())

    def test_centre(self, fold: int) -> str | None:
        return self.centres[fold] if self.protocol == "lco" else None

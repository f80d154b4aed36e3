"""The coordinator's checkpoint: written atomically after every completed round, so that a
SuperLink, ServerApp or launcher killed at any moment loses at most the round in flight.

OUT/checkpoint/settings.json   the settings the run was started with (and their digest)
OUT/checkpoint/fold_K.pt       the fold's state after its last completed round: global
                               weights, round, best weights and round, early-stopping and
                               strategy state, RNG state, the Nyul reference and each
                               site's released summary, the rows of rounds.csv and of the
                               audit trail; when the fold is done, its outcome (test
                               counts) without the weights

`--resume` continues the unfinished fold from its last completed round and keeps finished
folds. Sites are stateless between messages (each message carries the global model, and the
site's seed derives from run seed, fold, round and site), so a resumed run sends exactly
the messages an uninterrupted one would have sent: its models and predictions are the same
bit for bit. A resume with other settings is refused, naming what changed.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord

from fedcmr.common.atomic import atomic_path, write_json
from fedcmr.common.digests import short_digest
from fedcmr.common.replies import ScoreCounts
from fedcmr.server.settings import FederationSettings

#: Settings that may differ on resume: where, how long and how many sites to insist on,
#: not what is computed.
NOT_COMPARED = {"out_dir", "resume", "round_timeout", "wait_sites_timeout", "rejoin_timeout",
                "min_sites", "sites", "sim_sites"}


class ResumeError(ValueError):
    """The run folder and the request do not fit together (the message says the fix)."""


@dataclass
class FoldState:
    """Everything the study runner needs to continue a fold after `round`."""

    fold: int
    round: int = 0
    arrays: dict[str, torch.Tensor] | None = None
    best_arrays: dict[str, torch.Tensor] | None = None
    best_round: int = 0
    stopper: dict[str, Any] = field(default_factory=dict)
    strategy_weights: dict[int, dict[int, float]] = field(default_factory=dict)
    landmarks: tuple[float, ...] | None = None
    init_source: str = "random"
    histogram: list[float] | None = None
    bin_edges: list[float] | None = None
    #: Each training site's released NyulSummary (model_dump), by site name.
    site_summaries: dict[str, dict] = field(default_factory=dict)
    refused: list[str] = field(default_factory=list)
    rounds: list[dict] = field(default_factory=list)
    rejected: list[dict] = field(default_factory=list)
    audit: list[dict] = field(default_factory=list)
    rng: dict[str, Any] = field(default_factory=dict)
    #: The rounds whose global model no site released validation frames for.
    unvalidated: list[int] = field(default_factory=list)
    done: bool = False
    test: dict[str, dict] = field(default_factory=dict)

    def test_counts(self) -> dict[str, ScoreCounts]:
        return {site: ScoreCounts.model_validate(c) for site, c in self.test.items()}


def settings_view(settings: FederationSettings) -> dict:
    return settings.model_dump(mode="json", exclude=NOT_COMPARED)


def digest(settings: FederationSettings) -> str:
    text = json.dumps(settings_view(settings), sort_keys=True)
    return short_digest(text)


def state_dict(arrays: ArrayRecord | None) -> dict[str, torch.Tensor] | None:
    return None if arrays is None else arrays.to_torch_state_dict()


def rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": _np_state(),
            "python": random.getstate()}


def restore_rng(state: dict[str, Any]) -> None:
    if not state:
        return
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    random.setstate(state["python"])


def _np_state() -> tuple:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return kind, keys.tolist(), pos, has_gauss, gauss


#: The checkpoint's folder in a run's --out, and the file that marks one begun.
CHECKPOINT_DIR, SETTINGS_FILE = "checkpoint", "settings.json"


class Checkpoint:
    """The checkpoint folder of one run."""

    def __init__(self, out_dir: Path, settings: FederationSettings):
        self.dir = Path(out_dir) / CHECKPOINT_DIR
        self.settings = settings

    @property
    def settings_file(self) -> Path:
        return self.dir / SETTINGS_FILE

    def fold_file(self, fold: int) -> Path:
        return self.dir / f"fold_{fold}.pt"

    def exists(self) -> bool:
        return self.settings_file.exists()

    def open(self) -> None:
        """Start (fresh) or continue (resume) the run's checkpoint; refuses a fresh start
        over an earlier run's checkpoint and a resume with other settings."""
        check_resume(self.dir.parent, self.settings)
        if not self.settings.resume:
            for old in self.dir.glob("fold_*.pt"):
                old.unlink()
            write_json(self.settings_file, {"digest": digest(self.settings),
                                            "settings": settings_view(self.settings)})

    @property
    def sites_file(self) -> Path:
        return self.dir / "sites.json"

    def remember_sites(self, names: list[str]) -> list[str]:
        """The sites this run has had (every attempt's); a resume that lacks one must
        report it lost rather than forget it."""
        known = set(json.loads(self.sites_file.read_text())) if self.sites_file.exists() else set()
        known |= set(names)
        write_json(self.sites_file, sorted(known))
        return sorted(known)

    def load(self, fold: int) -> FoldState | None:
        if not self.settings.resume or not self.fold_file(fold).exists():
            return None
        values = torch.load(self.fold_file(fold), weights_only=False)
        return FoldState(**values)

    def save(self, state: FoldState) -> None:
        state.rng = rng_state()
        with atomic_path(self.fold_file(state.fold)) as tmp:
            torch.save(asdict(state), tmp)


def check_resume(out_dir: Path, settings: FederationSettings) -> None:
    """Before anything starts: a fresh run must not overwrite an earlier run's checkpoint,
    and a resume needs one made with the same settings."""
    folder = Path(out_dir) / CHECKPOINT_DIR
    saved_file = folder / SETTINGS_FILE
    if not settings.resume:
        if saved_file.exists():
            raise ResumeError(f"{out_dir} holds the checkpoint of an earlier run. Fix: add "
                              "--resume to continue it, or choose another --out")
        return
    if not saved_file.exists():
        raise ResumeError(f"--resume: {out_dir} holds no checkpoint ({saved_file} is "
                          "missing). Fix: drop --resume to start the run, or point --out at "
                          "the run to continue")
    saved = json.loads(saved_file.read_text())
    if saved["digest"] != digest(settings):
        now = settings_view(settings)
        changed = sorted(_differences(saved["settings"], now))
        raise ResumeError(f"--resume: the settings differ from those {out_dir} was started "
                          f"with ({'; '.join(changed)}). Fix: rerun with the original "
                          "settings, or start a new run in another --out")


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: was {a!r}, now {b!r}")
    return out

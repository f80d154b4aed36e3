"""Train/validation/test splits as a pure function of one centre's own subjects, and a
site's (or the pooled baseline's) frames divided by them.

Each site computes its own split from (its subject ids and labels, its centre name, the
protocol, the fold, the split seed), and the centralised baseline calls the same function
centre by centre, so both see identical folds. A subject's ED and ES frames share a split
because splitting is done on subjects, never frames.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np

from fedcmr.common.run_config import RunConfig
from fedcmr.common.seeds import derive_seed

if TYPE_CHECKING:
    from fedcmr.common.learning.data import CachedFrame

Split = Literal["train", "val", "test"]


def _rng(seed: int, centre: str, label: int, purpose: str) -> np.random.Generator:
    words = [seed, derive_seed(centre), label, derive_seed(purpose)]
    return np.random.default_rng(words)


def _train_val(ids: list[str], fraction: float, rng: np.random.Generator) -> dict[str, Split]:
    order = list(rng.permutation(sorted(ids)))
    n_val = int(round(fraction * len(order))) if len(order) >= 3 else 0
    n_val = max(n_val, 1) if len(order) >= 3 else n_val
    return {s: ("val" if i < n_val else "train") for i, s in enumerate(order)}


def centre_split(labels: Mapping[str, int], centre: str, config: RunConfig,
                 fold: int) -> dict[str, Split]:
    """subject -> split for one centre (stratified by label within the centre)."""
    out: dict[str, Split] = {}
    for label in sorted(set(labels.values())):
        ids = sorted(s for s, y in labels.items() if y == label)
        if config.protocol == "lco":
            if centre == config.test_centre(fold):
                out.update(dict.fromkeys(ids, "test"))
                continue
            rest = ids
        else:
            order = _rng(config.split_seed, centre, label, "ccv").permutation(ids)
            in_test = {s for i, s in enumerate(order) if i % config.n_folds_ccv == fold}
            out.update(dict.fromkeys(in_test, "test"))
            rest = [s for s in ids if s not in in_test]
        rng = _rng(config.split_seed, centre, label, f"val{fold}")
        out.update(_train_val(rest, config.val_fraction, rng))
    return out


def by_centre(frames: Sequence[CachedFrame]) -> dict[str, list[CachedFrame]]:
    groups: dict[str, list[CachedFrame]] = defaultdict(list)
    for frame in frames:
        groups[frame.entry.centre].append(frame)
    return dict(sorted(groups.items()))


def split_frames(frames: Sequence[CachedFrame], config: RunConfig, fold: int
                 ) -> dict[Split, list[CachedFrame]]:
    """Each centre split on its own subjects; both frames of a subject share a split."""
    parts: dict[Split, list[CachedFrame]] = {"train": [], "val": [], "test": []}
    for centre, group in by_centre(frames).items():
        labels = {f.subject: f.entry.label for f in group}
        assignment = centre_split(labels, centre, config, fold)
        for frame in group:
            parts[assignment[frame.subject]].append(frame)
    return parts

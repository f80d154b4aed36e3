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


def _n_val(n_rest: int, fraction: float) -> int:
    """Validation subjects of one label: `fraction` of what is not test, at least one
    where three or more are left, none below that."""
    if n_rest < 3:
        return 0
    return max(int(round(fraction * n_rest)), 1)


def _blocks(ids: list[str], centre: str, label: int, config: RunConfig) -> list[list[str]]:
    """One label's subjects in n_folds_ccv blocks of a fixed permutation (block f is CCV
    fold f's test set); a function of the split seed only, never of the fold."""
    order = [str(s) for s in _rng(config.split_seed, centre, label, "ccv").permutation(ids)]
    k = config.n_folds_ccv
    return [order[b::k] for b in range(k)]


def centre_split(labels: Mapping[str, int], centre: str, config: RunConfig,
                 fold: int) -> dict[str, Split]:
    """subject -> split for one centre (stratified by label within the centre).

    The validation subjects are chosen so that the subject sets a site releases aggregates
    of are either identical or several subjects apart (client/site/ledger.py refuses a
    set that differs from an earlier one by only a few subjects):
    - CCV fold f: the first subjects of block f+1 (the next fold's test block, then the one
      after), so two folds' validation sets never overlap;
    - LCO, a training centre: exactly CCV fold k-1's validation set (the first subjects of
      block 0), the same for every held-out centre (its train/validation split does not
      depend on which other centre is held out). A set of its own would cut block 0, whose
      test and validation counts the site also releases, into a region of a few subjects
      (the guard refuses score counts that leave an intersection or difference of fewer
      than `min_difference` subjects). It is 10% of the subjects outside block k-1, so 8%
      rather than the paper's 10% of all: at Table 1's centres the same count, but for
      Sagrada Familia's HCM subjects (3 rather than 4).
    """
    out: dict[str, Split] = {}
    for label in sorted(set(labels.values())):
        ids = sorted(s for s, y in labels.items() if y == label)
        blocks = _blocks(ids, centre, label, config)
        k = len(blocks)
        if config.protocol == "lco":
            if centre == config.test_centre(fold):
                out.update(dict.fromkeys(ids, "test"))
                continue
            test: list[str] = []
            rest = len(ids) - len(blocks[k - 1])  # CCV fold k-1's
            candidates = [s for block in blocks for s in block]
        else:
            test = blocks[fold]
            rest = len(ids) - len(test)
            candidates = [s for b in range(1, k) for s in blocks[(fold + b) % k]]
        val = set(candidates[:_n_val(rest, config.val_fraction)])
        out.update({s: "test" if s in test else "val" if s in val else "train" for s in ids})
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

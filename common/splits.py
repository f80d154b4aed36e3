"""Train/validation/test splits as a pure function of one centre's own subjects.

Each site computes its own split from (its subject ids and labels, its centre name, the
protocol, the fold, the split seed), and the centralised baseline calls the same function
centre by centre, so both see identical folds. A subject's ED and ES frames share a split
because splitting is done on subjects, never frames.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from typing import Literal

import numpy as np

from fedcmr.common.run_config import RunConfig

Split = Literal["train", "val", "test"]


def _rng(seed: int, centre: str, label: int, purpose: str) -> np.random.Generator:
    words = [seed, zlib.crc32(centre.encode()), label, zlib.crc32(purpose.encode())]
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

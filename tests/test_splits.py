"""Splits: a pure function of one centre's subjects, identical for the federated and the
centralised views of a fold."""

from __future__ import annotations

from collections import Counter

import numpy as np

from fedcmr.common.cache_format import FrameEntry
from fedcmr.common.learning.data import CachedFrame
from fedcmr.common.learning.split import centre_split, split_frames
from fedcmr.common.run_config import RunConfig

COUNTS = {"A": (21, 25), "B": (33, 37), "C": (14, 10), "D": (20, 20)}


def cohort() -> list[CachedFrame]:
    frames = []
    empty = np.zeros((1, 1, 1), np.float32)
    for centre, (nor, hcm) in COUNTS.items():
        for i in range(nor + hcm):
            for phase in ("ED", "ES"):
                entry = FrameEntry(subject=f"{centre}{i:03d}", centre=centre, vendor="v",
                                   label=int(i >= nor), phase=phase, file="x", key="k")
                frames.append(CachedFrame(entry, empty, empty.astype(np.uint8)))
    return frames


def keyed(parts):
    return {name: sorted((f.subject, f.entry.phase) for f in frames)
            for name, frames in parts.items()}


def test_federated_and_centralised_views_of_every_fold_are_identical():
    frames = cohort()
    for protocol in ("ccv", "lco"):
        config = RunConfig(protocol=protocol, centres=tuple(COUNTS))
        for fold in config.fold_list():
            pooled = keyed(split_frames(frames, config, fold))
            per_site = {"train": [], "val": [], "test": []}
            for centre in COUNTS:  # each site sees only its own frames
                own = [f for f in frames if f.entry.centre == centre]
                for name, part in keyed(split_frames(own, config, fold)).items():
                    per_site[name] += part
            assert pooled == {k: sorted(v) for k, v in per_site.items()}


def test_ccv_test_sets_partition_each_centre_stratified_by_label():
    config = RunConfig(protocol="ccv", centres=tuple(COUNTS))
    for centre, (nor, hcm) in COUNTS.items():
        labels = {f"{centre}{i:03d}": int(i >= nor) for i in range(nor + hcm)}
        seen: Counter = Counter()
        for fold in range(5):
            split = centre_split(labels, centre, config, fold)
            test = [s for s, part in split.items() if part == "test"]
            seen.update(test)
            n_hcm = sum(labels[s] for s in test)
            assert abs(n_hcm - hcm / 5) <= 1 and abs(len(test) - n_hcm - nor / 5) <= 1
            rest = [s for s in labels if split[s] != "test"]
            n_val = sum(split[s] == "val" for s in rest)
            assert abs(n_val - 0.1 * len(rest)) <= 2 and n_val >= 2
        assert set(seen) == set(labels) and set(seen.values()) == {1}


def test_lco_holds_one_whole_centre_out():
    config = RunConfig(protocol="lco", centres=tuple(sorted(COUNTS)))
    frames = cohort()
    for fold, centre in enumerate(sorted(COUNTS)):
        parts = split_frames(frames, config, fold)
        assert {f.entry.centre for f in parts["test"]} == {centre}
        assert centre not in {f.entry.centre for f in parts["train"] + parts["val"]}
        assert len(parts["test"]) == 2 * sum(COUNTS[centre])


def test_both_frames_of_a_subject_share_a_split_and_seeds_matter():
    frames = cohort()
    config = RunConfig(centres=tuple(COUNTS))
    parts = split_frames(frames, config, 0)
    where = {}
    for name, part in parts.items():
        for f in part:
            assert where.setdefault(f.subject, name) == name
    other = keyed(split_frames(frames, RunConfig(centres=tuple(COUNTS), split_seed=1), 0))
    assert other != keyed(parts)
    again = keyed(split_frames(list(reversed(frames)), config, 0))
    assert again == keyed(parts)  # order of input does not matter


def labels_of(centre: str) -> dict[str, int]:
    nor, hcm = COUNTS[centre]
    return {f"{centre}{i:03d}": int(i >= nor) for i in range(nor + hcm)}


def test_a_ccv_folds_validation_subjects_are_the_next_folds_test_subjects():
    """Fold f validates on the head of block f+1, so no two folds' validation sets overlap,
    and under LCO a training centre validates on exactly CCV fold 4's set."""
    for centre in COUNTS:
        labels = labels_of(centre)
        ccv = RunConfig(protocol="ccv", centres=tuple(COUNTS))
        splits = [centre_split(labels, centre, ccv, f) for f in range(5)]
        val = [{s for s, p in split.items() if p == "val"} for split in splits]
        test = [{s for s, p in split.items() if p == "test"} for split in splits]
        for f in range(5):
            assert val[f] and val[f] <= test[(f + 1) % 5], (centre, f)
            assert all(not (val[f] & val[g]) for g in range(f))
        lco = RunConfig(protocol="lco", centres=tuple(COUNTS))
        other = next(f for f in lco.fold_list() if lco.test_centre(f) != centre)
        held = {s for s, p in centre_split(labels, centre, lco, other).items() if p == "val"}
        assert held == val[4], centre


def test_a_label_with_fewer_than_three_subjects_left_gets_no_validation_subject():
    labels = {"a": 0, "b": 0, "c": 0, "d": 1, "e": 1, "f": 1, "g": 1}
    run = RunConfig(protocol="ccv", centres=("X",), n_folds_ccv=2)
    for fold in (0, 1):
        split = centre_split(labels, "X", run, fold)
        nor_left = [s for s in "abc" if split[s] != "test"]
        assert len(nor_left) < 3 and all(split[s] == "train" for s in nor_left)



def test_three_subjects_left_give_one_validation_subject():
    labels = {f"n{i}": 0 for i in range(5)} | {f"h{i}": 1 for i in range(2)}
    run = RunConfig(protocol="ccv", centres=("X",), n_folds_ccv=2)
    for fold in (0, 1):
        split = centre_split(labels, "X", run, fold)
        left = [s for s in labels if s.startswith("n") and split[s] != "test"]
        assert sum(split[s] == "val" for s in left) == (1 if len(left) >= 3 else 0)
    assert any(len([s for s in labels if s.startswith("n") and
                    centre_split(labels, "X", run, f)[s] != "test"]) == 3 for f in (0, 1))


def test_lco_validation_equals_ccv_fold_4s_with_blocks_of_unequal_size():
    """43 subjects of a label make blocks of 9, 9, 9, 8 and 8: CCV fold 4's validation
    count comes from the 35 outside block 4 (round(3.5) = 4), not from any other block's."""
    labels = {f"s{i:02d}": 0 for i in range(43)} | {f"h{i}": 1 for i in range(10)}
    ccv = RunConfig(protocol="ccv", centres=("X", "Y"))
    lco = RunConfig(protocol="lco", centres=("X", "Y"))
    ccv_val = {s for s, p in centre_split(labels, "X", ccv, 4).items() if p == "val"}
    lco_val = {s for s, p in centre_split(labels, "X", lco, 1).items() if p == "val"}
    assert lco_val == ccv_val and sum(s.startswith("s") for s in ccv_val) == 4

"""A site's frames divided into train / validation / test for one fold."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from fedcmr.client.dataset import CachedFrame
from fedcmr.common.run_config import RunConfig
from fedcmr.common.splits import Split, centre_split


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

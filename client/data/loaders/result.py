"""What every loader returns: the subjects to prepare, and the ones it had to skip."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from fedcmr.client.data.errors import DataError
from fedcmr.common.frames import SubjectRecord


@dataclass
class LoadResult:
    subjects: list[SubjectRecord] = field(default_factory=list)
    skipped: list[DataError] = field(default_factory=list)
    #: Subjects present but outside the study (other pathologies or centres), by reason.
    excluded: Counter = field(default_factory=Counter)

    def drop_duplicates(self, source: str) -> None:
        """A subject listed twice is ambiguous: skip every copy rather than guess."""
        counts = Counter(s.subject for s in self.subjects)
        for subject, n in sorted(counts.items()):
            if n > 1:
                self.skipped.append(DataError(source, f"subject listed {n} times",
                                              "keep one entry per subject", subject=subject))
        self.subjects = [s for s in self.subjects if counts[s.subject] == 1]

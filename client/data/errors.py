"""Bad site data: one error type that always names the file, the problem and the fix."""

from __future__ import annotations

from pathlib import Path


class DataError(Exception):
    """A problem with one input file; the subject it belongs to is skipped, not the site."""

    def __init__(self, file: Path | str, problem: str, fix: str, subject: str | None = None):
        self.file = str(file)
        self.problem = problem
        self.fix = fix
        self.subject = subject
        super().__init__(self.line())

    def __reduce__(self):  # crosses process boundaries from the prepare workers
        return (DataError, (self.file, self.problem, self.fix, self.subject))

    def line(self) -> str:
        who = f"[{self.subject}] " if self.subject else ""
        return f"{who}{self.file}: {self.problem}. Fix: {self.fix}"

    def for_subject(self, subject: str) -> DataError:
        return DataError(self.file, self.problem, self.fix, subject=subject)


class DatasetError(Exception):
    """A problem that stops a whole dataset from being read (e.g. its metadata CSV)."""

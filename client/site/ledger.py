"""The differencing guard: a site's memory, on its own disk and across runs, of the subject
sets behind every aggregate it has released.

Two aggregates of the same kind over subject sets A and B give, by subtraction, an
aggregate over the subjects in one and not the other. So a new set must equal every earlier
set of its kind or differ from it by at least `min_difference` subjects (symmetric
difference), and there are at most `max_released_sets` different sets per kind; otherwise
the release is refused. Kinds: "train" (histogram summaries, model updates and n_k: the
training split) and "scores" (validation and test counts under a model the coordinator
chooses). The file holds subject ids: it stays in the site's private folder.

Where it lives: the site's state folder (`fedcmr client --state`, by default one per site
under $FEDCMR_SITE_STATE or ~/.local/state/fedcmr), which does not change with `--out`: a
site restarted with another output folder still remembers what it released. Beside it, its
SHA-256 (`released-sets.json.sha256`), written with every change: a ledger that is missing
while its digest is there, or whose content no longer matches it, stops the site
(`LedgerError`) until the operator resets it explicitly (`fedcmr client --reset-ledger`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from fedcmr.client.site.policy import PolicyRefusal, SitePolicy
from fedcmr.common.atomic import write_json, write_text
from fedcmr.common.digests import file_sha256
from fedcmr.common.protocol import RefusalRule

Kind = str  # "train" or "scores"
RESET_FIX = ("if you know why (a restore from backup, say), start the site once with "
             "`fedcmr client ... --reset-ledger`, which forgets every release it remembers")


class LedgerError(RuntimeError):
    """The ledger is missing or changed outside fedcmr: the site stops (it cannot know
    what it released before)."""


def digest_path(path: Path) -> Path:
    return Path(path).with_name(Path(path).name + ".sha256")


def check_ledger(path: Path) -> None:
    """LedgerError when the ledger at `path` is missing while its digest is there, or
    differs from its digest."""
    path, anchor = Path(path), digest_path(path)
    if not anchor.exists():
        return  # a new site (or one from before the digest): nothing to hold it to
    if not path.exists():
        raise LedgerError(f"{path}: missing, though {anchor.name} says this site released "
                          f"aggregates before; the site cannot know what it released. Fix: "
                          f"put the ledger back, or {RESET_FIX}")
    if file_sha256(path) != anchor.read_text().strip():
        raise LedgerError(f"{path}: changed outside fedcmr (its SHA-256 differs from "
                          f"{anchor.name}). Fix: put the original back, or {RESET_FIX}")


def reset_ledger(path: Path) -> bool:
    """Forget every release (the operator's explicit decision); whether there was any."""
    found = False
    for file in (Path(path), digest_path(path)):
        if file.exists():
            file.unlink()
            found = True
    return found


class ReleaseLedger:
    """`check` a set against what was released before, then `record` it."""

    def __init__(self, path: Path, policy: SitePolicy):
        self.path = Path(path)
        self.policy = policy

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict]:
        """The ledger's content, read and written back under an exclusive lock (several
        ClientApp processes of one site may answer at once)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            check_ledger(self.path)
            data = json.loads(self.path.read_text()) if self.path.exists() else {}
            yield data
            write_json(self.path, data)
            write_text(digest_path(self.path), file_sha256(self.path) + "\n")

    def release(self, kind: Kind, subjects: Iterable[str], what: str) -> None:
        """Record that an aggregate over `subjects` is about to leave, or raise
        PolicyRefusal (rule min_difference or max_released_sets) when it may not."""
        new = sorted(set(subjects))
        with self._locked() as data:
            sets = data.setdefault(kind, [])
            earlier = [set(entry["subjects"]) for entry in sets]
            if set(new) in earlier:
                return
            problem = self.problem(set(new), earlier)
            if problem:
                raise PolicyRefusal(*problem)
            sets.append({"subjects": new, "first": what, "time": time.time()})

    def problem(self, new: set[str], earlier: list[set[str]]) -> tuple[str, str] | None:
        """(rule, text) when `new` may not be released after `earlier`; None when it may."""
        gap = min((len(new ^ old) for old in earlier), default=None)
        if gap is not None and gap < self.policy.min_difference:
            return (RefusalRule.MIN_DIFFERENCE, f"its subjects differ from an aggregate this site "
                    f"released before by {gap} subject(s); at least "
                    f"{self.policy.min_difference} are required")
        if len(earlier) >= self.policy.max_released_sets:
            return (RefusalRule.MAX_RELEASED_SETS, f"this site has released aggregates of "
                    f"{len(earlier)} different subject sets of this kind; the policy allows "
                    f"{self.policy.max_released_sets}")
        return None

"""The differencing guard: a site's memory, on its own disk and across runs, of the subject
sets behind every aggregate it has released.

Two aggregates of the same kind over subject sets A and B give, by subtraction, an
aggregate over the subjects in one and not the other; score counts of A and B under one
model give, by matching bins, the scores of the subjects in both; and so on for any number
of sets. So a new training set (whose aggregates are sums: histogram summaries, model
updates) must equal every earlier one or differ from it by at least `min_difference`
subjects, and every region of the Venn diagram of the score sets released (every
intersection and difference of any number of them: per-subject scores show in binned
counts under one model) must hold no subject or at least `min_difference`. There are at
most `max_released_sets` different sets per kind, and one set's scores leave under at most
`max_models_per_set` distinct models (by the digest of the arrays received); otherwise the
release is refused. Kinds: "train" (histogram summaries, model updates and n_k: the
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

    def release(self, kind: Kind, subjects: Iterable[str], what: str,
                model: str | None = None) -> None:
        """Record that an aggregate over `subjects` (under the received model whose digest
        is `model`, for scores) is about to leave, or raise PolicyRefusal (rule
        min_difference, max_released_sets or max_models_per_set) when it may not."""
        new = sorted(set(subjects))
        with self._locked() as data:
            sets = data.setdefault(kind, [])
            entry = next((e for e in sets if set(e["subjects"]) == set(new)), None)
            if entry is None:
                problem = self.problem(set(new), [set(e["subjects"]) for e in sets], kind)
                if problem:
                    raise PolicyRefusal(*problem)
                entry = {"subjects": new, "first": what, "time": time.time(), "models": []}
                sets.append(entry)
            if model is not None:
                self.count_model(entry, model)

    def private_release(self, run: str, release: str) -> int:
        """Record a noisy model update `release` of run `run` (its differential privacy);
        how many different ones this site released in the run."""
        with self._locked() as data:
            released = data.setdefault("dp", {}).setdefault(run, [])
            if release not in released:
                released.append(release)
            return len(released)

    def count_model(self, entry: dict, model: str) -> None:
        """Add `model` to the set's models, within the policy's budget (a model the set was
        scored under before costs nothing: the site's answer is the same again)."""
        models = entry.setdefault("models", [])
        if model in models:
            return
        if len(models) >= self.policy.max_models_per_set:
            raise PolicyRefusal(RefusalRule.MAX_MODELS_PER_SET, f"this subject set was "
                                f"scored under {len(models)} different models; the policy "
                                f"allows {self.policy.max_models_per_set}")
        models.append(model)

    def problem(self, new: set[str], earlier: list[set[str]], kind: Kind = "train"
                ) -> tuple[str, str] | None:
        """(rule, text) when `new` may not be released after `earlier`; None when it may.
        Sums (training aggregates): every earlier set equal or `min_difference` subjects
        apart. Score counts: no region of their Venn diagram smaller than that."""
        need = self.policy.min_difference
        if kind == "scores":
            small = smallest_new_region(new, earlier)
            if small is not None and small < need:
                return (RefusalRule.MIN_DIFFERENCE, f"with the counts this site released "
                        f"before, its subjects would leave an intersection or difference of "
                        f"{small} subject(s); at least {need} are required")
        else:
            gap = min((len(new ^ old) for old in earlier), default=None)
            if gap is not None and gap < need:
                return (RefusalRule.MIN_DIFFERENCE, f"its subjects differ from an aggregate "
                        f"this site released before by {gap} subject(s); at least {need} "
                        "are required")
        if len(earlier) >= self.policy.max_released_sets:
            return (RefusalRule.MAX_RELEASED_SETS, f"this site has released aggregates of "
                    f"{len(earlier)} different subject sets of this kind; the policy allows "
                    f"{self.policy.max_released_sets}")
        return None


def regions(sets: list[set[str]]) -> dict[tuple[bool, ...], frozenset[str]]:
    """The Venn diagram's regions of `sets`: for each membership pattern (in which sets a
    subject is) that some subject has, those subjects. Every intersection and difference
    of any number of the sets is a union of these."""
    out: dict[tuple[bool, ...], set[str]] = {}
    for subject in set().union(*sets) if sets else ():
        out.setdefault(tuple(subject in s for s in sets), set()).add(subject)
    return {k: frozenset(v) for k, v in out.items()}


def smallest_new_region(new: set[str], earlier: list[set[str]]) -> int | None:
    """The size of the smallest region that releasing `new` after `earlier` would expose
    (one that was not already a region before); None when it exposes none."""
    before = set(regions(earlier).values())
    fresh = [len(r) for r in regions([*earlier, new]).values() if r not in before]
    return min(fresh, default=None)

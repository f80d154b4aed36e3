"""What a federated run leaves in its folder: metrics.json (same schema as the centralised
baseline, AUC from the sites' binned counts), rounds.csv, and per fold the best model,
summary.json (with each training site's released histogram and landmarks) and the model
bundle (fold_K/bundle: common/bundle.py)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fedcmr.common.atomic import atomic_path, write_csv, write_json
from fedcmr.common.bundle import (
    BUNDLE_DIR,
    BundleMetadata,
    Metrics,
    Preprocessing,
    SplitMetric,
    write_bundle,
)
from fedcmr.common.learning.harmonise import harmonisation_record
from fedcmr.common.learning.privacy import privacy_spent
from fedcmr.common.metrics import auc_from_counts
from fedcmr.common.models import registry
from fedcmr.common.run_config import RunConfig
from fedcmr.server.roster import Roster, SiteInfo
from fedcmr.server.selection import record as selection_record
from fedcmr.server.study_runner import FoldOutcome

ROUND_COLUMNS = ("fold", "round", "site", "n_k", "weight", "train_loss", "batch_size",
                 "val_loss_received", "val_auc_received", "pooled_val_loss_received",
                 "pooled_val_auc_received", "update_bytes")


def metrics_from_counts(outcomes: Sequence[FoldOutcome], sites: Sequence[SiteInfo]) -> dict:
    """AUC per site (named by its centre) and in total, over all folds' test counts."""
    per_site: dict[str, list[np.ndarray]] = {}
    for outcome in outcomes:
        for site, test in outcome.test.items():
            neg, pos = np.asarray(test.neg), np.asarray(test.pos)
            acc = per_site.setdefault(site, [np.zeros_like(neg), np.zeros_like(pos)])
            acc[0] = acc[0] + neg
            acc[1] = acc[1] + pos
    label = {s.name: (s.centres[0] if len(s.centres) == 1 else s.name) for s in sites}
    out: dict = {"auc": {}, "n": {}}
    if not per_site:
        return out
    total_neg = sum(v[0] for v in per_site.values())
    total_pos = sum(v[1] for v in per_site.values())
    for name, (neg, pos) in [("total", (total_neg, total_pos))] + sorted(
            (label.get(k, k), v) for k, v in per_site.items()):
        out["auc"][name] = auc_from_counts(neg, pos)
        out["n"][name] = {"frames": int(neg.sum() + pos.sum()), "HCM": int(pos.sum()),
                          "NOR": int(neg.sum())}
    return out


def privacy_report(run: RunConfig, outcomes: Sequence[FoldOutcome], sites: int
                   ) -> dict | None:
    """The run's differential privacy (None without): ε at the run's δ over every noisy
    round of every fold (the same sites train in each), and per fold (an aggregated round
    is one release; "inf" where no noise was added); and each site's own ε, as the site
    computed it for the noise it added to the updates it released."""

    def epsilon(releases: int) -> float | str:
        value = privacy_spent(run.dp_noise, releases, run.dp_delta, max(sites, 1))
        return "inf" if value == float("inf") else round(value, 4)

    if not run.private:
        return None
    releases = {o.fold: len(o.audit) for o in outcomes}
    total = sum(releases.values())
    return {"dp_clip": run.dp_clip, "noise_multiplier": run.dp_noise, "delta": run.dp_delta,
            "sites": sites, "releases": releases, "releases_total": total,
            "epsilon": epsilon(total),
            "epsilon_per_fold": {f: epsilon(r) for f, r in releases.items()},
            "epsilon_per_site": site_epsilons(outcomes),
            "accounting": "RDP (Flower's RdpAccountant), every site in every round"}


def site_epsilons(outcomes: Sequence[FoldOutcome]) -> dict[str, float]:
    """Each site's latest own epsilon in the audit trail (its running total in the run)."""
    out: dict[str, float] = {}
    for outcome in outcomes:
        for row in outcome.audit:
            for entry in row.get("contributed", []):
                if "dp_epsilon" in entry:
                    out[entry["site"]] = max(out.get(entry["site"], 0.0),
                                             round(float(entry["dp_epsilon"]), 4))
    return dict(sorted(out.items()))


def write_rounds(path: Path, outcomes: Sequence[FoldOutcome]) -> None:
    write_csv(path, ROUND_COLUMNS, [row for outcome in outcomes for row in outcome.rounds])


def write_fold(out: Path, outcome: FoldOutcome, bundle: FoldBundle | None = None) -> None:
    """fold_K/best_model.pt, summary.json and, with `bundle`, the model bundle."""
    fold_dir = out / f"fold_{outcome.fold}"
    if outcome.best_arrays is not None:
        with atomic_path(fold_dir / "best_model.pt") as tmp:
            torch.save(outcome.best_arrays.to_torch_state_dict(), tmp)
        if bundle is not None:
            write_bundle(fold_dir / BUNDLE_DIR, bundle.metadata(outcome),
                         fold_dir / "best_model.pt")
    write_json(fold_dir / "summary.json", {
        "best_round": outcome.best_round,
        "selection": selection_record(outcome.best_round, outcome.unvalidated),
        "refused_histogram": outcome.refused,
        "rejected_updates": outcome.rejected,
        "reference_histogram": outcome.histogram, "bin_edges": outcome.bin_edges,
        "test": {s: {"auc": t.auc(), "n": t.examples, "loss": t.loss}
                 for s, t in outcome.test.items()},
        # each training site's released histogram and landmarks (the report's figure 5)
        **harmonisation_record(outcome.site_summaries, outcome.landmarks)})


@dataclass(frozen=True)
class FoldBundle:
    """What a federated fold's bundle records beyond the fold's outcome: the run's settings
    and the preprocessing the admitted sites agreed on at the handshake."""

    run: RunConfig
    strategy: str
    vote_alpha: float
    preprocessing: Preprocessing | None

    @classmethod
    def of(cls, run: RunConfig, strategy: str, vote_alpha: float, roster: Roster
           ) -> FoldBundle:
        """The preprocessing from the admitted sites' describe fingerprints (the handshake
        made them agree on every PREP_FIELDS value; server/handshake.py)."""
        fingerprints = [roster.described[n].fingerprint for n in sorted(roster.sites)
                        if n in roster.described]
        prep = (Preprocessing.from_fields(fingerprints[0].model_dump()) if fingerprints
                else None)
        return cls(run, strategy, vote_alpha, prep)

    def metadata(self, outcome: FoldOutcome) -> BundleMetadata:
        # the replies of round r validate round r - 1's global model (server/study_runner)
        val = next((r["pooled_val_auc_received"] for r in outcome.rounds
                    if r["round"] == outcome.best_round + 1), None)
        tests = list(outcome.test.values())
        test_auc = auc_from_counts(sum(np.asarray(t.neg) for t in tests),
                                   sum(np.asarray(t.pos) for t in tests)) if tests else None
        metrics = Metrics(validation=SplitMetric(auc=val),
                          test=SplitMetric(auc=test_auc, n=sum(t.examples for t in tests)))
        return registry.get(self.run.model).bundle_metadata(
            self.run, outcome.fold, "fl", metrics, self.preprocessing, outcome.landmarks,
            outcome.init_source, strategy=self.strategy, vote_alpha=self.vote_alpha)


def site_coverage(outcomes: Sequence[FoldOutcome], roster: Roster) -> dict:
    """Which sites the figures cover: a site counts when every fold's test holds it. A
    site missing from any (or refused at discovery) is lost, with the last reason known."""
    asked = sorted(set(roster.sites) | set(roster.refused) | roster.expected)
    covered = [n for n in asked if outcomes and all(n in o.test for o in outcomes)]
    lost = {n: roster.refused.get(n) or roster.away.get(n)
            or ("not back since the resume" if n not in roster.sites else "no test counts")
            for n in asked if n not in covered}
    rounds_missed: dict[str, list[str]] = {}
    for event in roster.events:
        if event["event"] == "lost":
            rounds_missed.setdefault(event["site"], []).append(event["when"])
    return {"asked": asked, "covered": covered, "lost": lost, "losses": rounds_missed}

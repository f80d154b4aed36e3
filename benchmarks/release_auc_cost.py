"""What the site's release rules (issue #27) cost in AUC, as the coordinator computes it.

1. Score bins (`score_bin_width`): the pooled AUC from the sites' binned counts (summed, as
   the coordinator sums them) against the exact AUC of the same scores, for
   - the per-frame predictions of real runs (default: the demo's, every site's
     predictions.csv under runs/demo-final), and
   - 200 draws of 360 frames from class logit distributions of SD 1, 3 and 10 (means 1 SD
     apart), as tests/test_metrics.py draws them.
2. Perturbed measures (`measures_resolution`): the measures model fitted and scored on the
   perturbed measures of the caches' subjects (the paper's CCV on each centre's split, all
   centres pooled as the pooled baseline does), against the same on the exact measures,
   over 30 draws of the site secrets (seeded, so that the figures reproduce).

3. A demo run (`--demo RUN`, default runs/demo-27 where it exists: `fedcmr demo` on the
   commit that brought the rules): the AUC it reported (from the sites' binned counts)
   against the exact AUC of the predictions the sites kept, per centre.

    python benchmarks/release_auc_cost.py [--caches DIR ...] [--predictions CSV ...]
                                          [--demo RUN]

Prints the figures and writes benchmarks/results/release_auc_cost.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from fedcmr.client.site.release import perturbed_measures, score_counts
from fedcmr.common.atomic import write_json
from fedcmr.common.cache_format import read_manifest
from fedcmr.common.learning import measures_model as mm
from fedcmr.common.learning.data import CachedFrame
from fedcmr.common.learning.split import split_frames
from fedcmr.common.measures import read_all_measures
from fedcmr.common.metrics import auc, auc_from_counts
from fedcmr.common.results import read_predictions
from fedcmr.common.run_config import RunConfig

ROOT = Path(__file__).resolve().parent.parent
WIDTHS = (0.002, 0.05, 0.1, 0.25, 0.5)
RESOLUTIONS = (0.1, 0.25, 0.5)


def pooled_binned_auc(groups: list[tuple[np.ndarray, np.ndarray]], width: float) -> float:
    """The coordinator's AUC: each group's (site's) counts in bins of `width`, summed."""
    neg = pos = 0
    for labels, scores in groups:
        counts = score_counts(labels, scores, 0.0, width)
        neg, pos = neg + np.asarray(counts.neg), pos + np.asarray(counts.pos)
    return auc_from_counts(neg, pos)


def bins_on_predictions(paths: list[Path]) -> dict:
    groups = []
    for path in paths:
        rows = read_predictions(path)
        groups.append((np.array([r["label"] for r in rows], float),
                       np.array([r["score"] for r in rows], float)))
    labels = np.concatenate([g[0] for g in groups])
    scores = np.concatenate([g[1] for g in groups])
    exact = auc(labels, scores)
    return {"files": [str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p)
                      for p in paths], "frames": int(len(labels)), "exact_auc": exact,
            "binned_auc": {str(w): pooled_binned_auc(groups, w) for w in WIDTHS}}


def bins_on_draws(draws: int = 200, frames: int = 360) -> dict:
    rng = np.random.default_rng(0)
    out = {}
    for sd in (1.0, 3.0, 10.0):
        errors = {w: [] for w in WIDTHS}
        for _ in range(draws):
            labels = rng.integers(0, 2, frames).astype(float)
            logits = rng.normal(labels * sd, sd)
            scores = 1.0 / (1.0 + np.exp(-logits))
            exact = auc(labels, scores)
            for w in WIDTHS:
                errors[w].append(abs(pooled_binned_auc([(labels, scores)], w) - exact))
        out[f"sd {sd:g}"] = {str(w): {"mean_abs_error": float(np.mean(e)),
                                      "max_abs_error": float(np.max(e))}
                             for w, e in errors.items()}
    return out


def ccv_auc(frames: list[CachedFrame], measures) -> float:
    """The pooled frame AUC of the measures model over the five CCV folds."""
    run = RunConfig(model="measures", centres=tuple(sorted({f.entry.centre for f in frames})))
    labels, scores = [], []
    for fold in range(run.n_folds_ccv):
        parts = split_frames(frames, run, fold)
        _, x, y = mm.subject_table(parts["train"], measures)
        state = mm.fit_central(x, y)
        test_labels, test_scores, _ = mm.frame_scores(parts["test"], measures, state)
        labels.append(test_labels)
        scores.append(test_scores)
    return auc(np.concatenate(labels), np.concatenate(scores))


def perturbation_cost(caches: list[Path], draws: int = 30) -> dict:
    measures = read_all_measures(caches)
    entries = [e for cache in caches for e in read_manifest(cache) if e.subject in measures]
    empty = np.zeros((1, 1, 1), np.float32)
    frames = [CachedFrame(e, empty, empty.astype(np.uint8)) for e in entries]
    by_centre: dict[str, dict] = {}
    for subject, row in measures.items():
        by_centre.setdefault(row.centre, {})[subject] = row
    exact = ccv_auc(frames, measures)
    out = {"subjects": len(measures), "frames": len(frames), "exact_auc": exact}
    secrets = np.random.default_rng(27)  # the sites' secrets, drawn reproducibly here
    for r in RESOLUTIONS:
        aucs = []
        for _ in range(draws):
            # each centre is a site: its own SDs, its own secret
            seen = {}
            for rows in by_centre.values():
                seen.update(perturbed_measures(rows, r, secrets.bytes(32)))
            aucs.append(ccv_auc(frames, seen))
        out[str(r)] = {"mean_auc": float(np.mean(aucs)), "sd_auc": float(np.std(aucs)),
                       "mean_cost": float(exact - np.mean(aucs)), "draws": draws}
    return out


def demo_reported(run: Path) -> dict:
    """The demo's reported AUC (metrics.json) against the exact AUC of its predictions."""
    metrics = json.loads((run / "federated" / "metrics.json").read_text())
    rows = read_predictions(run / "federated" / "predictions.csv")
    exact = {}
    for centre in sorted({r["centre"] for r in rows}) + ["total"]:
        chosen = [r for r in rows if centre == "total" or r["centre"] == centre]
        exact[centre] = auc(np.array([r["label"] for r in chosen], float),
                            np.array([r["score"] for r in chosen], float))
    return {"run": str(run.relative_to(ROOT)) if run.is_relative_to(ROOT) else str(run),
            "reported_auc": metrics["auc"], "exact_auc": exact,
            "frames": {c: n["frames"] for c, n in metrics.get("n", {}).items()}}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    demo = ROOT / "runs" / "demo-final"
    parser.add_argument("--caches", nargs="*", type=Path, default=sorted(
        p.parent for p in demo.glob("cache/*/measures.csv")))
    parser.add_argument("--predictions", nargs="*", type=Path, default=sorted(
        demo.glob("federated/sites/*/fold_*/predictions.csv")))
    parser.add_argument("--demo", type=Path, default=ROOT / "runs" / "demo-27")
    args = parser.parse_args(argv)
    result = {"score_bins": {"draws": bins_on_draws()}}
    if args.predictions:
        result["score_bins"]["predictions"] = bins_on_predictions(args.predictions)
    if args.caches:
        result["measures_resolution"] = perturbation_cost(args.caches)
    if (args.demo / "federated" / "metrics.json").exists():
        result["demo"] = demo_reported(args.demo)
    print(json.dumps(result, indent=2))
    out = ROOT / "benchmarks" / "results" / "release_auc_cost.json"
    write_json(out, result)
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()

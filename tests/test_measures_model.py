"""The measures model (logistic regression on the clinical measures): its standardisation
from sums, its federated steps against the exact central fit, its place in the site's
policy, the study grid, and a federated run beside the centralised one on the same splits."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import golden
import numpy as np
import pytest
from cache_factory import write_measured_cohort

from fedcmr.client.site import work as site_work
from fedcmr.client.site.policy import PolicyRefusal, SitePolicy
from fedcmr.common.learning import measures_model as mm
from fedcmr.common.learning.data import load_cache
from fedcmr.common.measures import FEATURES, read_all_measures
from fedcmr.common.protocol import Order
from fedcmr.common.run_config import RunConfig

SIZES = {"Alpha": (6, 6), "Bravo": (7, 7), "Charlie": (5, 6)}


@pytest.fixture(scope="module")
def caches(tmp_path_factory) -> list[Path]:
    return write_measured_cohort(tmp_path_factory.mktemp("measures-caches"), SIZES)


def _data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n).astype(float)
    x = rng.normal(0, 1, (n, len(FEATURES))) * rng.uniform(1, 50, len(FEATURES)) + 100
    x[:, 4] = rng.normal(10, 2, n) + 5 * y  # the maximal wall thickness carries the class
    return x, y


def test_the_sums_of_parts_give_the_pooled_standardisation():
    x, _ = _data(40, 0)
    mean, std = mm.combine_sums([mm.sums(x[:7]), mm.sums(x[7:25]), mm.sums(x[25:])])
    np.testing.assert_allclose(mean, x.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(std, x.std(axis=0), rtol=1e-9)


def test_federated_single_steps_reach_the_central_optimum():
    """FedAvg of one full-batch step per site, weighted by n_k, is gradient descent on the
    pooled objective: it must converge to scikit-learn's exact minimiser of it."""
    x, y = _data(60, 1)
    central = mm.fit_central(x, y)
    arrays = mm.from_state(central)
    state = mm.initial_state(arrays["mean"], arrays["std"])
    parts = [(x[:10], y[:10]), (x[10:35], y[10:35]), (x[35:], y[35:])]
    for _ in range(800):  # l2 bounds the contraction: (1 - lr * l2) ** 800 < 1e-8
        updates = [mm.local_steps(state, px, py, steps=1)[0] for px, py in parts]
        state = {k: sum(u[k] * len(py) for u, (_, py) in zip(updates, parts, strict=True))
                 / len(y) for k in mm.STATE_KEYS}
    np.testing.assert_allclose(state["coef"].numpy(), central["coef"].numpy(), atol=1e-4)
    np.testing.assert_allclose(state["intercept"].numpy(), central["intercept"].numpy(),
                               atol=1e-4)
    # and the fit separates the classes the data were made to separate
    assert mm.loss(central, x, y) < 0.5


def test_local_steps_lower_the_loss_and_keep_the_standardisation():
    x, y = _data(30, 2)
    mean, std = mm.combine_sums([mm.sums(x)])
    start = mm.initial_state(mean, std)
    trained, first_loss = mm.local_steps(start, x, y, steps=7)
    assert first_loss == pytest.approx(np.log(2))
    assert mm.loss(trained, x, y) < first_loss - 0.05
    np.testing.assert_array_equal(trained["mean"].numpy(), mean)
    np.testing.assert_array_equal(trained["std"].numpy(), std)


def test_each_frame_scores_its_subject_and_missing_measures_name_the_fix(caches):
    frames = load_cache(caches[:1])
    measures = read_all_measures(caches[:1])
    _, x, y = mm.subject_table(frames, measures)
    state = mm.fit_central(x, y)
    labels, scores, _ = mm.frame_scores(frames, measures, state)
    by_subject: dict[str, set[float]] = {}
    for frame, value in zip(frames, scores, strict=True):
        by_subject.setdefault(frame.subject, set()).add(float(value))
    assert all(len(v) == 1 for v in by_subject.values())  # ED and ES share the score
    assert len(labels) == len(frames) == 2 * len(by_subject)
    with pytest.raises(KeyError, match="re-run `fedcmr prepare`"):
        mm.subject_table(frames, {})


def test_a_site_whose_policy_excludes_the_measures_model_refuses_it(caches, tmp_path):
    run = RunConfig(model="measures", profile="smoke", folds=(0,), min_subjects=3)
    order = Order(run=run, fold=0)
    strict = site_work.Site.open("Alpha", [caches[0]], tmp_path,
                                 SitePolicy(models=("cnn",), min_subjects=3))
    refused = site_work.measure_sums(strict, order)
    assert refused.sums is None and "models" in str(refused.refused)
    with pytest.raises(PolicyRefusal, match="models"):
        site_work.train(strict, order, mm.initial_state(np.zeros(11), np.ones(11)))
    willing = site_work.Site.open("Alpha", [caches[0]], tmp_path / "w",
                                  SitePolicy(min_subjects=3))
    released = site_work.measure_sums(willing, order)
    train_subjects = {f.subject for f in willing.parts(order)["train"]}
    assert released.sums.n == len(train_subjects)


def test_the_measures_model_runs_privately_but_not_as_fp16_deltas():
    assert RunConfig(model="measures", dp_clip=1.0).private  # tests/test_release_attacks.py
    with pytest.raises(ValueError, match="update-encoding"):
        RunConfig(model="measures", update_encoding="fp16-delta")


def test_the_study_grid_runs_the_measures_model_once_per_setting():
    from fedcmr.lab.study.cells import expand
    from fedcmr.lab.study.config import StudyConfig

    config = StudyConfig.model_validate({"axes": {
        "model": ["cnn", "measures"], "framework": ["cds", "fedavg"],
        "prior": ["baseline", "structures"], "augment": ["none", "basic"], "folds": [0]}})
    cells = expand(config, {"A": ("A",), "B": ("B",)}, data="d")
    measures = [c for c in cells if c.model == "measures"]
    assert len([c for c in cells if c.model == "cnn"]) == 2 * 2 * 2
    assert len(measures) == 2  # one per framework: prior and augment do not apply
    assert all(c.key.startswith("measures-") for c in measures)
    assert {c.run_config().model for c in measures} == {"measures"}


@pytest.mark.slow
def test_federated_and_centralised_measures_models_on_the_same_splits(caches, tmp_path,
                                                                      monkeypatch):
    """The Flower app (simulation runtime) trains the measures model from the sites' sums
    and coefficients only; the pooled baseline fits it on the same training subjects; both
    score the same test frames, with a high AUC on data built to be separable. The sites
    release exact measures here (tests/exact-release-policy.toml), so that the predictions
    can be pinned to the digit."""
    from fedcmr.common.bundle import preprocessing_of_caches
    from fedcmr.lab.centralized import run_centralized
    from fedcmr.lab.local_federation import run_local_federation
    from fedcmr.server.settings import FederationSettings

    run = RunConfig(model="measures", profile="smoke", folds=(0,), min_subjects=3, epochs=6)
    fl_dir = tmp_path / "fl"
    monkeypatch.setenv("FEDCMR_SITE_POLICY", str(Path(__file__).parent /
                                                 "exact-release-policy.toml"))
    metrics = run_local_federation(caches, FederationSettings(strategy="fedavg", run=run),
                                   fl_dir, echo=lambda line: None, runtime="simulation")
    cds = run_centralized(load_cache(caches), run, tmp_path / "cds", progress=False,
                          measures=read_all_measures(caches),
                          preprocessing=preprocessing_of_caches(caches))

    def rows(path: Path) -> dict[tuple[str, str], float]:
        with path.open() as handle:
            return {(r["subject"], r["phase"]): float(r["score"])
                    for r in csv.DictReader(handle)}

    fl_rows, cds_rows = rows(fl_dir / "predictions.csv"), rows(tmp_path / "cds" /
                                                                "predictions.csv")
    assert fl_rows.keys() == cds_rows.keys()  # the same test frames
    golden.check("fl_simulation_measures", fl_dir / "predictions.csv")
    golden.check("cds_measures", tmp_path / "cds" / "predictions.csv")
    assert metrics["auc"]["total"] > 0.8 and cds["auc"]["total"] > 0.8
    # six rounds of local steps from zero get the federated fit close to the exact pooled
    # one (docs/results.md: FL within 0.004 of CDS over three draws)
    assert abs(metrics["auc"]["total"] - cds["auc"]["total"]) <= 0.02
    paired = np.array([(fl_rows[k], cds_rows[k]) for k in fl_rows])
    assert np.corrcoef(paired.T)[0, 1] > 0.95
    # what left the sites: sums once, then the model's four arrays and counts
    for log in (fl_dir / "sites").glob("*/audit.jsonl"):
        kinds = {json.loads(line)["type"] for line in log.read_text().splitlines()}
        assert "query.measure_stats" in kinds and "query.nyul" not in kinds
    summary = json.loads((fl_dir / "fold_0" / "summary.json").read_text())
    assert summary["best_round"] >= 1
    # both folds' bundles give their run's test scores back through `fedcmr predict`
    from fedcmr.client.predict import predict_caches
    from fedcmr.common.bundle import BUNDLE_DIR

    for framework, folder, scores in (("fl", fl_dir, fl_rows), ("cds", tmp_path / "cds",
                                                                  cds_rows)):
        metadata, report = predict_caches(folder / "fold_0" / BUNDLE_DIR, caches,
                                          tmp_path / f"predict-{framework}")
        assert metadata.model == "measures" and metadata.framework == framework
        predicted = {(r["subject"], r["phase"]): r["score"] for r in report.frames}
        for key, value in scores.items():
            assert predicted[key] == pytest.approx(value, abs=1e-5), (framework, key)
    assert metadata.metrics.test.auc == pytest.approx(cds["auc"]["total"])
    for framework in ("fl", "cds"):
        golden.check(f"predict_{framework}_measures", tmp_path / f"predict-{framework}" /
                     "predictions.csv")


def test_scores_are_the_sigmoid_of_the_logits_and_the_loss_is_the_log_loss():
    """Against scikit-learn and SciPy: each frame's P(HCM) is expit of its subject's
    standardised measures times the coefficients plus the intercept, and the validation
    loss is the frames' mean binary cross-entropy."""
    from scipy.special import expit
    from sklearn.metrics import log_loss

    from fedcmr.common.cache_format import FrameEntry
    from fedcmr.common.learning.data import CachedFrame
    from fedcmr.common.measures import SubjectMeasures

    rng = np.random.default_rng(4)
    table, frames = {}, []
    empty = np.zeros((1, 1, 1), np.float32)
    for i in range(12):
        values = dict(zip(FEATURES, rng.normal(100, 20, len(FEATURES)), strict=True))
        table[f"s{i}"] = SubjectMeasures(subject=f"s{i}", centre="A", label=i % 2, **values)
        for phase in ("ED", "ES"):
            frames.append(CachedFrame(FrameEntry(subject=f"s{i}", centre="A", vendor="v",
                                                 label=i % 2, phase=phase, file="x",
                                                 key="k"), empty, empty.astype(np.uint8)))
    mean, std = rng.normal(100, 5, len(FEATURES)), rng.uniform(10, 30, len(FEATURES))
    coef, intercept = rng.normal(0, 0.5, len(FEATURES)), 0.3
    state = mm.to_state(mean, std, coef, [intercept])
    labels, scores, loss = mm.frame_scores(frames, table, state)
    x = np.array([table[f.subject].features() for f in frames])
    expected = expit((x - mean) / std @ coef + intercept)
    np.testing.assert_allclose(scores, expected, rtol=1e-12)
    assert labels.tolist() == [f.entry.label for f in frames]
    assert loss == pytest.approx(log_loss(labels, scores), rel=1e-9)
    y = np.array([table[f"s{i}"].label for i in range(12)], float)
    subjects = np.array([table[f"s{i}"].features() for i in range(12)])
    assert mm.loss(state, subjects, y) == pytest.approx(
        log_loss(y, expit((subjects - mean) / std @ coef + intercept)), rel=1e-9)


def test_the_pooled_standardisation_is_the_population_sd_however_small():
    """Ejection fractions vary by about 0.05: the pooled SD is theirs, not a floor."""
    rng = np.random.default_rng(5)
    parts = [rng.normal([0.6, 120.0], [0.05, 20.0], (n, 2)) for n in (7, 11)]
    mean, std = mm.combine_sums([mm.sums(x) for x in parts])
    pooled = np.concatenate(parts)
    np.testing.assert_allclose(mean, pooled.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(std, pooled.std(axis=0), rtol=1e-9)
    assert mm.combine_sums([mm.sums(np.ones((4, 2)))])[1].tolist() == [1e-8, 1e-8]

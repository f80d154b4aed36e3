"""Attacks on what a site releases (issue #27, attacks 3, 4 and 6), each against the real
site code with the default policy, asserting that it fails, and against the defence
switched off, asserting that it succeeds:

3. a crafted measures model (coordinator-chosen standardisation and coefficients) reads one
   subject's measures and label out of the test counts, or out of two model updates;
4. score counts of subject sets that intersect in one subject, and one set scored under
   ever more models;
6. differential-privacy noise that the coordinator can regenerate and subtract.

The other attacks (the coordinator's APIs, keys, plaintext, split parameters, the ledger):
tests/test_attacks.py; the audit log: tests/test_audit.py.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from cache_factory import write_measures_table, write_site_cache
from test_site_policy import TABLE_1

from fedcmr.client.site import ledger as site_ledger
from fedcmr.client.site import work as site_work
from fedcmr.client.site.policy import PolicyRefusal, SitePolicy
from fedcmr.client.site.secret import SECRET_FILE, secret_rng
from fedcmr.common.digests import short_digest, state_digest
from fedcmr.common.learning import measures_model as mm
from fedcmr.common.learning.privacy import add_noise
from fedcmr.common.measures import FEATURES, read_measures
from fedcmr.common.metrics import LOGIT_LIMIT, LOGIT_WIDTH
from fedcmr.common.protocol import Order
from fedcmr.common.run_config import RunConfig

CENTRES = ("Other", "Vall d'Hebron")
#: No release rule of #27: exact scores, exact measures (the defences of attack 3 off).
EXACT = {"score_bin_width": LOGIT_WIDTH, "measures_resolution": 0.0}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """Vall d'Hebron's size (Table 1), with measures."""
    root = tmp_path_factory.mktemp("vall")
    made = write_site_cache(root / "cache", "Vall d'Hebron", *TABLE_1["Vall d'Hebron"],
                            seed=5)
    return write_measures_table(made, seed=5)


def open_site(cache, folder, policy: SitePolicy, secret: int = 1) -> site_work.Site:
    """The site, with a fixed secret (so that each test's draws are the same every run)."""
    state = folder / "state"
    state.mkdir(parents=True)
    (state / SECRET_FILE).write_bytes(bytes([secret]) * 32)
    (state / SECRET_FILE).chmod(0o600)
    return site_work.Site.open("Vall d'Hebron", [cache], folder / "out", policy,
                               state_dir=state)


def measures_run(protocol: str = "lco", **update) -> RunConfig:
    return RunConfig(model="measures", protocol=protocol, profile="smoke", centres=CENTRES,
                     **update)


def linear(coef: np.ndarray, intercept: float, mean: np.ndarray | None = None
           ) -> dict[str, torch.Tensor]:
    """A crafted measures model: logit = (measures - mean) . coef + intercept (unit SDs)."""
    n = len(FEATURES)
    return mm.to_state(np.zeros(n) if mean is None else mean, np.ones(n), coef, [intercept])


# -- 3. a crafted measures model ---------------------------------------------------------
def top_bin(site, order, state) -> tuple[float, int]:
    """(the logit at the centre of the highest occupied bin, its class) of the test counts."""
    reply = site_work.test(site, order, state)
    assert reply.withheld is None, reply.withheld
    neg, pos = np.asarray(reply.test.neg), np.asarray(reply.test.pos)
    index = int(np.flatnonzero(neg + pos)[-1])
    return -LOGIT_LIMIT + (index - 0.5) * LOGIT_WIDTH, int(pos[index] > 0)


#: The attacker's prior: no subject's measure exceeds these (ml, fractions, g, mm).
PRIOR_MAX = dict(zip(FEATURES, (400, 300, 1, 400, 40, 40, 40, 40, 400, 300, 1), strict=True))


def read_one_subject(site) -> tuple[np.ndarray, int]:
    """Thirteen test queries, each a crafted linear model, on the site's whole cohort (LCO,
    the site held out). The subject with the largest LV EDV holds the highest bin: a first
    query finds roughly where, the second reads its EDV and the gap to the next subject;
    each further query adds measure j with a weight small enough that the subject keeps the
    highest bin, whose shift is measure j."""
    run = measures_run()
    order = Order(run=run, fold=run.centres.index("Vall d'Hebron"))
    n = len(FEATURES)
    coarse, _ = top_bin(site, order, linear(np.eye(n)[0] * 0.1, -15.0))
    slope = 4.0
    shift = slope * (coarse + 15.0) / 0.1 - 20.0  # the top subject's logit about 20
    reply = site_work.test(site, order, linear(np.eye(n)[0] * slope, -shift))
    counts = np.asarray(reply.test.neg) + np.asarray(reply.test.pos)
    occupied = np.flatnonzero(counts)
    top, second = (-LOGIT_LIMIT + (i - 0.5) * LOGIT_WIDTH for i in occupied[[-1, -2]])
    label = int(np.asarray(reply.test.pos)[occupied[-1]] > 0)
    margin = top - second
    out = np.zeros(n)
    out[0] = (top + shift) / slope
    for j in range(1, n):
        weight = 0.4 * margin / PRIOR_MAX[FEATURES[j]]
        crafted = linear(np.eye(n)[0] * slope + np.eye(n)[j] * weight, -shift)
        logit, _ = top_bin(site, order, crafted)
        out[j] = (logit - top) / weight
    return out, label


def recovery_error(cache, estimate: np.ndarray) -> tuple[float, int]:
    """The estimate's RMS error over the measures, in the site's SDs, against the subject
    it is closest to (the one with the largest EDV); and that subject's label."""
    table = read_measures(cache)
    x = np.array([m.features() for m in table.values()])
    sd = x.std(axis=0)
    target = int(np.argmax(x[:, 0]))
    label = list(table.values())[target].label
    return float(np.sqrt(np.mean(((estimate - x[target]) / sd) ** 2))), label


def test_a_crafted_measures_model_reads_no_subject_out_of_the_test_counts(cache, tmp_path):
    """Attack 3: thirteen test queries recover the top subject's 11 measures to 1% of the
    site's SD, and its label, when the site releases exact scores of its exact measures;
    with the default policy the error is at least the policy's resolution (0.25 SD)."""
    policy = SitePolicy()
    estimate, _ = read_one_subject(open_site(cache, tmp_path / "on", policy))
    error, _ = recovery_error(cache, estimate)
    assert error > policy.measures_resolution
    off = open_site(cache, tmp_path / "off", SitePolicy(**EXACT))
    estimate, label = read_one_subject(off)
    error, truth = recovery_error(cache, estimate)
    assert error < 0.01 and label == truth


def read_by_updates(site) -> tuple[np.ndarray, np.ndarray]:
    """Two training messages (LCO, the site trains) with a saturated threshold on LV EDV
    just above and just below the largest (as the site's model sees it: the attacker's
    best case): the difference of the two updates is that one subject's term of the
    gradient, its measures. Returns (estimate, the subject's true measures)."""
    run = measures_run()
    order = Order(run=run, fold=run.centres.index("Other"), server_round=1)
    seen = site.measures()
    train = {f.subject for f in site.parts(order)["train"]}
    edv = sorted(((seen[s].lv_edv_ml, s) for s in train), reverse=True)
    (top, subject), (second, _) = edv[0], edv[1]
    n, slope = len(FEATURES), 1e9
    updates = []
    # the standardisation's mean at the midpoint, so that the L2 shrinking of the
    # coefficient over the local steps leaves that threshold where it is; the first
    # message's intercept lifts its threshold just above the subject (shrinking lifts it
    # further)
    mean = np.zeros(n)
    mean[0] = (top + second) / 2
    for intercept in (-slope * (top + 1e-3 - mean[0]), 0.0):
        new = site_work.train(site, order, linear(np.eye(n)[0] * slope, intercept, mean))
        updates.append(new.arrays.to_torch_state_dict()["coef"].double().numpy())
    # each step: coef <- (1 - lr l2) coef - lr (mean of (p - y) (x - mean)); only the
    # subject's p differs (0, then 1), so the updates differ by -lr / n (x - mean) times
    # the sum of the shrink factors over the steps
    lr, l2, steps = mm.PARAMS.lr, mm.PARAMS.l2, run.hyper.local_iterations
    shrink = sum((1 - lr * l2) ** t for t in range(steps))
    estimate = -(updates[1] - updates[0]) * len(train) / (lr * shrink) + mean
    return estimate, np.array(read_measures(site.caches[0])[subject].features())


def test_a_crafted_measures_model_reads_no_subject_out_of_two_updates(cache, tmp_path):
    """Attack 3, by training messages: with exact measures two updates give one subject's
    measures to 1e-6 of the site's SD; with the default policy the updates hold only its
    perturbed measures, at least the policy's resolution away."""
    x = np.array([m.features() for m in read_measures(cache).values()])
    sd = x.std(axis=0)
    estimate, truth = read_by_updates(open_site(cache, tmp_path / "on", SitePolicy()))
    assert np.sqrt(np.mean(((estimate - truth) / sd) ** 2)) > SitePolicy().measures_resolution
    estimate, truth = read_by_updates(open_site(cache, tmp_path / "off", SitePolicy(**EXACT)))
    assert np.sqrt(np.mean(((estimate - truth) / sd) ** 2)) < 1e-6


# -- 4. intersecting sets, and one set under many models ---------------------------------
def score_sets(site, policy_folds) -> list[tuple[Order, str, frozenset[str]]]:
    """Every validation and test set a coordinator may ask this site for under a policy
    that allows these CCV fold counts and any split seed: (order, split, subjects)."""
    out = []
    for seed, k, protocol in itertools.product(range(4), policy_folds, ("ccv", "lco")):
        run = RunConfig(model="measures", protocol=protocol, profile="smoke", centres=CENTRES,
                        split_seed=seed, n_folds_ccv=k)
        folds = [run.centres.index("Other")] if protocol == "lco" else run.fold_list()
        for fold in folds:
            order = Order(run=run, fold=fold)
            for part in ("val", "test"):
                subjects = frozenset(f.subject for f in site.parts(order)[part])
                if len(subjects) >= 4:
                    out.append((order, part, subjects))
    return out


def three_meeting_in_one(sets):
    """Three sets, pairwise at least 4 subjects apart and sharing at least 2 subjects two
    by two, whose common part is one subject."""
    for a, b in itertools.combinations(sets, 2):
        ab = a[2] & b[2]
        if len(ab) < 2 or len(a[2] ^ b[2]) < 4:
            continue
        for c in sets:
            if len(ab & c[2]) == 1 and min(len(c[2] & a[2]), len(c[2] & b[2])) >= 2 and \
                    min(len(c[2] ^ a[2]), len(c[2] ^ b[2])) >= 4:
                return a, b, c
    raise AssertionError("no three sets meet in one subject")


def pairwise_only(self, new, earlier, kind="train"):
    """The guard before #27: every kind's sets compared two by two."""
    return ORIGINAL_PROBLEM(self, new, earlier, "train")


ORIGINAL_PROBLEM = site_ledger.ReleaseLedger.problem


def intersect(site, state, triple) -> tuple[list, np.ndarray | None]:
    """Score the three sets under one model; the counts common to all released ones (the
    element-wise minimum): the one shared subject's frames when all three leave."""
    released, withheld = [], []
    for order, part, _ in triple:
        reply = (site_work.validate if part == "val" else site_work.test)(site, order, state)
        counts = reply.val if part == "val" else reply.test
        if reply.withheld is not None:
            withheld.append(reply.withheld)
        else:
            released.append(np.asarray(counts.neg) + 1j * np.asarray(counts.pos))
    if len(released) < 3:
        return withheld, None
    neg = np.minimum.reduce([r.real for r in released])
    pos = np.minimum.reduce([r.imag for r in released])
    return withheld, neg + 1j * pos


def test_three_intersecting_score_sets_single_out_no_subject(cache, tmp_path, monkeypatch):
    """Attack 4: under a policy that lets the coordinator choose the fold count (5 or 21)
    and the split seed, three score sets the pairwise guard admits meet in one subject:
    their counts under one model give its two frames' scores and its label. The guard on
    every intersection and difference withholds one of them."""
    policy = SitePolicy(ccv_folds=(5, 21), split_seed=None, max_released_sets=1000)
    site = open_site(cache, tmp_path / "on", policy)
    triple = three_meeting_in_one(score_sets(site, (5, 21)))
    (target,) = triple[0][2] & triple[1][2] & triple[2][2]
    state = linear(np.eye(len(FEATURES))[0] * 0.05, -6.0)
    withheld, common = intersect(site, state, triple)
    assert common is None and withheld and all(w.rule == "min_difference" for w in withheld)
    monkeypatch.setattr(site_ledger.ReleaseLedger, "problem", pairwise_only)
    off = open_site(cache, tmp_path / "off", policy)
    withheld, common = intersect(off, state, triple)
    assert not withheld
    frames = [f for f in off.frames if f.subject == target]
    assert int(common.real.sum() + common.imag.sum()) == len(frames)  # that subject alone
    assert int(common.imag.sum() > 0) == frames[0].entry.label  # and its label


def test_one_set_is_scored_under_at_most_the_budgets_models(cache, tmp_path):
    """Attack 4, the other half: one validation set scored under ever more models (each
    one more query on the same subjects). The policy's budget withholds the counts past
    it; a model it was scored under before costs nothing. Without a budget (the defence
    off) every model's counts leave."""
    run = measures_run("ccv")
    order = Order(run=run, fold=0)
    models = [linear(np.eye(len(FEATURES))[j] * 0.05, -6.0) for j in range(5)]
    site = open_site(cache, tmp_path / "on", SitePolicy(max_models_per_set=3))
    replies = [site_work.validate(site, order, m) for m in models]
    assert [r.withheld is None for r in replies] == [True, True, True, False, False]
    assert replies[3].withheld.rule == "max_models_per_set"
    assert site_work.validate(site, order, models[1]).withheld is None  # seen before
    off = open_site(cache, tmp_path / "off", SitePolicy(max_models_per_set=10_000))
    assert all(site_work.validate(off, order, m).withheld is None for m in models)


# -- 6. differential privacy the coordinator cannot undo ---------------------------------
def released(sites, run, state, rnd: int = 1) -> np.ndarray:
    """Each site's released coefficients and intercept (clipped update plus its noise)."""
    order = Order(run=run, fold=0, server_round=rnd)
    out = []
    for site in sites:
        arrays = site_work.train(site, order, state).arrays.to_torch_state_dict()
        out.append(np.concatenate([arrays["coef"].numpy(), arrays["intercept"].numpy()]))
    return np.array(out)


def regenerated_noise(run, state, rnd: int = 1) -> np.ndarray:
    """The noise as a coordinator regenerates it from all that the request carries (the
    run's settings, fold, round and the model it sent), without the site's secret."""
    context = (short_digest(run.model_dump_json()), 0, rnd, state_digest(state))
    zeros = {"coef": torch.zeros(len(FEATURES), dtype=torch.float64),
             "intercept": torch.zeros(1, dtype=torch.float64)}
    noise = add_noise(zeros, ["coef", "intercept"], run.dp_noise * run.dp_clip,
                      secret_rng(b"", "dp", *context))
    return np.concatenate([noise["coef"].numpy(), noise["intercept"].numpy()])


def known_to_the_coordinator(secret: bytes, *context):
    """The defence off: the site's noise keyed by the request alone (before #27: seeded
    from the run seed, fold and round every request carries)."""
    return secret_rng(b"", *context)


def test_the_coordinator_cannot_remove_the_sites_dp_noise(tmp_path, monkeypatch):
    """Attack 6: the coordinator regenerates the sites' noise from what its request carries
    and subtracts it from their updates. With noise keyed by the request alone it gets the
    clean clipped updates to 1e-12; with the sites' secrets it is off by about the noise's
    size. A site that requires DP refuses a run without it; the measures model runs
    privately (its coefficients and intercept clipped and noised)."""
    caches = [write_measures_table(write_site_cache(tmp_path / n, n, 8, 8, seed=i), seed=i)
              for i, n in enumerate(("Alpha", "Bravo", "Charlie"))]
    sites = [open_site(c, tmp_path / f"site{i}", SitePolicy(), secret=i + 1)
             for i, c in enumerate(caches)]
    run = RunConfig(model="measures", profile="smoke", centres=("Alpha", "Bravo", "Charlie"),
                    dp_clip=0.5, dp_noise=1.0, min_subjects=5)
    state = mm.initial_state(np.full(len(FEATURES), 50.0), np.full(len(FEATURES), 30.0))
    clean = released(sites, run.model_copy(update={"dp_noise": 0.0}), state)
    guess = released(sites, run, state) - regenerated_noise(run, state)
    rms = np.sqrt(np.mean((guess - clean) ** 2, axis=1))
    assert (rms > 0.5 * run.dp_noise * run.dp_clip).all()  # no site's update recovered
    # the defence off: the same attack recovers every site's clean update
    monkeypatch.setattr(site_work, "secret_rng", known_to_the_coordinator)
    guess = released(sites, run, state, rnd=2) - regenerated_noise(run, state, rnd=2)
    assert np.abs(guess - released(sites, run.model_copy(update={"dp_noise": 0.0}), state,
                                   rnd=2)).max() < 1e-12
    # a site that requires DP refuses a run without it, or weaker, and takes one as strong
    strict = open_site(caches[0], tmp_path / "strict", SitePolicy(require_dp=True))
    for weaker in ({"dp_clip": 0.0}, {"dp_clip": 2.0}, {"dp_noise": 0.5}):
        with pytest.raises(PolicyRefusal, match="differential_privacy"):
            site_work.train(strict, Order(run=run.model_copy(update=weaker), fold=0,
                                          server_round=1), state)
    assert site_work.train(strict, Order(run=run, fold=0, server_round=1),
                           state).dp_epsilon > 0

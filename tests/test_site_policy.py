"""The hospital's release policy and differencing guard against the attacks they exist for:
a coordinator varying split seed and fold to solve for one subject, requests for splits
of one or two subjects, and two releases one swapped subject apart; and the paper's
protocols, which pass the default policy by design."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
from cache_factory import write_site_cache

from fedcmr.client.site import work as site_work
from fedcmr.client.site.ledger import ReleaseLedger
from fedcmr.client.site.policy import PolicyRefusal, SitePolicy
from fedcmr.common.cache_format import FrameEntry
from fedcmr.common.learning.data import CachedFrame
from fedcmr.common.learning.harmonise import Harmoniser
from fedcmr.common.model import build_model
from fedcmr.common.protocol import Order
from fedcmr.common.run_config import RunConfig
from fedcmr.support.flower_env import tool

#: Table 1 of the paper: NOR, HCM per centre.
REPO = Path(__file__).resolve().parent.parent
TABLE_1 = {"Vall d'Hebron": (21, 25), "Sagrada Familia": (33, 37), "SantPau": (14, 10),
           "ACDC": (20, 20)}
#: No limits at all: what the site released before this issue.
OPEN = SitePolicy(min_subjects=1, min_eval_subjects=1, min_difference=1,
                  max_released_sets=10_000, ccv_folds=tuple(range(1, 30)), split_seed=None)


@pytest.fixture(scope="module")
def santpau(tmp_path_factory):
    """A SantPau-sized site (14 NOR, 10 HCM) of real frames."""
    root = tmp_path_factory.mktemp("santpau")
    return write_site_cache(root / "cache", "SantPau", *TABLE_1["SantPau"], seed=3)


def open_site(cache, out, policy: SitePolicy) -> site_work.Site:
    return site_work.Site.open("SantPau", [cache], out, policy)


def order(fold: int = 0, **run) -> Order:
    return Order(run=RunConfig(profile="smoke", centres=("SantPau",), **run), fold=fold)


def differencing_attack(site: site_work.Site) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """200 histogram queries varying split seed and fold (each over 17 subjects, past
    min-subjects 5): the inclusion matrix and landmark sums of what the site released."""
    subjects = sorted({f.subject for f in site.frames})
    rows, sums, refusals = [], [], []
    for seed in range(40):
        for fold in range(5):
            query = order(fold, split_seed=seed)
            reply = site_work.histogram_summary(site, query)
            if reply.summary is None:
                refusals.append(reply.refused)
                continue
            train = {f.subject for f in site.parts(query)["train"]}
            rows.append([s in train for s in subjects])
            sums.append(reply.summary.landmark_sum)
    return np.asarray(rows, float).reshape(-1, len(subjects)), np.asarray(sums), refusals


def isolable(matrix: np.ndarray, index: int) -> bool:
    """Whether some linear combination of the released sets is one subject alone."""
    target = np.eye(matrix.shape[1])[index]
    if not len(matrix):
        return False
    y = np.linalg.lstsq(matrix.T, target, rcond=None)[0]
    return bool(np.linalg.norm(matrix.T @ y - target) < 1e-6)


def test_without_the_policy_the_attack_recovers_one_subject_exactly(santpau, tmp_path):
    """The attack as filed: with no limits, 200 seed/fold queries have full rank and give
    back one planted subject's landmark vector to rounding error."""
    site = open_site(santpau, tmp_path, OPEN)
    matrix, sums, refusals = differencing_attack(site)
    assert not refusals and np.linalg.matrix_rank(matrix) == matrix.shape[1]
    solved = np.linalg.lstsq(matrix, sums, rcond=None)[0]
    planted = "SAN007"
    frames = [f for f in site.frames if f.subject == planted]
    truth = Harmoniser("structures").summary(frames, 1).landmark_sum
    subjects = sorted({f.subject for f in site.frames})
    assert np.abs(solved[subjects.index(planted)] - truth).max() < 1e-6


def test_the_default_policy_refuses_the_attack_and_no_subject_can_be_isolated(santpau,
                                                                             tmp_path):
    site = open_site(santpau, tmp_path, SitePolicy())
    matrix, _, refusals = differencing_attack(site)
    assert len(matrix) == 5  # the five folds of the site's own split seed, nothing else
    assert len(refusals) == 195
    assert all("(split_seed): this site splits with its own seed 0" in str(r) for r in refusals)
    assert not any(isolable(matrix, i) for i in range(matrix.shape[1]))


def test_an_unpinned_seed_is_still_bounded_by_the_guard(santpau, tmp_path):
    """A site that lets the coordinator choose the split seed: the guard stops at
    max_released_sets, and the sets it let out isolate no subject."""
    site = open_site(santpau, tmp_path, SitePolicy(split_seed=None))
    matrix, _, refusals = differencing_attack(site)
    assert len(matrix) == SitePolicy().max_released_sets
    assert all("(max_released_sets)" in str(r) or "(min_difference)" in str(r)
               for r in refusals)
    assert not any(isolable(matrix, i) for i in range(matrix.shape[1]))


def test_the_guard_remembers_across_runs_and_refuses_a_swapped_subject(tmp_path):
    """LCO's old split released train sets one swapped subject apart: their difference is
    about two subjects. The second is refused, also by a new process reading the file."""
    policy = SitePolicy()
    ids = [f"S{i:02d}" for i in range(20)]
    ReleaseLedger(tmp_path / "ledger.json", policy).release("train", ids[:17], "run 1")
    swapped = ids[:16] + ids[17:18]
    later = ReleaseLedger(tmp_path / "ledger.json", policy)  # another run, another process
    with pytest.raises(PolicyRefusal, match=r"\(min_difference\): .* by 2 subject"):
        later.release("train", swapped, "run 2")
    later.release("train", list(reversed(ids[:17])), "run 2, same set")  # equal: allowed
    later.release("scores", swapped, "another kind of aggregate")
    unguarded = ReleaseLedger(tmp_path / "other.json", OPEN)
    unguarded.release("train", ids[:17], "run 1")
    unguarded.release("train", swapped, "run 2")  # what the guard prevents


def test_small_split_requests_are_refused_or_withheld(santpau, tmp_path):
    """14 CCV folds (test splits of 1-2 subjects) are refused by rule; a validation split
    of 1 NOR + 1 HCM (SantPau's under the paper's split) is withheld, and so are test counts
    of a split below min_eval_subjects, while the request itself is answered."""
    site = open_site(santpau, tmp_path / "default", SitePolicy())
    fourteen = order(0, n_folds_ccv=14)
    reply = site_work.histogram_summary(site, fourteen)
    assert reply.summary is None and "(ccv_folds): 14 CCV folds asked" in str(reply.refused)
    state = build_model("none", seed=0, quiet=True)[0].state_dict()
    with pytest.raises(PolicyRefusal, match="ccv_folds"):
        site_work.test(site, fourteen, state)
    val = site_work.validate(site, order(0), state)
    assert len({f.subject for f in site.parts(order(0))["val"]}) == 2
    assert val.val.examples == 0 and "(min_eval_subjects): fold 0 validation counts would come " \
        "from 2 subject(s); the minimum is 4" in str(val.withheld)
    many_folds = open_site(santpau, tmp_path / "folds", SitePolicy(ccv_folds=(5, 14)))
    test = site_work.test(many_folds, fourteen, state)
    assert test.test is None and "(min_eval_subjects)" in str(test.withheld)
    assert (many_folds.out_dir / "fold_0" / "predictions.csv").exists()  # kept at the site


def cohort_site(centre: str, tmp_path) -> site_work.Site:
    """A Table 1-sized site of frame records (splits and releases need no pixels)."""
    nor, hcm = TABLE_1[centre]
    empty = np.zeros((1, 1, 1), np.float32)
    frames = [CachedFrame(FrameEntry(subject=f"{centre[:3]}{i:03d}", centre=centre,
                                     vendor="v", label=int(i >= nor), phase=phase, file="x",
                                     key="k"), empty, empty.astype(np.uint8))
              for i in range(nor + hcm) for phase in ("ED", "ES")]
    return site_work.Site(name=centre, frames=frames, out_dir=tmp_path / centre)


def test_the_papers_protocols_pass_the_default_policy_by_design(tmp_path):
    """Every release of the paper's CCV (5 folds) and LCO (4 folds), over several network
    seeds, at each Table 1 centre on the default policy and one ledger per site: no
    training aggregate is refused, no test count withheld; validation counts are withheld
    only at SantPau, whose validation split is 1 NOR + 1 HCM."""
    withheld: dict[str, set[str]] = {}
    for centre in TABLE_1:
        site = cohort_site(centre, tmp_path)
        for protocol, seed in [(p, s) for p in ("ccv", "lco") for s in range(3)]:
            run = RunConfig(protocol=protocol, seed=seed, centres=tuple(sorted(TABLE_1)))
            for fold in run.fold_list():
                gate = site_work.Gate.admit(site, Order(run=run, fold=fold))
                if run.test_centre(fold) != centre:
                    gate.training_aggregate(site.policy.histogram_floor(run), "train")
                    if why := gate.withheld("val", f"{protocol}-{seed}-{fold}"):
                        withheld.setdefault(centre, set()).add(str(why).split(":")[0])
                assert gate.withheld("test", f"{protocol}-{seed}-{fold}") is None, (
                    centre, fold)
    assert withheld == {"SantPau": {"refused by the site's policy (min_eval_subjects)"}}


def test_policy_files_and_rules_are_named(tmp_path):
    bad = tmp_path / "policy.toml"
    bad.write_text("min_subjects = 0\n")
    with pytest.raises(ValueError, match=r"policy.toml: site policy field 'min_subjects'"):
        SitePolicy.load(bad)
    bad.write_text("min_subject = 3\n")
    with pytest.raises(ValueError, match="field 'min_subject': Extra inputs"):
        SitePolicy.load(bad)
    strict = SitePolicy(protocols=("ccv",))
    with pytest.raises(PolicyRefusal, match=r"\(protocols\): protocol 'lco'"):
        strict.admit(RunConfig(protocol="lco"))
    with pytest.raises(PolicyRefusal, match=r"\(val_fractions\): validation fraction 0.3"):
        strict.admit(RunConfig(val_fraction=0.3))
    bad.write_text('split_seed = "any"\n')
    assert SitePolicy.load(bad).split_seed is None
    assert SitePolicy().histogram_floor(RunConfig(min_subjects=8)) == 8  # only tightened
    assert SitePolicy().histogram_floor(RunConfig(min_subjects=2)) == 5


@pytest.mark.parametrize(("flags", "said"), [
    (["--auth-key", "{key}"], "--auth-key without --root-certificates"),
    (["--root-certificates", "{tmp}/missing-ca.crt"], "missing-ca.crt: no such file"),
    (["--policy", "{tmp}/missing.toml"], "missing.toml: cannot read the site policy"),
])
def test_client_security_settings_fail_closed(tmp_path, flags, said):
    """Settings that would not protect what the hospital thinks are refused before
    anything connects (exit 2), with what is missing."""
    cache = write_site_cache(tmp_path / "cache", "Alpha", 2, 2)
    key = tmp_path / "site.key"
    key.write_text("not used")
    args = [f.format(key=key, tmp=tmp_path) for f in flags]
    result = subprocess.run([tool("fedcmr"), "client", "--site", "Alpha", "--data", str(cache),
                             "--superlink", "127.0.0.1:9", "--out", str(tmp_path / "out"),
                             *args], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and said in result.stderr, result.stderr


def test_a_superset_one_subject_larger_is_not_taken_for_the_set_released(tmp_path):
    """A set that contains a released one and one subject more is a new set: refused; a
    score set one subject smaller leaves a region of one subject: withheld."""
    ledger = ReleaseLedger(tmp_path / "ledger.json", SitePolicy())
    first = [f"s{i}" for i in range(20)]
    ledger.release("train", first, "fold 0")
    ledger.release("train", list(reversed(first)), "again")  # equal: no new release
    with pytest.raises(PolicyRefusal, match="min_difference"):
        ledger.release("train", [*first, "s20"], "one more")
    ledger.release("scores", first, "counts")
    with pytest.raises(PolicyRefusal, match="min_difference"):
        ledger.release("scores", first[:-1], "one fewer")


@pytest.mark.parametrize("budget", [3, 300])  # above 256 too: Python's small-int cache
def test_the_set_and_model_budgets_stop_exactly_at_the_policy(tmp_path, budget):
    policy = SitePolicy(min_difference=1, max_released_sets=budget,
                        max_models_per_set=budget)
    ledger = ReleaseLedger(tmp_path / "ledger.json", policy)
    for i in range(budget):
        ledger.release("train", [f"s{i}"], f"set {i}")
        ledger.release("scores", ["a", "b"], "counts", model=f"m{i}")
    with pytest.raises(PolicyRefusal, match="max_released_sets"):
        ledger.release("train", ["new"], "one set more")
    with pytest.raises(PolicyRefusal, match="max_models_per_set"):
        ledger.release("scores", ["a", "b"], "counts", model="one model more")
    ledger.release("scores", ["a", "b"], "counts", model="m0")  # one it was scored under


def test_the_model_budget_covers_the_papers_grid():
    """3 strategies x 5 seeds x at most 100 rounds x 3 LCO folds on one validation set."""
    assert SitePolicy().max_models_per_set >= 3 * 5 * 100 * 3


def test_the_state_folder_is_per_site_under_the_sites_own_variables(monkeypatch, tmp_path):
    from fedcmr.client.site.policy import STATE_ENV, state_default

    monkeypatch.setenv(STATE_ENV, str(tmp_path / "state"))
    assert state_default("Vall d'Hebron") == tmp_path / "state" / "vall-d-hebron"
    assert state_default("!!!") == tmp_path / "state" / "site"
    monkeypatch.delenv(STATE_ENV)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert state_default("ACDC") == tmp_path / "xdg" / "fedcmr" / "acdc"
    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert state_default("ACDC") == tmp_path / "home" / ".local" / "state" / "fedcmr" / "acdc"


def test_score_bins_are_whole_multiples_of_the_grid():
    assert SitePolicy(score_bin_width=0.1).score_bin_width == 0.1
    assert SitePolicy(score_bin_width=0.004).score_bin_width == 0.004
    for bad in (0.003, 0.0025, 0.1001):
        with pytest.raises(ValueError, match="multiple of the score grid"):
            SitePolicy(score_bin_width=bad)


def test_a_site_requiring_dp_takes_its_own_limits_and_refuses_past_them():
    policy = SitePolicy(require_dp=True, dp_max_clip=1.0, dp_min_noise=1.0)
    for ok in ({"dp_clip": 1.0, "dp_noise": 1.0}, {"dp_clip": 0.2, "dp_noise": 3.0}):
        policy.admit(RunConfig(**ok))
    for weak, said in (({"dp_clip": 0.0}, "the run has none"),
                       ({"dp_clip": 1.01, "dp_noise": 1.0}, "weaker"),
                       ({"dp_clip": 1.0, "dp_noise": 0.99}, "weaker")):
        with pytest.raises(PolicyRefusal, match=said):
            policy.admit(RunConfig(**weak))
    SitePolicy().admit(RunConfig(dp_clip=0.0))  # not required: a run without DP is fine
    lines = " ".join(policy.lines())
    assert "differential privacy required (clip <= 1, noise >= 1)" in lines
    assert "as the run asks" in " ".join(SitePolicy().lines())
    assert "and 2 approved" in " ".join(SitePolicy(approved_bundles=("a", "b")).lines())
    assert "approved" not in " ".join(SitePolicy().lines()).split("app bundles")[1]


def test_the_policy_table_in_the_docs_gives_the_models_defaults():
    """docs/security.md's table of policy fields states each default as the code has it."""
    import re

    table = {}
    for line in (REPO / "docs" / "security.md").read_text().splitlines():
        cells = [c.strip() for c in line.split("|")[1:-1]]
        if len(cells) == 3 and cells[0].startswith("`"):
            names = re.findall(r"`(\w+)`", cells[0])
            values = [v.strip() for v in cells[1].split(",")] if len(names) > 1 else [cells[1]]
            table.update(zip(names, values, strict=True))
    policy = SitePolicy()
    for name in SitePolicy.model_fields:
        if name == "ledger":
            continue
        value, said = getattr(policy, name), table[name]
        if isinstance(value, bool):
            assert said == ("on" if value else "off"), name
        elif value is None:
            assert said == "any installed", name
        elif isinstance(value, tuple):
            assert said == (", ".join(map(str, value)) or "none"), name
        else:
            assert float(said) == value, name


def test_a_policy_file_is_toml_unless_named_json_and_found_by_its_variable(tmp_path,
                                                                           monkeypatch):
    from fedcmr.client.site.policy import POLICY_ENV, policy_default

    for name in ("policy.toml", "policy.conf", "site.policy"):
        (tmp_path / name).write_text("min_subjects = 7\n")
        assert SitePolicy.load(tmp_path / name).min_subjects == 7, name
    (tmp_path / "policy.json").write_text('{"min_subjects": 8}')
    assert SitePolicy.load(tmp_path / "policy.json").min_subjects == 8
    monkeypatch.setenv(POLICY_ENV, str(tmp_path / "policy.json"))
    assert policy_default() == tmp_path / "policy.json"
    assert SitePolicy.load(None).min_subjects == 8
    monkeypatch.delenv(POLICY_ENV)
    assert policy_default() is None and SitePolicy.load(None) == SitePolicy()


def test_a_reset_says_whether_there_was_anything_to_forget(tmp_path):
    from fedcmr.client.site.ledger import digest_path, reset_ledger

    path = tmp_path / "released-sets.json"
    assert reset_ledger(path) is False
    ReleaseLedger(path, SitePolicy()).release("train", ["a", "b"], "fold 0")
    assert path.exists() and digest_path(path).exists()
    assert reset_ledger(path) is True
    assert not path.exists() and not digest_path(path).exists()

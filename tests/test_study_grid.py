"""The study's grid: configs, cells and their keys, --only, and claims between processes."""

from __future__ import annotations

import multiprocessing
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from fedcmr.lab.study.cells import expand, parse_only
from fedcmr.lab.study.claims import holder, is_claimed, try_claim
from fedcmr.lab.study.config import StudyConfig

ROOT = Path(__file__).parent.parent
SITES = {name: (name,) for name in ("ACDC", "Sagrada Familia", "SantPau", "Vall d'Hebron")}


def load(tmp_path: Path, text: str) -> StudyConfig:
    path = tmp_path / "study.toml"
    path.write_text(textwrap.dedent(text))
    return StudyConfig.load(path)


def cells_of(config: StudyConfig, data: str = "d1"):
    return expand(config, SITES, data)


def test_shipped_configs_hold_the_papers_grid():
    paper = cells_of(StudyConfig.load(ROOT / "studies" / "paper.toml"))
    # Table 2: 2 frameworks x 3 priors; Table 3 and 4: 3 frameworks x 4 augmentations each,
    # sharing Table 2's CDS/FL structures-none cells under CCV; ED-only: 1 configuration.
    configs = {(c.framework, c.prior, c.augment, c.protocol, c.phases) for c in paper}
    assert len(configs) == 6 + (12 - 2) + 12 + 1
    assert {c.seed for c in paper} == {0, 1, 2, 3, 4}
    per_config = {k: sum((c.framework, c.prior, c.augment, c.protocol, c.phases) == k
                         for c in paper) for k in configs}
    # one cell per fold and seed: 5 CCV folds, 4 LCO folds (one per centre)
    assert {n for k, n in per_config.items() if k[3] == "ccv"} == {25}
    assert {n for k, n in per_config.items() if k[3] == "lco"} == {20}
    small = cells_of(StudyConfig.load(ROOT / "studies" / "small.toml"))
    assert {c.framework for c in small} == {"cds", "fedavg", "equal-vote", "tempered"}
    assert {c.prior for c in small} == {"baseline", "masked", "structures"}
    assert {c.augment for c in small} == {"none", "shape-intensity"}
    # two seeds where the report compares spreads over seeds (Table 3's set-ups)
    assert {c.seed for c in small if c.prior == "structures" and c.protocol == "ccv"
            and c.framework != "tempered"} == {0, 1}
    assert {c.protocol for c in small} == {"ccv", "lco"}
    assert {c.phases for c in small} == {("ED", "ES"), ("ED",)}
    assert all(c.folds == (0, 1, 2, 3) for c in small if c.protocol == "lco")


def test_blocks_take_the_axes_table_and_duplicates_run_once(tmp_path):
    config = load(tmp_path, """
        profile = "smoke"
        [axes]
        seed = [3, 4]
        folds = [1]
        [[block]]
        framework = ["cds", "fedavg"]
        [[block]]
        framework = ["fedavg", "equal-vote"]
        seed = [4]
    """)
    cells = cells_of(config)
    assert sorted((c.framework, c.seed) for c in cells) == [
        ("cds", 3), ("cds", 4), ("equal-vote", 4), ("fedavg", 3), ("fedavg", 4)]
    assert all(c.folds == (1,) and c.profile == "smoke" for c in cells)
    assert len({c.key for c in cells}) == len(cells)


def test_a_changed_setting_changes_only_the_keys_it_touches(tmp_path):
    base = """
        [[block]]
        framework = ["cds", "fedavg"]
        augment = ["none", "basic"]
    """
    before = {c.key for c in cells_of(load(tmp_path, base))}
    widened = {c.key for c in cells_of(load(tmp_path, base.replace('"basic"',
                                                                    '"basic", "shape"')))}
    assert before < widened and len(widened - before) == 2 * 5
    # the data or the profile shape every result: every key changes
    assert not before & {c.key for c in cells_of(load(tmp_path, base), data="d2")}
    assert not before & {c.key for c in cells_of(load(tmp_path, 'profile = "smoke"\n' + base))}


def test_tempered_cells_per_alpha_and_fixed_alphas(tmp_path):
    cells = cells_of(load(tmp_path, """
        [[block]]
        framework = ["fedavg", "equal-vote", "tempered"]
        vote_alpha = [0.25, 0.75]
        folds = [0]
    """))
    alphas = sorted((c.framework, c.vote_alpha) for c in cells)
    assert alphas == [("equal-vote", 0.0), ("fedavg", 1.0), ("tempered", 0.25),
                      ("tempered", 0.75)]


def test_bad_configs_name_the_file_and_the_key(tmp_path):
    with pytest.raises(ValueError, match=r"study.toml: block.0.prior.0"):
        load(tmp_path, '[[block]]\nprior = ["best"]\n')
    with pytest.raises(ValueError, match="study.toml: not valid TOML"):
        load(tmp_path, "name = \n")
    with pytest.raises(ValueError, match="folds \\[7\\] out of range"):
        cells_of(load(tmp_path, "[axes]\nfolds = [7]\n"))
    with pytest.raises(FileNotFoundError, match="no such study config"):
        StudyConfig.load(tmp_path / "missing.toml")


def test_a_sites_axis_chooses_the_hospitals_that_take_part(tmp_path):
    cells = cells_of(load(tmp_path, """
        [[block]]
        framework = ["fedavg"]
        protocol = ["lco"]
        sites = [[], ["SantPau", "Vall d'Hebron", "Sagrada Familia"]]
    """))
    by_sites = {c.sites: c for c in cells}
    assert set(by_sites) == {tuple(SITES), ("Sagrada Familia", "SantPau", "Vall d'Hebron")}
    # leave-centre-out over three sites has three folds, over four sites four
    assert sorted(len([c for c in cells if c.sites == s]) for s in by_sites) == [3, 4]
    assert all(c.centres == tuple(sorted(c.sites)) for c in cells)
    with pytest.raises(ValueError, match=r"sites \['Bern'\] are not the study's"):
        cells_of(load(tmp_path, '[[block]]\nsites = [["Bern"]]\n'))


def test_only_filters_cells(tmp_path):
    cells = cells_of(load(tmp_path, """
        [axes]
        seed = [0, 1, 2]
        [[block]]
        framework = ["cds", "fedavg"]
        protocol = ["ccv", "lco"]
    """))
    only = parse_only(["framework=cds", "seed=0,2", "protocol=lco", "folds=3"])
    chosen = [c for c in cells if c.matches(only)]
    assert sorted((c.framework, c.seed, c.protocol, c.folds) for c in chosen) == [
        ("cds", 0, "lco", (3,)), ("cds", 2, "lco", (3,))]
    with pytest.raises(ValueError, match="--only 'colour=red'"):
        parse_only(["colour=red"])


def _hold(cell: Path, ready, release) -> None:
    claim = try_claim(cell)
    ready.set()
    release.wait(30)
    if claim:
        claim.release()


def test_a_claim_is_exclusive_and_freed_when_its_holder_dies(tmp_path):
    cell = tmp_path / "cell"
    ctx = multiprocessing.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    other = ctx.Process(target=_hold, args=(cell, ready, release))
    other.start()
    assert ready.wait(30)
    assert is_claimed(cell) and try_claim(cell) is None
    assert holder(cell)["pid"] == other.pid
    release.set()
    other.join(30)
    claim = try_claim(cell)
    assert claim is not None and holder(cell)["pid"] != other.pid
    claim.release()
    # SIGKILL: the kernel frees the lock with the process, no stale claim is left
    killed = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        from pathlib import Path
        from fedcmr.lab.study.claims import try_claim
        claim = try_claim(Path({str(cell)!r}))
        print("held", flush=True)
        import time; time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True)
    assert killed.stdout.readline().strip() == "held"
    assert is_claimed(cell)
    killed.kill()
    killed.wait()
    deadline = time.monotonic() + 5
    while is_claimed(cell) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert try_claim(cell) is not None

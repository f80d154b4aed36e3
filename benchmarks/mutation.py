"""Mutation testing of the core modules with cosmic-ray (`pip install -e '.[mutation]'`):
each module's code is mutated one change at a time (operators, comparisons, constants,
booleans, loops...) and its fast tests run against each mutant; a mutant the tests do not
fail "survived". Cosmic-ray makes hundreds of mutants per module; so that a run fits an
afternoon on 2 cores, a fixed-seed sample of SAMPLE per module is run (the seed and the
sample are recorded; the same commit samples the same mutants).

    python benchmarks/mutation.py [MODULE ...] [--sample N]
    python benchmarks/mutation.py --relabel   # the reasons file's reasons on the survivors

One module at a time: a mutant is written into the working tree (cosmic-ray restores the
file afterwards), so nothing else may run from this checkout meanwhile.

Writes benchmarks/results/mutation.json: per module {"killed", "total", "survived": [each
surviving mutant: where, the operator, the diff, and its reason from
benchmarks/mutation_reasons.json: equivalent, or the test to write]}, and the total.
"""

from __future__ import annotations

import argparse
import ast
import json
import random
import subprocess
import sys
import tempfile
from pathlib import Path

from fedcmr.common.atomic import write_json

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "mutation.json"
REASONS = ROOT / "benchmarks" / "mutation_reasons.json"
COSMIC_RAY = str(Path(sys.executable).parent / "cosmic-ray")
PYTEST = f"{sys.executable} -m pytest -x -q -p no:cacheprovider -o addopts= --no-header"
#: module -> the fast tests that should kill its mutants.
MODULES = {
    "server/update_checks.py": "tests/test_update_checks.py",
    "client/site/policy.py": "tests/test_site_policy.py tests/test_release_attacks.py "
                             "tests/test_attacks.py::"
                             "test_split_parameters_are_checked_under_every_protocol",
    "client/site/ledger.py": "tests/test_site_policy.py tests/test_release_attacks.py "
                             "tests/test_attacks.py::"
                             "test_a_site_restarted_with_another_out_still_remembers_what_it_"
                             "released tests/test_attacks.py::"
                             "test_a_missing_or_changed_ledger_stops_the_site_until_reset",
    "client/site/release.py": "tests/test_release.py tests/test_release_attacks.py "
                              "tests/test_site_work.py",
    "common/metrics.py": "tests/test_metrics.py",
    "common/nyul.py": "tests/test_nyul.py",
    "common/learning/split.py": "tests/test_splits.py tests/test_site_policy.py",
    # -k applies to every file named: here it leaves out only the private run's test
    "server/strategies.py": "tests/test_strategies.py tests/test_update_checks.py "
                            "tests/test_privacy.py -k 'not private_run'",
    "common/learning/augment.py": "tests/test_dataset_augment.py",
    "common/learning/privacy.py": "tests/test_privacy.py tests/test_release_attacks.py "
                                  "-k 'not private_run'",
    "common/update_codec.py": "tests/test_update_codec.py",
    "common/learning/measures_model.py": "tests/test_measures_model.py "
                                         "tests/test_release_attacks.py -m 'not slow'",
}
SAMPLE = 25
SEED = 27
TIMEOUT = 300.0


def config(module: str, tests: str) -> str:
    return (f'[cosmic-ray]\nmodule-path = "{module}"\ntimeout = {TIMEOUT}\n'
            f'excluded-modules = []\ntest-command = "{PYTEST} {tests}"\n\n'
            '[cosmic-ray.distributor]\nname = "local"\n')


def annotation_spans(module: Path) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """Where the module's type annotations are: with `from __future__ import annotations`
    they are never evaluated, so a mutant there (`str | None` -> `str + None`) is
    equivalent by construction and is not sampled."""
    spans = []
    for node in ast.walk(ast.parse(module.read_text())):
        hints = []
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            hints.append(node.returns)
        elif isinstance(node, (ast.arg, ast.AnnAssign)):
            hints.append(node.annotation)
        spans += [((h.lineno, h.col_offset), (h.end_lineno, h.end_col_offset))
                  for h in hints if h is not None]
    return spans


def sample_work(db_path: Path, module: Path, n: int) -> int:
    """Keep a fixed-seed sample of n work items (none inside a type annotation) in the
    session; the number of candidates there were."""
    from cosmic_ray.work_db import MutationSpecStorage, WorkDB, WorkItemStorage

    spans = annotation_spans(module)
    db = WorkDB(str(db_path), WorkDB.Mode.open)
    try:
        with db._session_maker.begin() as session:
            rows = session.query(MutationSpecStorage).all()
            specs = {s.job_id: (s.start_pos_row, s.start_pos_col) for s in rows}
            # job ids are random: order by what the mutant is, so a seed picks the same ones
            order = {s.job_id: (s.operator_name, s.occurrence) for s in rows}
            ids = sorted((job for job, at in specs.items()
                          if not any(a <= at < b for a, b in spans)), key=order.__getitem__)
            keep = set(random.Random(SEED).sample(ids, min(n, len(ids))))
            drop = set(specs) - keep
            for job in drop:
                session.query(MutationSpecStorage).filter_by(job_id=job).delete()
                session.query(WorkItemStorage).filter_by(job_id=job).delete()
        return len(ids)
    finally:
        db.close()


def results(db_path: Path, reasons: dict) -> dict:
    from cosmic_ray.work_db import WorkDB
    from cosmic_ray.work_item import TestOutcome

    db = WorkDB(str(db_path), WorkDB.Mode.open)
    try:
        done = list(db.completed_work_items)
    finally:
        db.close()
    killed, survived, incompetent = 0, [], 0
    for item, result in done:
        if result.test_outcome == TestOutcome.INCOMPETENT:
            incompetent += 1  # the mutant does not even import: not counted
            continue
        if result.test_outcome == TestOutcome.KILLED:
            killed += 1
            continue
        spec = item.mutations[0]
        where = f"{spec.module_path}:{spec.start_pos[0]}"
        key = f"{where} {spec.operator_name} {spec.occurrence}"
        survived.append({"where": where, "operator": spec.operator_name,
                         "occurrence": spec.occurrence, "diff": (result.diff or "")[-600:],
                         "reason": reasons.get(key, "not yet judged")})
    return {"killed": killed, "total": killed + len(survived), "incompetent": incompetent,
            "survived": survived}


def run_module(module: str, sample: int, reasons: dict) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cfg, db = Path(tmp) / "cr.toml", Path(tmp) / "session.sqlite"
        cfg.write_text(config(module, MODULES[module]))
        subprocess.run([COSMIC_RAY, "init", str(cfg), str(db)], cwd=ROOT, check=True,
                       capture_output=True)
        made = sample_work(db, ROOT / module, sample)
        subprocess.run([COSMIC_RAY, "exec", str(cfg), str(db)], cwd=ROOT, check=True,
                       capture_output=True)
        out = results(db, reasons)
    out["candidates"] = made
    print(f"{module}: {out['killed']}/{out['total']} killed ({made} candidates, "
          f"{out['incompetent']} incompetent)", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", default=list(MODULES))
    parser.add_argument("--sample", type=int, default=SAMPLE)
    parser.add_argument("--relabel", action="store_true",
                        help="only put the reasons file's reasons on the results' survivors")
    args = parser.parse_args()
    reasons = json.loads(REASONS.read_text()) if REASONS.exists() else {}
    previous = json.loads(RESULTS.read_text()) if RESULTS.exists() else {"modules": {}}
    if args.relabel:
        for module in previous["modules"].values():
            for mutant in module["survived"]:
                key = f"{mutant['where']} {mutant['operator']} {mutant['occurrence']}"
                mutant["reason"] = reasons.get(key, "not yet judged")
        write_json(RESULTS, previous)
        return
    modules = dict(previous.get("modules", {}))
    for module in args.modules:  # written after each module: a long run keeps what it did
        modules[module] = run_module(module, args.sample, reasons)
        result = summary(modules, args.sample)
        write_json(RESULTS, result)
    print(f"all: {result['killed']}/{result['total']} killed ({result['score']:.1%}); "
          f"wrote {RESULTS}")


def summary(modules: dict, sample: int) -> dict:
    killed = sum(m["killed"] for m in modules.values())
    total = sum(m["total"] for m in modules.values())
    return {"tool": "cosmic-ray", "sample_per_module": sample, "seed": SEED,
            "modules": modules, "killed": killed, "total": total,
            "score": round(killed / total, 4) if total else None}


if __name__ == "__main__":
    main()

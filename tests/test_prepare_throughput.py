"""benchmarks/prepare_throughput.py: its measuring function runs the real `fedcmr prepare`
cold (a new cache each time) and its figures agree with the cache that run wrote."""

from __future__ import annotations

import importlib.util
import inspect
import json
import os
from pathlib import Path

import pytest
from mri_factory import write_acdc_patient

from fedcmr.lab import commands as lab_commands
from fedcmr.lab.study import cohort

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "prepare_throughput.py"
_spec = importlib.util.spec_from_file_location("prepare_throughput", SCRIPT)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)

TINY = ["--crop", "4,32,32"]  # the phantoms are 48 x 48 x 4 voxels at 2 x 2 x 8 mm


@pytest.fixture(scope="module")
def tiny_acdc(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny") / "acdc"
    for number, group in ((21, "HCM"), (61, "NOR")):
        write_acdc_patient(root, number, group)
    return root


def prepare_args(root: Path) -> list[str]:
    return ["--dataset", "acdc", "--root", str(root), *TINY]


def test_a_cold_run_is_measured_from_what_it_wrote(tiny_acdc, tmp_path):
    first = bench.measure_prepare("tiny", prepare_args(tiny_acdc), 1, tmp_path, max_wait_s=0)
    rows = bench.manifest_rows(Path(first["cache"]))
    assert first["frames"] == len(rows) == 4 and first["subjects"] == 2
    # every frame was computed in this run, its N4 included
    assert first["frames_computed"] == first["n4_stage_files"] == first["frames"]
    assert first["wall_s"] > 0 and first["cpu_s"] > 0
    assert first["cpu_s"] == pytest.approx(first["cpu_user_s"] + first["cpu_sys_s"], abs=2e-3)
    assert first["frames_per_min"] == pytest.approx(4 / first["wall_s"] * 60, rel=2e-3)
    assert first["per_core_divisor"] == 1 == min(1, len(os.sched_getaffinity(0)))
    assert first["frames_per_min_per_core"] == pytest.approx(first["frames_per_min"], rel=1e-6)
    assert first["frames_per_cpu_min"] == pytest.approx(4 / first["cpu_s"] * 60, rel=2e-3)
    assert first["max_rss_mb"] > 50  # the prepare process itself (Python, SimpleITK, numpy)
    assert first["command"][-2:] == ["--workers", "1"]
    assert set(first["load"]) == {"load1_first", "waited_s", "loadavg_1_5_15_at_start"}

    # a second run in the same work folder gets its own empty cache: nothing is reused
    second = bench.measure_prepare("tiny", prepare_args(tiny_acdc), 2, tmp_path, max_wait_s=0)
    assert second["cache"] != first["cache"]
    assert second["n4_stage_files"] == second["frames"] == 4
    divisor = min(2, len(os.sched_getaffinity(0)))
    assert second["per_core_divisor"] == divisor
    assert second["frames_per_min_per_core"] == pytest.approx(
        second["frames_per_min"] / divisor, rel=1e-3)

    speed = bench.speedups([second, first])["tiny"]
    assert (speed["from_workers"], speed["to_workers"]) == (1, 2)
    assert speed["speedup"] == pytest.approx(first["wall_s"] / second["wall_s"], rel=1e-2)
    assert speed["efficiency"] == pytest.approx(speed["speedup"] / divisor, rel=1e-2)


def test_a_failing_prepare_is_an_error_not_a_figure(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(RuntimeError, match="exited"):
        bench.measure_prepare("empty", prepare_args(tmp_path / "empty"), 1, tmp_path,
                              max_wait_s=0)


def test_a_run_that_reuses_a_stage_cache_is_refused(tiny_acdc, tmp_path, monkeypatch):
    first = bench.measure_prepare("tiny", prepare_args(tiny_acdc), 1, tmp_path, max_wait_s=0)
    # the same folder again, as a benchmark that forgot a fresh cache would do
    monkeypatch.setattr(bench.tempfile, "mkdtemp", lambda **_: str(Path(first["cache"]).parent))
    with pytest.raises(RuntimeError, match="0 of 4 frames computed"):
        bench.measure_prepare("tiny", prepare_args(tiny_acdc), 1, tmp_path, max_wait_s=0)


def test_demo_stages_run_from_one_stage_line_to_the_next():
    synth, prep, fed, beside = (m for _, m in bench.DEMO_STAGES[1:])
    stages = bench.demo_stages({synth: 4.0, prep: 30.0, fed: 100.0, beside: 350.0},
                               wall_s=400.0)
    assert stages == {"startup": 4.0, "synthesis": 26.0, "prepare": 70.0, "federation": 250.0,
                      "measures beside": 50.0}
    # a reused cohort logs no synthesis line: startup runs to the next stage that showed
    stages = bench.demo_stages({fed: 10.0}, wall_s=50.0)
    assert stages == {"startup": 10.0, "synthesis": None, "prepare": None, "federation": 40.0,
                      "measures beside": None}


def test_the_demo_stage_lines_are_the_ones_the_demo_logs():
    source = "".join(inspect.getsource(m) for m in (lab_commands, cohort))
    for _, marker in bench.DEMO_STAGES[1:]:
        assert marker in source, f"fedcmr demo no longer logs {marker!r}"


def test_a_run_without_inputs_keeps_the_sections_it_did_not_measure(tmp_path):
    out = tmp_path / "result.json"
    earlier = {"prepare": {"runs": [{"input": "acdc"}]},
               "readme_main_command": {"wall_s": 600.0}, "stale": 1}
    out.write_text(json.dumps(earlier))
    bench.main(["--inputs", "", "--out", str(out)])
    written = json.loads(out.read_text())
    assert written["prepare"] == earlier["prepare"]
    assert written["readme_main_command"] == earlier["readme_main_command"]
    assert "stale" not in written and written["machine"]["cpus"] == os.cpu_count()

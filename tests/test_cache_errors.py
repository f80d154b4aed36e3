"""A damaged prepared cache is refused when it is opened, with one line naming the damaged
file and the fix (re-run prepare, which recomputes it); never a bare zipfile error or a
traceback."""

from __future__ import annotations

import subprocess
import zipfile
from pathlib import Path

import pytest
from cache_factory import write_site_cache
from mri_factory import MNMS_HEADER, mnms_row, write_mnms_subject

from fedcmr.cli import main
from fedcmr.common.cache_format import MANIFEST, CacheError, check_frame, read_manifest
from fedcmr.common.learning.data import load_cache
from fedcmr.support.cli_options import EXIT_BAD_INPUT
from fedcmr.support.flower_env import tool


@pytest.fixture
def cache(tmp_path) -> Path:
    return write_site_cache(tmp_path / "cache", "Alpha", 2, 2)


def frame_file(cache: Path, index: int = 0) -> Path:
    return cache / read_manifest(cache)[index].file


def truncate(path: Path) -> Path:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def flip_image_byte(path: Path) -> Path:
    """One byte of image.npy's compressed data changed: the zip directory stays intact."""
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo("image.npy")
    data = bytearray(path.read_bytes())
    data[info.header_offset + 30 + len(info.filename) + info.compress_size // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    return path


def assert_names_the_fix(err: CacheError | str, path: Path, cache: Path) -> None:
    text = str(err)
    assert text.startswith(f"{path}: ") and "\n" not in text, text
    assert f"Fix: re-run `fedcmr prepare ... --out {cache}`" in text, text


def test_truncated_frame_is_refused_when_the_cache_is_opened(cache):
    victim = truncate(frame_file(cache, 1))
    with pytest.raises(CacheError, match="damaged cache file") as caught:
        load_cache([cache])
    assert_names_the_fix(caught.value, victim, cache)
    assert isinstance(caught.value, ValueError)


def test_a_federated_site_refuses_it_when_it_opens_its_data(cache, tmp_path):
    from fedcmr.client.site.work import Site  # what `describe` and every message call

    victim = truncate(frame_file(cache))
    with pytest.raises(CacheError) as caught:
        Site.open("Alpha", [cache], tmp_path / "out")
    assert_names_the_fix(caught.value, victim, cache)


def test_every_damaged_file_is_counted_in_the_one_error(cache):
    first, _ = truncate(frame_file(cache, 0)), truncate(frame_file(cache, 3))
    with pytest.raises(CacheError, match=r"and 1 more frame file\(s\)") as caught:
        load_cache([cache])
    assert_names_the_fix(caught.value, first, cache)


def test_damage_inside_the_data_is_named_when_it_is_read(cache):
    victim = flip_image_byte(frame_file(cache, 2))
    check_frame(victim)  # the cheap open-time check sees an intact zip directory
    with pytest.raises(CacheError, match="Bad CRC-32 for file 'image.npy'") as caught:
        load_cache([cache])
    assert_names_the_fix(caught.value, victim, cache)


def test_missing_frame_file_is_named(cache):
    victim = frame_file(cache, 1)
    victim.unlink()
    with pytest.raises(CacheError, match="cache file missing") as caught:
        load_cache([cache])
    assert_names_the_fix(caught.value, victim, cache)


def _drop_label_column(text: str) -> str:
    return "\n".join(",".join(f for i, f in enumerate(line.split(",")) if i != 3)
                     for line in text.splitlines()) + "\n"


@pytest.mark.parametrize(("damage", "said"), [
    (_drop_label_column, "manifest has no column label"),
    (lambda t: t + "ALP999,Alpha,test,not-a-label,ED,frames/x.npz,test,,,\n",
     "line 10: bad label 'not-a-label'"),
    (lambda t: t + "garbage\n", "line 10 has 1 fields, the header 10"),
    (lambda t: t + "a,b,c,0,ED,f,k,s,t,n,extra\n", "line 10 has 11 fields, the header 10"),
    (lambda t: t.replace(",ES,", ",XS,", 1), "bad phase 'XS'"),
])
def test_a_bad_manifest_is_named_with_its_line(cache, damage, said):
    manifest = cache / MANIFEST
    manifest.write_text(damage(manifest.read_text()))
    with pytest.raises(CacheError, match=said) as caught:
        load_cache([cache])
    assert_names_the_fix(caught.value, manifest, cache)


@pytest.mark.parametrize("damage", ["missing-frame", "bad-manifest"])
def test_centralized_exits_2_with_one_line(cache, tmp_path, caplog, damage):
    if damage == "missing-frame":
        frame_file(cache).unlink()
    else:
        (cache / MANIFEST).write_text("subject,centre\nA,B\n")
    assert main(["-q", "centralized", "--cache", str(cache), "--profile", "smoke",
                 "--out", str(tmp_path / "run")]) == EXIT_BAD_INPUT
    (line,) = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert "Fix: re-run `fedcmr prepare" in line and "\n" not in line


def test_centralized_command_on_a_truncated_frame_prints_one_line(cache, tmp_path):
    """End to end, as a user runs it."""
    victim = truncate(frame_file(cache, 1))
    done = subprocess.run([tool("fedcmr"), "-q", "centralized", "--cache", str(cache),
                           "--profile", "smoke", "--out", str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == EXIT_BAD_INPUT, done.stderr[-2000:]
    assert "Traceback" not in done.stderr + done.stdout
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert_names_the_fix(lines[0].removeprefix("ERROR fedcmr: "), victim, cache)


@pytest.mark.parametrize("damage", [truncate, flip_image_byte, Path.unlink])
def test_rerunning_prepare_repairs_the_cache(tmp_path, damage):
    from fedcmr.client.data.loaders.mnms import load_mnms
    from fedcmr.client.data.prep_config import N4Params, PrepConfig
    from fedcmr.client.data.prepare import run_prepare

    root, cache = tmp_path / "data", tmp_path / "cache"
    for code in ("S01", "S02"):
        write_mnms_subject(root, code)
    (root / "M&Ms dataset.csv").write_text(MNMS_HEADER + mnms_row("S01") + mnms_row("S02"))
    config = PrepConfig(n4=N4Params(enabled=False), crop=(4, 32, 32))
    run_prepare(load_mnms(root), config, cache, progress=False)
    damage(frame_file(cache, 1))
    with pytest.raises(CacheError):
        load_cache([cache])
    assert run_prepare(load_mnms(root), config, cache, progress=False).computed == 1
    assert len(load_cache([cache])) == 4

"""The study report (lab/study/report.py) on a synthetic study folder (study_factory.py):
every table, figure and finding, numbers equal to an independent recomputation, absent
tables named as absent, the harmonisation map on aggregates, and the HTML in a real browser
(headless Chromium)."""

from __future__ import annotations

import json
import os
import re
import time

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from study_factory import COHORT, Spec, write_study

from fedcmr.common import nyul
from fedcmr.common.results import read_predictions
from fedcmr.lab.study import layout
from fedcmr.lab.study.figures import harmonised_histogram, nyul_map
from fedcmr.lab.study.report import write_report
from fedcmr.lab.study.report_browser import check_page, chromium, screenshot
from fedcmr.lab.study.report_data import PREDICTIONS, ReportSettings
from fedcmr.lab.study.report_tables import OURS, PAPER

FIGURES = ("auc_by_setup", "roc_ccv", "roc_lco", "harmonisation", "training_curves",
           "site_weights")
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    folder = write_study(tmp_path_factory.mktemp("study"))
    started = time.monotonic()
    md, html = write_report(folder, ReportSettings(n_boot=200))
    return {"dir": folder, "md": md.read_text(), "html": html.read_text(),
            "seconds": time.monotonic() - started}


def tables(md: str) -> dict[str, tuple[list[str], list[list[str]]]]:
    """Markdown tables by their bold title line."""
    out = {}
    for title, body in re.findall(r"\*\*([^*\n]+)\*\*\n\n((?:\|.*\|\n)+)", md):
        lines = [[c.strip() for c in line.strip("|").split(" | ")]
                 for line in body.strip().splitlines()]
        out[title] = (lines[0], lines[2:])
    return out


def row(table, **where) -> dict[str, str]:
    header, rows = table
    found = [dict(zip(header, r, strict=True)) for r in rows
             if all(dict(zip(header, r, strict=True))[k] == v for k, v in where.items())]
    assert len(found) == 1, (where, rows)
    return found[0]


def recompute(folder, centre=None, **settings) -> list[float]:
    """Per seed: sklearn's AUC of the pooled predictions of every fold cell, read from the
    cells' own files."""
    pooled: dict[int, list[dict]] = {}
    for spec_path in sorted((folder / layout.CELLS).glob(f"*/{layout.CELL_JSON}")):
        spec = json.loads(spec_path.read_text())
        if not (spec_path.parent / layout.RESULT_JSON).exists():
            continue
        if all(spec[k] == v for k, v in settings.items()):
            rows = read_predictions(spec_path.parent / layout.RUN_DIR / PREDICTIONS)
            pooled.setdefault(spec["seed"], []).extend(
                r for r in rows if centre in (None, r["centre"]))
    return [roc_auc_score([r["label"] for r in rows], [r["score"] for r in rows])
            for _, rows in sorted(pooled.items())]


def test_tables_in_the_papers_layout_equal_a_recomputation(study):
    found = tables(study["md"])
    names = [t for t in found if t.startswith("Table ")]
    assert [n.split(":")[0] for n in names] == ["Table 2", "Table 3", "Table 4"]
    table2 = found[names[0]]
    assert f"total, {OURS}" in table2[0] and f"total, {PAPER}" in table2[0]
    both = ["ED", "ES"]
    fl = recompute(study["dir"], framework="fedavg", prior="structures", augment="none",
                   protocol="ccv", phases=both)
    cds = recompute(study["dir"], framework="cds", prior="structures", augment="none",
                    protocol="ccv", phases=both)
    assert len(fl) == len(cds) == 2  # seeds
    shown = row(table2, prior="structures", framework="FL")
    assert shown[f"total, {OURS}"].startswith(f"{np.mean(fl):.3f} ± {np.std(fl):.3f} (")
    assert shown[f"total, {PAPER}"] == "0.861 ± 0.003"
    low, high = map(float, re.search(r"\((\d\.\d+)–(\d\.\d+)\)",
                                     shown[f"total, {OURS}"]).groups())
    assert 0 <= low < np.mean(fl) < high <= 1
    # the paired comparison's difference is FL's mean AUC minus CDS's on the same frames
    diff = np.mean(fl) - np.mean(cds)
    assert shown["vs CDS: ΔAUC (95% CI), paired p"].startswith(f"Δ {diff:+.3f} (")
    assert re.search(r"p (0\.\d{3}|1\.000|<0\.001)$", shown["vs CDS: ΔAUC (95% CI), paired p"])
    assert row(table2, prior="structures", framework="CDS")[
        "vs CDS: ΔAUC (95% CI), paired p"] == "—"
    # a per-centre cell: the held-out centre's AUC under leave-centre-out
    table4 = found[names[2]]
    acdc = recompute(study["dir"], centre="ACDC", framework="equal-vote", prior="structures",
                     augment="shape-intensity", protocol="lco", phases=both)
    shown = row(table4, augmentation="shape-intensity", framework="FL-EV")
    assert shown["ACDC"].startswith(f"{np.mean(acdc):.3f} ± {np.std(acdc):.3f}")
    assert shown["folds"] == "all 4" and shown["seeds"] == "2"
    assert shown[f"total, {PAPER}"] == "0.768"
    assert row(found[names[1]], augmentation="none", framework="CDS")[
        f"total, {PAPER}"] == "0.856 ± 0.011"
    # set-ups the study lacks are named under the table
    assert "Not in this study (no cells): CDS / basic, FL / basic" in study["md"]


def test_subject_counts_ed_only_and_unfinished_cells(study):
    counts = tables(study["md"])["Subjects per centre"]
    for centre, (nor, hcm) in COHORT.items():
        assert row(counts, centre=centre)["NOR"] == str(nor)
        assert row(counts, centre=centre)["HCM"] == str(hcm)
    assert row(counts, centre="SantPau")[f"NOR / HCM, {PAPER}"] == "14 / 10"
    assert "Counted from the study's caches." in study["md"]
    ed = recompute(study["dir"], framework="fedavg", prior="structures", augment="none",
                   protocol="lco", phases=["ED"])
    assert len(ed) == 1  # the factory leaves seed 1's ED-only cell unfinished
    line = next(x for x in study["md"].splitlines() if x.startswith("- fedavg, structures, "
                                                                    "none, lco, ED:"))
    assert f"total AUC {ed[0]:.3f} (1 seed)" in line
    assert f"{PAPER}: 0.780" in line
    assert "Not finished (1): `fedavg_structures_none_lco_f0-1-2-3_s1_ed`" in study["md"]


def test_findings_rest_on_the_numbers(study):
    section = study["md"].split("## Findings")[1].split("## Tables")[0]
    bullets = [line for line in section.splitlines() if line.startswith("- **")]
    assert len(bullets) == 5
    assert "not enough cells" not in section
    on_par, spread, gap, hardest, vote = bullets
    fl = recompute(study["dir"], framework="fedavg", prior="masked", augment="none",
                   protocol="ccv", phases=["ED", "ES"])
    cds = recompute(study["dir"], framework="cds", prior="masked", augment="none",
                    protocol="ccv", phases=["ED", "ES"])
    assert f"masked/none/ccv Δ {np.mean(fl) - np.mean(cds):+.3f} (p " in on_par
    assert "**Does FL vary less over seeds than CDS?** yes: FL's std over seeds is the " \
           "smaller in 6 of 6 set-ups" in spread
    assert f"masked/none/ccv FL {np.std(fl):.3f} vs CDS {np.std(cds):.3f}" in spread
    assert "**Is leave-centre-out below CCV, and by how much?** yes: LCO is below CCV in " \
           "6 of 6 configurations" in gap
    assert "**Which centre is hardest unseen?** ACDC, with the lowest" in hardest
    assert "SantPau is the smallest centre (6 subjects)" in vote
    assert ": FL-EV − FL at SantPau is positive in 4 of 4 set-ups" in vote


def test_every_figure_is_written_linked_and_inlined(study):
    for name in FIGURES:
        path = study["dir"] / layout.FIGURES / f"{name}.png"
        assert path.read_bytes()[:8] == PNG, name
        assert f"](figures/{name}.png)" in study["md"]
    assert study["html"].count('src="data:image/png;base64,') == len(FIGURES)
    assert "figures/" not in re.sub(r"<figcaption>.*?</figcaption>", "", study["html"])
    assert not re.search(r"""(src|href)=["']https?:""", study["html"])
    assert ("From the sites' released summaries (FL): cell `fedavg_structures_none_ccv_"
            in study["md"])


def test_absent_tables_and_findings_say_which_cells_would_fill_them(tmp_path):
    folder = write_study(tmp_path, [Spec("cds", "structures", "none", "lco"),
                                    Spec("fedavg", "structures", "none", "lco")],
                         seeds=(0,), unfinished=0)
    md = write_report(folder, ReportSettings(n_boot=50))[0].read_text()
    assert ("**Table 2: AUC by prior (CCV, no augmentation)** — absent: the study has none "
            "of its cells. Cells that would fill it: framework cds / fedavg × prior baseline "
            "/ masked / structures, protocol ccv, augment none, phases ED+ES") in md
    assert "**Table 3: AUC by augmentation (CCV, per-structure prior)** — absent" in md
    assert "Table 4: AUC by augmentation (leave-centre-out, per-structure prior)" in tables(md)
    assert "ED-only: absent, no cell has phases = ED" in md
    assert "**ROC curves per centre (CCV)** — absent: no CCV cell." in md
    section = md.split("## Findings")[1].split("## Tables")[0]
    assert section.count("not enough cells") == 3  # spread (one seed), LCO vs CCV, vote
    assert "**Which centre is hardest unseen?** " in section  # LCO cells suffice


def test_a_histogram_at_the_reference_is_unchanged():
    rng = np.random.default_rng(0)
    edges = np.asarray(nyul.DEFAULT_BIN_EDGES)
    histogram = rng.random(len(edges) - 1)
    landmarks = np.sort(rng.uniform(0, 100, len(nyul.PERCENTILES)))
    landmarks[0], landmarks[-1] = 0.0, 100.0
    np.testing.assert_allclose(nyul_map(edges, landmarks, landmarks), edges, atol=1e-12)
    np.testing.assert_allclose(harmonised_histogram(histogram, edges, landmarks, landmarks),
                               histogram, atol=1e-12)


def percentiles_of(histogram: np.ndarray, edges: np.ndarray) -> np.ndarray:
    cdf = np.concatenate([[0.0], np.cumsum(histogram)]) / histogram.sum()
    return np.interp(np.asarray(nyul.PERCENTILES) / 100, cdf, edges)


def test_a_shifted_histogram_moves_onto_the_reference():
    """Two centres' released summaries (real Nyul code): one with bright skewed images, one
    with dark ones. Mapped to the second's landmarks, the first's histogram takes the
    second's shape: its percentiles land on the reference landmarks."""
    rng = np.random.default_rng(1)
    bright = [rng.gamma(2.0, 1.0, (6, 20, 20)) for _ in range(4)]
    dark = [rng.normal(0, 1, (6, 20, 20)) for _ in range(4)]
    a = nyul.site_summary(bright, None, ["a", "a", "b", "b"], min_subjects=1)
    b = nyul.site_summary(dark, None, ["c", "c", "d", "d"], min_subjects=1)
    edges = np.asarray(a.bin_edges)
    source = np.asarray(a.landmark_sum) / a.n_images
    reference = np.asarray(b.landmark_sum) / b.n_images
    before = np.asarray(a.histogram) / a.n_images
    target = np.asarray(b.histogram) / b.n_images
    after = harmonised_histogram(before, edges, source, reference)
    # mass is moved, not made; only what maps past the last bin edge is dropped
    assert before.sum() - 0.01 < after.sum() <= before.sum() + 1e-12
    assert np.abs(percentiles_of(before, edges) - reference)[1:-1].max() > 5
    np.testing.assert_allclose(percentiles_of(after, edges)[1:-1], reference[1:-1], atol=1.0)
    assert np.abs(after - target).sum() < 0.3 * np.abs(before - target).sum()


@pytest.fixture
def browser():
    if chromium() is None:
        reason = "no Chromium at /usr/bin/chromium (apt-get install -y chromium)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"on CI: {reason}; .ci/run installs it")
        pytest.skip(reason)


def test_the_html_renders_in_chromium_with_every_table_and_image(study, browser, tmp_path):
    page = study["dir"] / layout.REPORT_HTML
    seen = check_page(page)
    assert seen["tables"] == study["html"].count("<table>") == 5
    assert [c.split(":")[0] for c in seen["captions"]][:4] == [
        "Subjects per centre", "Table 2", "Table 3", "Table 4"]
    assert seen["images"] == len(FIGURES)
    assert seen["broken"] == [] and seen["external"] == []
    assert all(width > 300 and height > 150 for _, width, height in seen["loaded"])
    # and a page with a broken image is caught
    bad = tmp_path / "bad.html"
    bad.write_text(study["html"].replace("data:image/png;base64,iVBOR",
                                         "data:image/png;base64,AAAA", 1))
    assert len(check_page(bad)["broken"]) == 1
    shot = screenshot(page, tmp_path / "report.png", width=1000, height=1400)
    assert shot.read_bytes()[:8] == PNG and shot.stat().st_size > 20_000


def test_measures_cells_get_their_own_table_and_stay_out_of_the_papers(tmp_path):
    """A measures-model configuration beside the CNN's: the paper's tables and findings read
    the CNN's cells only; the measures table shows it with the CNN's total beside it."""
    from fedcmr.lab.study.report_data import TOTAL, load_study
    from fedcmr.lab.study.report_tables import TABLES, fmt_summary, other_models

    specs = [Spec("cds", "structures", "none", "ccv"),
             Spec("cds", "structures", "none", "ccv", model="measures")]
    study = load_study(write_study(tmp_path / "s", specs, unfinished=0))
    assert [c.model for c in study.configs] == ["cnn"]
    assert [c.model for c in study.other_configs] == ["measures"]
    assert [config.model for _, config in TABLES[0].configs(study)] == ["cnn"]
    (table,) = other_models(study)
    (row,) = table.rows
    assert row[0] == "CDS measures"
    cnn, measures = study.configs[0], study.other_configs[0]
    assert row[-2] == fmt_summary(measures.summary(TOTAL))
    assert row[-1] == fmt_summary(cnn.summary(TOTAL))

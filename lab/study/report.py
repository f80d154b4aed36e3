"""The study report: DIR/report.md (images linked from DIR/figures/) and a self-contained
DIR/report.html (inline CSS, images inlined), from the finished cells of a study folder.

    from fedcmr.lab.study.report import write_report
    md, html = write_report(Path("runs/small"))

Contents: the data's subject counts; findings computed from the numbers; Tables 2-4 in the
paper's layout with CIs, paired FL vs CDS tests and the paper's numbers beside ours; the
ED-only line; the figures (AUC per set-up, ROC, harmonisation, training curves, site
weights); every configuration; the method. Numbers (report_data.py), tables
(report_tables.py), findings (report_findings.py), figures (figures.py, report_curves.py)
and rendering (report_blocks.py) each live in their own module.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from fedcmr.common.atomic import write_text
from fedcmr.lab.study import layout
from fedcmr.lab.study.figures import FigureResult, auc_by_setup, harmonisation, roc_curves
from fedcmr.lab.study.report_blocks import (
    Block,
    Bullets,
    Figure,
    Heading,
    Para,
    to_html,
    to_markdown,
)
from fedcmr.lab.study.report_curves import site_weights, training_curves
from fedcmr.lab.study.report_data import ReportSettings, StudyResults, load_study
from fedcmr.lab.study.report_findings import findings
from fedcmr.lab.study.report_tables import (
    OURS,
    PAPER,
    TABLES,
    ed_only,
    every_configuration,
    other_models,
    paper_table,
    subject_counts,
)

log = logging.getLogger("fedcmr.study")


def overview(study: StudyResults) -> list[Block]:
    meta = study.meta
    listed = meta.get("cells") or [c.key for c in study.cells]
    done = {c.key for c in study.done}
    wall = sum(c.result.get("wall_s") or 0.0 for c in study.done)
    sites = meta.get("sites") or []
    site_text = "; ".join(f"{s['name']} ({', '.join(s.get('centres') or [])})" for s in sites)
    lines = [
        f"Study `{meta.get('name', study.folder.name)}`"
        + (f": {meta['description']}" if meta.get("description") else "") + ".",
        f"Profile `{meta.get('profile', '?')}`, FL runtime `{meta.get('runtime', '?')}`; "
        f"{sum(k in done for k in listed)} of {len(listed)} cells finished "
        f"({wall / 60:.1f} min of cell wall time); "
        f"{len(study.configs) + len(study.other_configs)} configurations.",
        f"Sites: {site_text or 'not recorded'}. Caches: "
        + (", ".join(f"`{c}`" for c in meta.get("caches") or []) or "not recorded") + ".",
        f'Every number labelled "{OURS}" comes from this study\'s data and cells; numbers '
        f'labelled "{PAPER}" are the published ones (Linardos et al., Sci Rep 2022) on the '
        "real M&Ms and ACDC data, shown only where the configuration matches.",
    ]
    missing = [k for k in listed if k not in done]
    if missing:
        lines.append(f"Not finished ({len(missing)}): " + ", ".join(f"`{k}`" for k in
                                                                      missing[:12])
                     + (" ..." if len(missing) > 12 else "")
                     + ". The tables use finished cells only.")
    return [Para(line) for line in lines]


def method(study: StudyResults) -> list[Block]:
    s = study.settings
    return [Heading("Method"), Bullets([
        "AUC: scikit-learn's ROC AUC over frame-level predictions (ED and ES frames are two "
        "samples, as in the paper), the same estimator for CDS and FL.",
        "A configuration (a cell's settings minus folds and seed): for each seed, the AUC of "
        "the pooled test predictions of all its folds; mean ± std (numpy, ddof 0) over "
        "seeds.",
        f"95% CI (level {s.level:g}): percentile bootstrap over subjects, stratified by "
        f"label, of the mean over seeds of the per-seed AUC, on the frames every seed "
        f"scored; {s.n_boot} resamples.",
        "vs CDS: paired bootstrap over subjects (the same subjects drawn for both "
        "frameworks) on the test frames and seeds both scored; ΔAUC = framework − CDS, "
        f"two-sided p. Findings call a difference significant at α = {s.alpha:g}.",
        "Harmonisation figure: from the aggregates the sites release (no image), see its "
        "caption for the approximation.",
    ])]


def figure_blocks(results: list[FigureResult]) -> list[Block]:
    blocks: list[Block] = [Heading("Figures")]
    for r in results:
        if r.path is None:
            blocks.append(Para(f"**{r.title}** — {r.note}."))
        else:
            blocks.append(Figure(r.path, r.title, r.note))
    return blocks


def build(study: StudyResults) -> list[Block]:
    folder = study.folder / layout.FIGURES
    started = time.monotonic()
    figures = [auc_by_setup(study, folder), roc_curves(study, folder, "ccv"),
               roc_curves(study, folder, "lco"), harmonisation(study, folder),
               training_curves(study, folder), site_weights(study, folder)]
    log.info("report: figures in %.1f s", time.monotonic() - started)
    blocks: list[Block] = overview(study)
    blocks += [Heading("Data")] + subject_counts(study)
    blocks += [Heading("Findings"), Para("Computed from the tables' numbers when the report "
                                         "is written; none is written by hand."),
               Bullets([f.text() for f in findings(study)])]
    blocks.append(Heading("Tables"))
    for spec in TABLES:
        blocks += paper_table(spec, study)
    blocks += ed_only(study)
    blocks += other_models(study)
    blocks += figure_blocks(figures)
    blocks += [Heading("Every configuration")] + every_configuration(study)
    blocks += method(study)
    return blocks


def write_report(study_dir: Path, settings: ReportSettings | None = None
                 ) -> tuple[Path, Path]:
    """Write DIR/report.md, DIR/report.html and DIR/figures/*.png; return both reports."""
    study_dir = Path(study_dir)
    started = time.monotonic()
    study = load_study(study_dir, settings)
    if not study.done:
        raise ValueError(f"{study_dir}: no finished cell yet (no {layout.CELLS}/*/"
                         f"{layout.RESULT_JSON}). Fix: run `fedcmr study` until at least one "
                         "cell finishes")
    blocks = build(study)
    title = f"Study report: {study.meta.get('name', study_dir.name)}"
    md, page = study_dir / layout.REPORT_MD, study_dir / layout.REPORT_HTML
    write_text(md, to_markdown(title, blocks, study_dir))
    write_text(page, to_html(title, blocks))
    log.info("report: %d configurations in %.1f s",
             len(study.configs) + len(study.other_configs),
             time.monotonic() - started)
    return md, page

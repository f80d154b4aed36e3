"""The report's tables in the paper's layout: Table 2 (priors, CCV, no augmentation), Table 3
(augmentation, CCV, per-structure prior), Table 4 (augmentation, leave-centre-out); the
ED-only line, the subject counts and every configuration in one appendix table. A table
whose cells the study lacks is replaced by a line naming the cells that would fill it."""

from __future__ import annotations

from dataclasses import dataclass, field

from fedcmr.common.models import registry
from fedcmr.common.models.registry import reads_images
from fedcmr.common.run_config import RunConfig
from fedcmr.lab.study import paper_reference
from fedcmr.lab.study.report_blocks import Block, Bullets, Para, Table
from fedcmr.lab.study.report_data import (
    TOTAL,
    AucSummary,
    Config,
    StudyResults,
    framework_label,
)

BOTH = ("ED", "ES")
AUGMENTS = ("none", "basic", "shape", "shape-intensity")
PRIORS = ("baseline", "masked", "structures")
OURS = "ours (this run's data)"
PAPER = "paper (its real data)"


@dataclass(frozen=True)
class TableSpec:
    name: str
    title: str
    protocol: str
    vary: str  # "prior" or "augment"
    values: tuple[str, ...]
    fixed: dict = field(default_factory=dict)
    #: The frameworks the paper's table has.
    frameworks: tuple[str, ...] = ("cds", "fedavg", "equal-vote")

    def configs(self, study: StudyResults) -> list[tuple[str, Config]]:
        """(set-up, configuration) present in the study, in the paper's row order."""
        out = []
        for value in self.values:
            for config in study.configs:
                settings = {"protocol": config.protocol, "prior": config.prior,
                            "augment": config.augment}
                if (tuple(config.phases) == BOTH and settings[self.vary] == value
                        and settings["protocol"] == self.protocol
                        and all(settings[k] == v for k, v in self.fixed.items())):
                    out.append((value, config))
        return out

    def wanted(self) -> str:
        fixed = ", ".join(f"{k} {v}" for k, v in self.fixed.items())
        return (f"framework {' / '.join(self.frameworks)} × {self.vary} "
                f"{' / '.join(self.values)}, protocol {self.protocol}, {fixed}, phases ED+ES "
                "(any seeds and folds)")


TABLES = (
    TableSpec("Table 2", "AUC by prior (CCV, no augmentation)", "ccv", "prior", PRIORS,
              {"augment": "none"}, ("cds", "fedavg")),
    TableSpec("Table 3", "AUC by augmentation (CCV, per-structure prior)", "ccv", "augment",
              AUGMENTS, {"prior": "structures"}),
    TableSpec("Table 4", "AUC by augmentation (leave-centre-out, per-structure prior)", "lco",
              "augment", AUGMENTS, {"prior": "structures"}),
)


def fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def fmt_summary(s: AucSummary) -> str:
    if s.mean is None:
        return "n/a"
    spread = f" ± {s.std:.3f}" if s.std is not None else f" ({s.n_seeds} seed)"
    ci = "" if s.ci is None else f" ({s.ci[0]:.2f}–{s.ci[1]:.2f})"
    return f"{s.mean:.3f}{spread}{ci}"


def fmt_p(p: float) -> str:
    return f"{p:.3f}" if p >= 0.001 else "<0.001"


def fold_text(config: Config, study: StudyResults) -> str:
    centres = config.settings["centres"] or study.centres
    n = RunConfig().n_folds_ccv if config.protocol == "ccv" else len(centres)
    folds = config.folds
    if folds == list(range(n)):
        return f"all {n}"
    return f"{'fold' if len(folds) == 1 else 'folds'} {','.join(map(str, folds))} of {n}"


def versus_cds(study: StudyResults, config: Config) -> str:
    """The paired comparison with the CDS configuration of the same set-up (total)."""
    if config.framework == "cds":
        return "—"
    cds = study.counterpart(config, "cds")
    if cds is None:
        return "no CDS cells"
    test = study.paired(config, cds)
    if test is None:
        return "no common frames"
    return (f"Δ {test.diff:+.3f} ({test.ci_low:+.2f}, {test.ci_high:+.2f}), "
            f"p {fmt_p(test.p_value)}")


def paper_table(spec: TableSpec, study: StudyResults) -> list[Block]:
    present = spec.configs(study)
    if not present:
        return [Para(f"**{spec.name}: {spec.title}** — absent: the study has none of its "
                     f"cells. Cells that would fill it: {spec.wanted()}.")]
    centres = study.centres
    header = ([spec.vary if spec.vary != "augment" else "augmentation", "framework", "seeds",
               "folds"] + centres + [f"total, {OURS}", f"total, {PAPER}",
                                     "vs CDS: ΔAUC (95% CI), paired p"])
    rows = []
    for value, config in present:
        summaries = [config.summary(c) if c in config.test_centres else None for c in centres]
        paper = paper_reference.published(config.framework, config.prior, config.augment,
                                          config.protocol, tuple(config.phases))
        rows.append([value, config.label, str(len(config.seeds)), fold_text(config, study)]
                    + [fmt_summary(s) if s else "—" for s in summaries]
                    + [fmt_summary(config.summary(TOTAL)),
                       paper.text() if paper else "—", versus_cds(study, config)])
    have = {(value, c.framework) for value, c in present}
    missing = [f"{framework_label(f, None)} / {v}" for v in spec.values
               for f in spec.frameworks if (v, f) not in have]
    notes = [f"AUC, {OURS}: mean ± std over seeds of each seed's AUC on the pooled test "
             "predictions of its folds (95% CI: bootstrap over subjects of the seed-mean "
             f"AUC). {PAPER}: the published mean over 5 seeds on M&Ms and ACDC (± std where "
             "published), beside ours only where the configuration matches. vs CDS: paired "
             "bootstrap over subjects on the same test frames and seeds."]
    if missing:
        notes.append(f"Not in this study (no cells): {', '.join(missing)}.")
    return [Table(f"{spec.name}: {spec.title}", header, rows, notes)]


def ed_only(study: StudyResults) -> list[Block]:
    configs = [c for c in study.configs if tuple(c.phases) == ("ED",)]
    if not configs:
        return [Para("ED-only: absent, no cell has phases = ED. Cells that would fill it: any "
                     "framework with phases ED (the paper: FL, leave-centre-out, no "
                     "augmentation, per-structure prior).")]
    items = []
    for config in configs:
        both = next((o for o in study.configs if o.framework == config.framework
                     and o.vote_alpha == config.vote_alpha and o.prior == config.prior
                     and o.augment == config.augment and o.protocol == config.protocol
                     and tuple(o.phases) == BOTH), None)
        paper = paper_reference.published(config.framework, config.prior, config.augment,
                                          config.protocol, ("ED",))
        text = f"{config.ident}: total AUC {fmt_summary(config.summary(TOTAL))}, {OURS}"
        if both is not None:
            text += f"; with ED and ES: {fmt_summary(both.summary(TOTAL))}"
        if paper is not None:
            text += f"; {PAPER}: {paper.text()}"
        items.append(text)
    return [Para("ED-only (phases = ED):"), Bullets(items)]


def subject_counts(study: StudyResults) -> list[Block]:
    counts, source = study.subject_counts()
    if not counts:
        return [Para("Subject counts: no finished cell and no readable cache.")]
    rows = []
    for centre, c in counts.items():
        paper = paper_reference.TABLE1.get(centre)
        rows.append([centre, str(c["NOR"]), str(c["HCM"]), str(c["NOR"] + c["HCM"]),
                     f"{paper[0]} / {paper[1]}" if paper else "—"])
    rows.append(["all", *(str(sum(c[k] for c in counts.values())) for k in ("NOR", "HCM")),
                 str(sum(c["NOR"] + c["HCM"] for c in counts.values())),
                 "88 / 92" if set(counts) == set(paper_reference.TABLE1) else "—"])
    return [Table("Subjects per centre", ["centre", "NOR", "HCM", "total",
                                          f"NOR / HCM, {PAPER}"], rows,
                  [f"Counted from {source}."])]


def other_models(study: StudyResults) -> list[Block]:
    """Every other model's configurations (the measures model's, a plug-in's) beside the
    CNN's of the same framework, protocol and phases (per-structure prior, no
    augmentation), on the same frames."""
    if not study.other_configs:
        return []
    centres = study.centres
    rows = []
    for config in study.other_configs:
        cnn = study.find(config.framework, "structures", "none", config.protocol,
                         tuple(config.phases), config.vote_alpha)
        rows.append([config.label, config.protocol, "+".join(config.phases),
                     ",".join(map(str, config.seeds)), fold_text(config, study)]
                    + [fmt_summary(config.summary(c)) for c in centres]
                    + [fmt_summary(config.summary(TOTAL)),
                       "" if cnn is None else fmt_summary(cnn.summary(TOTAL))])
    models = sorted({c.model for c in study.other_configs})
    notes = [f"{m}: {registry.get(m).summary}" if m in registry.names() else m
             for m in models]
    title = (f"The {models[0]} model" if len(models) == 1 else "Other models beside the CNN")
    return [Table(title, ["model", "protocol", "phases", "seeds", "folds", *centres,
                          f"total, {OURS}", "CNN (structures, no augmentation), total"], rows,
                  notes + ["docs/measures.md: the measures and the model. Not in the paper."])]


def every_configuration(study: StudyResults) -> list[Block]:
    rows = [[c.label, c.prior if reads_images(c.model) else f"({c.model})",
             c.augment if reads_images(c.model) else "", c.protocol, "+".join(c.phases),
             ",".join(map(str, c.seeds)), fold_text(c, study), fmt_summary(c.summary(TOTAL)),
             str(c.summary(TOTAL).n_frames)] for c in study.configs + study.other_configs]
    return [Table("Every configuration (total AUC)",
                  ["framework", "prior", "augmentation", "protocol", "phases", "seeds",
                   "folds", f"total, {OURS}", "frames"], rows)]

"""The findings, computed from the study's numbers (never written by hand): each answers one
of the paper's questions, states the numbers it rests on, and says "not enough cells" when
the study lacks them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedcmr.lab.study import paper_reference
from fedcmr.lab.study.report_data import Config, StudyResults
from fedcmr.lab.study.report_tables import BOTH, fmt, fmt_p

NOT_ENOUGH = "not enough cells"


@dataclass(frozen=True)
class Finding:
    question: str
    answer: str
    evidence: str

    def text(self) -> str:
        return f"**{self.question}** {self.answer}. {self.evidence}"


def _setup(c: Config) -> str:
    return f"{c.prior}/{c.augment}/{c.protocol}" + ("" if tuple(c.phases) == BOTH
                                                     else "/" + "+".join(c.phases))


def _pairs(study: StudyResults, framework: str, other: str) -> list[tuple[Config, Config]]:
    return [(c, o) for c in study.configs if c.framework == framework
            for o in [study.counterpart(c, other)] if o is not None]


def fl_on_par(study: StudyResults) -> Finding:
    q = "Is FL on par with CDS?"
    alpha = study.settings.alpha
    tests = [(c, t) for c, o in _pairs(study, "fedavg", "cds")
             for t in [study.paired(c, o)] if t is not None]
    if not tests:
        return Finding(q, NOT_ENOUGH, "It needs FL (fedavg) and CDS cells of the same set-up "
                       "and seeds.")
    better = [c for c, t in tests if t.p_value < alpha and t.diff > 0]
    worse = [c for c, t in tests if t.p_value < alpha and t.diff < 0]
    mean = float(np.mean([t.diff for _, t in tests]))
    answer = ("yes: no set-up differs significantly" if not better and not worse else
              f"not everywhere: FL is significantly better in {len(better)} and worse in "
              f"{len(worse)} of {len(tests)} set-ups")
    each = "; ".join(f"{_setup(c)} Δ {t.diff:+.3f} (p {fmt_p(t.p_value)})" for c, t in tests)
    return Finding(q, answer, f"Paired bootstrap over subjects, FL − CDS total AUC, α = "
                   f"{alpha:g}, {len(tests)} set-ups, mean Δ {mean:+.3f}: {each}. Paper: on "
                   "par.")


def fl_spread(study: StudyResults) -> Finding:
    q = "Does FL vary less over seeds than CDS?"
    pairs = [(c, o) for c, o in _pairs(study, "fedavg", "cds")
             if c.summary().std is not None and o.summary().std is not None]
    if not pairs:
        return Finding(q, NOT_ENOUGH, "It needs FL and CDS cells of one set-up with at least "
                       "two seeds each.")
    smaller = [c for c, o in pairs if c.summary().std < o.summary().std]
    fl = float(np.mean([c.summary().std for c, _ in pairs]))
    cds = float(np.mean([o.summary().std for _, o in pairs]))
    answer = ("yes" if len(smaller) * 2 > len(pairs) else "no") + (
        f": FL's std over seeds is the smaller in {len(smaller)} of {len(pairs)} set-ups")
    each = "; ".join(f"{_setup(c)} FL {c.summary().std:.3f} vs CDS {o.summary().std:.3f} "
                     f"({len(set(c.seeds) & set(o.seeds))} common seeds)" for c, o in pairs)
    return Finding(q, answer, f"Std over seeds of the total AUC, mean FL {fl:.3f} vs CDS "
                   f"{cds:.3f}: {each}. Paper: FL far less (e.g. 0.003 vs 0.011).")


def lco_gap(study: StudyResults) -> Finding:
    q = "Is leave-centre-out below CCV, and by how much?"
    pairs = []
    for c in study.configs:
        if c.protocol != "ccv" or c.summary().mean is None:
            continue
        for o in study.configs:
            if (o.protocol == "lco" and o.summary().mean is not None and all(
                    c.settings[k] == o.settings[k] for k in c.settings
                    if k not in ("protocol",))):
                pairs.append((c, o))
    if not pairs:
        return Finding(q, NOT_ENOUGH, "It needs CCV and LCO cells of the same framework and "
                       "set-up.")
    gaps = [c.summary().mean - o.summary().mean for c, o in pairs]
    below = sum(g > 0 for g in gaps)
    answer = (f"{'yes' if below * 2 > len(pairs) else 'no'}: LCO is below CCV in {below} of "
              f"{len(pairs)} configurations, by {np.mean(gaps):.3f} AUC on average")
    each = "; ".join(f"{c.label} {c.prior}/{c.augment} CCV {fmt(c.summary().mean)} "
                     f"(folds {','.join(map(str, c.folds))}) vs LCO {fmt(o.summary().mean)}"
                     for c, o in pairs)
    return Finding(q, answer, f"Mean total AUC over seeds: {each}. Paper: about "
                   f"{paper_reference.LCO_GAP:g} below.")


def hardest_unseen(study: StudyResults) -> Finding:
    q = "Which centre is hardest unseen?"
    lco = [c for c in study.configs if c.protocol == "lco" and tuple(c.phases) == BOTH]
    per_centre: dict[str, list[float]] = {}
    for config in lco:
        for centre in config.test_centres:
            value = config.summary(centre).mean
            if value is not None:
                per_centre.setdefault(centre, []).append(value)
    if len(per_centre) < 2:
        return Finding(q, NOT_ENOUGH, "It needs leave-centre-out cells testing at least two "
                       "centres.")
    means = {c: float(np.mean(v)) for c, v in per_centre.items()}
    worst = min(means, key=means.get)
    each = "; ".join(f"{c} {m:.3f} (over {len(per_centre[c])} configurations)"
                     for c, m in sorted(means.items(), key=lambda kv: kv[1]))
    ref = paper_reference.HARDEST_UNSEEN
    return Finding(q, f"{worst}, with the lowest leave-centre-out AUC ({means[worst]:.3f})",
                   f"Mean over LCO configurations of the held-out centre's AUC: {each}. Paper: "
                   f"{ref['centre']} (FL {ref['auc']:g} under shape + intensity).")


def equal_vote_smallest(study: StudyResults) -> Finding:
    q = "Does equal vote help the smallest centre?"
    counts, _ = study.subject_counts()
    if not counts:
        return Finding(q, NOT_ENOUGH, "No subject counts.")
    smallest = min(counts, key=lambda c: (counts[c]["NOR"] + counts[c]["HCM"], c))
    size = counts[smallest]["NOR"] + counts[smallest]["HCM"]
    tests = [(c, t) for c, o in _pairs(study, "equal-vote", "fedavg") if c.protocol == "ccv"
             and smallest in c.test_centres and smallest in o.test_centres
             for t in [study.paired(c, o, smallest)] if t is not None]
    if not tests:
        return Finding(q, NOT_ENOUGH, f"It needs FL-EV and FL (fedavg) CCV cells of one "
                       f"set-up that test {smallest}, the smallest centre ({size} subjects).")
    helped = [c for c, t in tests if t.diff > 0]
    significant = [c for c, t in tests if t.diff > 0 and t.p_value < study.settings.alpha]
    each = "; ".join(f"{_setup(c)} Δ {t.diff:+.3f} ({t.ci_low:+.2f}, {t.ci_high:+.2f}), p "
                     f"{fmt_p(t.p_value)}" for c, t in tests)
    answer = ("yes" if significant else "not significantly" if helped else "no") + (
        f": FL-EV − FL at {smallest} is positive in {len(helped)} of {len(tests)} set-ups, "
        f"significantly in {len(significant)}")
    return Finding(q, answer, f"{smallest} is the smallest centre ({size} subjects). Paired "
                   f"bootstrap over its subjects, CCV (under LCO a centre is never trained "
                   f"on when tested): {each}.")


def findings(study: StudyResults) -> list[Finding]:
    return [fl_on_par(study), fl_spread(study), lco_gap(study), hardest_unseen(study),
            equal_vote_smallest(study)]


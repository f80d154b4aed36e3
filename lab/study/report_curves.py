"""The report's figures of training: validation AUC and loss per epoch (CDS) or round (FL),
and the per-round site weights of each federated strategy (rounds.csv's weight column:
FedAvg by n_k, equal vote flat, tempered in between)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

from matplotlib.ticker import MaxNLocator

from fedcmr.lab.study.figures import COLOURS, FigureResult, main_configs, new_figure, save
from fedcmr.lab.study.report_data import HISTORY, ROUNDS, Cell, Config, StudyResults


def _read_csv(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _number(text: str | None) -> float:
    try:
        return float(text) if text not in (None, "", "None") else math.nan
    except ValueError:
        return math.nan


def _first_cell(config: Config) -> tuple[Cell, int] | None:
    """Seed 0 (the lowest), its first fold."""
    if not config.seeds:
        return None
    cells = config.cells_of(config.seeds[0])
    return (cells[0], cells[0].spec["folds"][0]) if cells else None


def curve(config: Config) -> tuple[list[float], list[float], list[float]] | None:
    """(x, val AUC, val loss) of the configuration's lowest seed, first fold. x counts the
    training (epochs or rounds) behind the validated model: CDS validates after each epoch;
    an FL round's replies validate the model the round received, that of the round before."""
    first = _first_cell(config)
    if first is None:
        return None
    cell, fold = first
    if config.framework == "cds":
        rows = _read_csv(cell.run / f"fold_{fold}" / HISTORY)
        return ([int(r["epoch"]) + 1 for r in rows], [_number(r["val_auc"]) for r in rows],
                [_number(r["val_loss"]) for r in rows])
    seen: dict[int, dict] = {}
    for r in _read_csv(cell.run / ROUNDS):
        if int(r["fold"]) == fold:
            seen.setdefault(int(r["round"]), r)
    rounds = sorted(seen)
    return ([r - 1 for r in rounds], [_number(seen[r]["pooled_val_auc_received"])
                                      for r in rounds],
            [_number(seen[r]["pooled_val_loss_received"]) for r in rounds])


def training_curves(study: StudyResults, out: Path) -> FigureResult:
    title = "Training curves: validation AUC and loss per epoch (CDS) or round (FL)"
    configs = main_configs(study, "ccv") or main_configs(study, "lco")
    drawn = [(c, xy) for c in configs for xy in [curve(c)] if xy and xy[0]]
    if not drawn:
        return FigureResult(None, title, "absent: no finished cell left history.csv or "
                            "rounds.csv")
    fig, (ax_auc, ax_loss) = new_figure(2, width=5.0, height=3.4)
    for config, (x, aucs, losses) in drawn:
        colour = COLOURS.get(config.framework, "#888")
        ax_auc.plot(x, aucs, "o-", ms=3, color=colour, label=config.label)
        ax_loss.plot(x, losses, "o-", ms=3, color=colour, label=config.label)
    for ax, name in ((ax_auc, "validation AUC"), (ax_loss, "validation loss")):
        ax.set_xlabel("epochs (CDS) or rounds (FL) of training behind the model", fontsize=8)
        ax.set_ylabel(name)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=7)
    path = save(fig, out / "training_curves.png", study.settings.dpi)
    c = drawn[0][0]
    first = _first_cell(c)
    return FigureResult(path, title, f"Set-up {c.prior} prior, {c.augment} augmentation, "
                        f"{c.protocol.upper()}; seed {c.seeds[0]}, fold {first[1]}. CDS: its "
                        "validation split after each epoch; FL: the pooled validation of the "
                        "sites (the model each round received), so x = 0 is the untrained "
                        "model.")


def site_weights(study: StudyResults, out: Path) -> FigureResult:
    title = "Per-round site weights of each federated strategy"
    configs = [c for c in (main_configs(study, "ccv") or main_configs(study, "lco"))
               if c.framework != "cds"]
    if not configs:
        configs = list({(c.framework, c.vote_alpha): c for c in study.configs
                        if c.framework != "cds"}.values())
    panels = []
    for config in configs:
        first = _first_cell(config)
        if first is None:
            continue
        rows = [r for r in _read_csv(first[0].run / ROUNDS) if int(r["fold"]) == first[1]]
        if rows:
            panels.append((config, first, rows))
    if not panels:
        return FigureResult(None, title, "absent: no finished federated cell left rounds.csv")
    fig, axes = new_figure(len(panels), width=4.0, height=3.0)
    for ax, (config, _, rows) in zip(axes, panels, strict=True):
        for site in sorted({r["site"] for r in rows}):
            mine = [r for r in rows if r["site"] == site]
            n_k = mine[0]["n_k"]
            ax.plot([int(r["round"]) for r in mine], [_number(r["weight"]) for r in mine],
                    "o-", ms=3, label=f"{site} (n_k {n_k})")
        ax.set_title(config.label, fontsize=10)
        ax.set_xlabel("round", fontsize=8)
        ax.set_ylabel("weight in the aggregate", fontsize=8)
        ax.set_ylim(0, 1)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=7)
    path = save(fig, out / "site_weights.png", study.settings.dpi)
    c, (cell, fold), _ = panels[0]
    return FigureResult(path, title, f"Set-up {c.prior} prior, {c.augment} augmentation, "
                        f"{c.protocol.upper()}; each strategy's lowest seed, fold {fold}. "
                        "FedAvg weighs a site by its training frames n_k, equal vote by 1/K, "
                        "tempered by n_k^α.")

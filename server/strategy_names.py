"""The strategies' names, spelled once: each weighted vote's exponent (None: the run's
`vote_alpha`, tempered) and the robust rules. server/settings.py takes its choices from here,
server/strategies.py its classes by these names (tested to agree), the study's frameworks
the weighted votes."""

from __future__ import annotations

from typing import Literal

#: The weighted means: site weight n_k ** alpha (fedavg 1, equal-vote 0, tempered: chosen).
VOTE_ALPHA: dict[str, float | None] = {"fedavg": 1.0, "equal-vote": 0.0, "tempered": None}
#: The robust rules (server/strategies.py); they weigh no site by n_k.
ROBUST: tuple[str, ...] = ("median", "trimmed-mean", "krum")
VOTE_STRATEGIES: tuple[str, ...] = tuple(VOTE_ALPHA)
STRATEGY_NAMES: tuple[str, ...] = (*VOTE_STRATEGIES, *ROBUST)
Strategy = Literal[STRATEGY_NAMES]  # type: ignore[valid-type]
#: The vote exponent of each strategy with a fixed one (tempered takes `vote_alpha`; the
#: robust rules weigh by n_k only their metrics).
STRATEGY_ALPHA: dict[str, float] = {
    **{k: v for k, v in VOTE_ALPHA.items() if v is not None}, **dict.fromkeys(ROBUST, 1.0)}

"""The trial hyperparameters besides the augmentations: the one table that the search space,
the trial settings, the Parquet columns, `config_from_row`, the analysis's controls, the
importance and the printed best config all iterate over. (Augmentations have their own
registry in `tune_search.trainable.augment`, with its `aug_<name>` keys.)"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, kw_only=True)
class Hyperparameter:
    name: str
    label: str  # in words, for the console and the report
    integer: bool = False
    log: bool = False  # searched, and compared in the analysis, on a log scale
    choices: bool = False  # a list in the space file is a set of choices, not a [low, high] range
    default: float | int | None = None  # None: every trial config carries it
    low: float = 0.0  # what a trial can train with: low (exclusive when `positive`) ...
    high: float = math.inf  # ... up to high (exclusive)
    positive: bool = False

    def cast(self, value: Any) -> int | float:
        return int(value) if self.integer else float(value)

    def valid(self, value: float) -> bool:
        return math.isfinite(value) and (value > self.low if self.positive else value >= self.low) and value < self.high

    def middle(self, searched: tuple) -> int | float:
        """The baselines' value from a searched range or set of choices: its middle."""
        if self.choices:
            return sorted(searched)[len(searched) // 2]
        low, high = searched[0], searched[-1]
        return self.cast(math.sqrt(low * high) if self.log else (low + high) / 2)

    def show(self, value: Any) -> str:
        return f"{value:.4g}"


HYPERPARAMETERS = (
    Hyperparameter(name="lr", label="lr", log=True, positive=True),
    Hyperparameter(name="freeze_depth", label="freeze depth", integer=True),
    Hyperparameter(name="weight_decay", label="weight decay", log=True, default=0.0),
    Hyperparameter(name="batch_size", label="batch size", integer=True, log=True, choices=True, default=64, low=1),
    Hyperparameter(name="label_smoothing", label="label smoothing", default=0.0, high=1.0),
)
BY_NAME = {h.name: h for h in HYPERPARAMETERS}
KEYS = tuple(BY_NAME)


def settings_in(config: Any) -> dict[str, int | float]:
    """Every hyperparameter of a flat trial config or a table row, typed, defaults filled in."""
    return {h.name: h.cast(config[h.name] if h.default is None or h.name in config else h.default) for h in HYPERPARAMETERS}


def describe_settings(config: Any) -> str:
    """`lr 0.00125, freeze depth 7, ...`: every hyperparameter in words."""
    return ", ".join(f"{h.label} {h.show(v)}" for h, v in zip(HYPERPARAMETERS, settings_in(config).values()))

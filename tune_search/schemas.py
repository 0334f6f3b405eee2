"""One declared Arrow schema per results table, with each column's unit.

A table is written in exactly its schema: a column nothing filled is written as nulls of its
type, an undeclared column is refused. Tables from two runs therefore concatenate, and a reader
never guesses a type from the data. Each field carries its unit in the Parquet field metadata
(`unit`); docs/schemas.md shows these declarations (`markdown`) and a test keeps them equal.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
import pyarrow as pa

from tune_search.trainable.augment import NAMES, names_in, strength_key, switch_key
from tune_search.trainable.hyperparameters import HYPERPARAMETERS

FRACTION = "fraction"  # of validation images, in [0, 1]
DIFFERENCE = "difference of fractions"  # x100 = points of top-1, as the report prints them
PROBABILITY = "probability"
SECONDS = "seconds"
NATS = "nats"  # mean cross-entropy

STRING, INT, FLOAT, BOOL = pa.string(), pa.int64(), pa.float64(), pa.bool_()
PER_CLASS = pa.map_(pa.string(), pa.float64())  # class name -> top-1


@dataclass(frozen=True)
class Column:
    """One column, or with `each` one per augmentation in the registry (`NAME` in `name`
    stands for the augmentation's name)."""

    name: str
    type: pa.DataType
    unit: str = ""
    each: bool = False

    def field(self, augmentation: str = "") -> pa.Field:
        return pa.field(self.name.replace("NAME", augmentation), self.type, metadata={"unit": self.unit} if self.unit else None)


def _c(spec: str, type: pa.DataType, unit: str = "") -> list[Column]:
    """Columns of one type and unit: 'a, b, c'."""
    return [Column(name.strip(), type, unit, each="NAME" in name) for name in spec.split(",")]


CONFIG = [
    *(Column(h.name, INT if h.integer else FLOAT) for h in HYPERPARAMETERS),
    Column(switch_key("NAME"), BOOL, each=True),
    Column(strength_key("NAME"), FLOAT, "strength in [0, 1]", each=True),
]
TRIALS = [
    *_c("trial_id, status, baseline", STRING),
    *_c("epochs", INT),
    *_c("top1, top5, best_top1", FLOAT, FRACTION),
    *_c("val_loss, train_loss", FLOAT, NATS),
    *_c("time_s", FLOAT, SECONDS),
    *_c("node_id", STRING),
    *CONFIG,
    *_c("error", STRING),
]
HISTORY = [
    *_c("trial_id", STRING),
    *_c("epoch", INT),
    *_c("top1, top5", FLOAT, FRACTION),
    *_c("val_loss, train_loss", FLOAT, NATS),
    *_c("time_s, train_s, eval_s, data_s", FLOAT, SECONDS),
]
# a designed study's runs: screen, dose, confirm, ablation and explain share these
RUNS = [
    *_c("study", STRING),
    *_c("design_row, seed", INT),
    *_c("label", STRING),
    *CONFIG,
    *_c("epochs", INT),
    *_c("top1, top5", FLOAT, FRACTION),
    *_c("val_loss, train_loss", FLOAT, NATS),
    Column("per_class_top1", PER_CLASS, FRACTION),
    *_c("node_id, trial_id", STRING),
    *_c("affinity_NAME", FLOAT, DIFFERENCE),
]
EXPLAIN_RUNS = [
    *RUNS,
    *_c("bundle", BOOL),
    *_c("cell, model, weights", STRING),
    *_c("oversample_to, max_epochs, params", INT),
]
INTERVAL = _c("effect, ci_low, ci_high", FLOAT, DIFFERENCE)
DOSE = [
    *_c("augmentation", STRING),
    *_c("strength", FLOAT, "strength in [0, 1]"),
    *INTERVAL,
    *_c("fitted, fit_low, fit_high", FLOAT, DIFFERENCE),
    *_c("n_seeds", INT),
    *_c("threshold", FLOAT, DIFFERENCE),
]
STRENGTH = "strength in [0, 1]"

SCHEMAS: dict[str, list[Column]] = {
    "trials": TRIALS,
    "history": HISTORY,
    "best_configs": TRIALS,
    "effects": [
        *_c("augmentation", STRING),
        *_c("strength", FLOAT, STRENGTH),
        *INTERVAL,
        *_c("p_value, p_adjusted", FLOAT, PROBABILITY),
        *_c("verdict", STRING),
        *_c("detectable, negligible", FLOAT, DIFFERENCE),
        *_c("p_equivalence, p_equivalence_adjusted, alpha", FLOAT, PROBABILITY),
        *_c("settle_replicates", INT),
        *_c("top5_effect, top5_ci_low, top5_ci_high", FLOAT, DIFFERENCE),
        *_c("n_runs", INT),
        *_c("df", FLOAT),
        *_c("harmful_above, harmful_above_low, harmful_above_high", FLOAT, STRENGTH),
        *_c("search_effect, search_ci_low, search_ci_high", FLOAT, DIFFERENCE),
        *_c("search_verdict", STRING),
        *_c("search_n_on, search_n_off", INT),
        *_c("search_method", STRING),
        *_c("search_importance", FLOAT, "share (all importances sum to 1)"),
        *_c("search_mean_strength", FLOAT, STRENGTH),
        *_c("search_slope, search_slope_ci_low, search_slope_ci_high", FLOAT, "difference of fractions per unit of strength"),
        *_c("search_harmful_above", FLOAT, STRENGTH),
    ],
    "screen": RUNS,
    "per_class": [
        *_c("augmentation, class", STRING),
        *_c("change, ci_low, ci_high", FLOAT, DIFFERENCE),
        *_c("p_value, p_fdr", FLOAT, PROBABILITY),
        *_c("top1_with, top1_without", FLOAT, FRACTION),
    ],
    "affinity": [
        *_c("augmentation", STRING),
        *_c("strength", FLOAT, STRENGTH),
        *_c("affinity", FLOAT, DIFFERENCE),
        *_c("diversity, diversity_ci_low, diversity_ci_high", FLOAT, "difference of mean cross-entropy, nats"),
        *_c("clean_train_loss", FLOAT, NATS),
    ],
    "dose_runs": RUNS,
    "dose": DOSE,
    "focus_runs": RUNS,
    "focus": [
        *_c("augmentation", STRING),
        *_c("strength", FLOAT, STRENGTH),
        *INTERVAL,
        *_c("p_value, p_adjusted", FLOAT, PROBABILITY),
        *_c("verdict", STRING),
        *_c("detectable, negligible", FLOAT, DIFFERENCE),
        *_c("p_equivalence, p_equivalence_adjusted, alpha", FLOAT, PROBABILITY),
        *_c("settle_replicates", INT),
        *_c("top5_effect, top5_ci_low, top5_ci_high", FLOAT, DIFFERENCE),
        *_c("n_runs", INT),
        *_c("df", FLOAT),
    ],
    "sweep_runs": RUNS,
    "sweep": [*_c("augmentation", STRING), *_c("strength", FLOAT, STRENGTH), *INTERVAL, *_c("top1", FLOAT, FRACTION), *_c("n_seeds", INT), *_c("chosen", BOOL)],
    "recipe": [*_c("augmentation, stage, verdict", STRING), *INTERVAL, *_c("decision", STRING), *_c("strength", FLOAT, STRENGTH)],
    "confirm_runs": RUNS,
    "confirm_arms": [
        *_c("arm, augmentations", STRING),
        *_c("n_augmentations", INT),
        *_c("top1", FLOAT, FRACTION),
        *_c("n_seeds, rank", INT),
        *_c("best_measured, recommended", BOOL),
        *_c("negligible", FLOAT, DIFFERENCE),
    ],
    "confirm": [
        *_c("comparison, arm", STRING),
        *INTERVAL,
        *_c("p_value, p_adjusted, p_equivalence_adjusted", FLOAT, PROBABILITY),
        *_c("verdict", STRING),
        *_c("top1_recommended, top1_other", FLOAT, FRACTION),
        *_c("n_seeds", INT),
        *_c("df", FLOAT),
    ],
    "ablation_runs": RUNS,
    "ablation": [
        *_c("augmentation, switched", STRING),
        *_c("strength", FLOAT, STRENGTH),
        *INTERVAL,
        *_c("p_value, p_adjusted, p_equivalence_adjusted", FLOAT, PROBABILITY),
        *_c("verdict", STRING),
        *_c("n_seeds", INT),
        *_c("df", FLOAT),
        *_c("top1_with, top1_without", FLOAT, FRACTION),
        *_c("screen_verdict", STRING),
        *_c("agrees", BOOL),
    ],
    "explain_runs": EXPLAIN_RUNS,
    "explain_lr": EXPLAIN_RUNS,
    "explain": [
        *_c("explanation, title, claim, contrast, expected", STRING),
        *INTERVAL,
        *_c("se", FLOAT, DIFFERENCE),
        *_c("p_value, p_adjusted, p_equivalence_adjusted", FLOAT, PROBABILITY),
        *_c("verdict, level_a", STRING),
        *_c("effect_a", FLOAT, DIFFERENCE),
        *_c("level_b", STRING),
        *_c("effect_b", FLOAT, DIFFERENCE),
        *_c("n_runs", INT),
        *_c("df", FLOAT),
        *_c("note", STRING),
    ],
    "explain_cells": [
        *_c("cell", STRING),
        *_c("freeze_depth", INT),
        *_c("model, weights", STRING),
        *_c("oversample_to, max_epochs", INT),
        *_c("top1_without, top1_with", FLOAT, FRACTION),
        *_c("bundle_effect, ci_low, ci_high", FLOAT, DIFFERENCE),
        *_c("n_seeds", INT),
    ],
    "explain_crop": DOSE,
    "crop_sensitivity": [*_c("area", FLOAT, "fraction of the image kept"), *_c("class", STRING), *_c("images", INT), *_c("changed, top1", FLOAT, FRACTION)],
}


def schema(table: str, augmentations: Sequence[str] = NAMES) -> pa.Schema:
    """Neighbouring per-augmentation columns expand together, augmentation by augmentation
    (aug_crop, aug_crop_strength, aug_hflip, ...), over the built-ins or a run's `augmentations`
    (the built-ins, then the entries its space file declares)."""
    fields: list[pa.Field] = []
    for each, group in itertools.groupby(SCHEMAS[table], key=lambda c: c.each):
        group = list(group)
        fields += [c.field(n) for n in augmentations for c in group] if each else [c.field() for c in group]
    return pa.schema(fields)


def to_arrow(table: str, frame: pd.DataFrame, classes: Sequence[str] = ()) -> pa.Table:
    """`frame` in `table`'s schema: declared columns it lacks are nulls; per-class lists become
    maps from the class names (`classes`, else the class indices); ValueError naming a column
    the schema does not declare (a table that drifted from its declaration). The columns of
    declared augmentations the frame has are typed like the built-ins'."""
    declared = schema(table, names_in(frame.columns))
    extra = [c for c in frame.columns if c not in declared.names]
    if extra:
        raise ValueError(f"{table}: columns {extra} are not in its declared schema (tune_search/schemas.py)")
    arrays = []
    for field in declared:
        values = frame[field.name] if field.name in frame else pd.Series([None] * len(frame), dtype=object)
        if pa.types.is_map(field.type):
            values = values.map(lambda v: None if v is None or (not hasattr(v, "__len__")) else list(zip(_names(classes, len(v)), map(float, v))))
        elif pa.types.is_integer(field.type):
            values = values.astype("Int64") if values.dtype.kind in "fO" else values
        arrays.append(pa.array(values, type=field.type, from_pandas=True))
    return pa.Table.from_arrays(arrays, schema=declared)


def _names(classes: Sequence[str], count: int) -> list[str]:
    return list(classes) if len(classes) == count else [str(i) for i in range(count)]


def from_arrow(table: str, frame: pd.DataFrame) -> pd.DataFrame:
    """A table as pandas reads it, with per-class maps (lists of (class, top-1) pairs) back as
    lists in class order, as the analysis reads them."""
    for field in schema(table):
        if pa.types.is_map(field.type) and field.name in frame:
            frame[field.name] = frame[field.name].map(lambda pairs: None if pairs is None else [v for _, v in pairs])
    return frame


def markdown(table: str) -> str:
    """The table's columns as docs/schemas.md shows them: neighbours of one type and unit share
    a row, a column per augmentation is shown once with NAME."""
    rows: list[tuple[list[str], str, str]] = []
    for c in SCHEMAS[table]:
        if rows and rows[-1][1:] == (_type_name(c.type), c.unit):
            rows[-1][0].append(c.name)
        else:
            rows.append(([c.name], _type_name(c.type), c.unit))
    return "\n".join(["| columns | type | unit |", "|---|---|---|", *(f"| {', '.join(names)} | {type} | {unit} |" for names, type, unit in rows)])


def _type_name(type: pa.DataType) -> str:
    return "map<string, double>" if pa.types.is_map(type) else str(type)


def unit_metadata(table: str) -> dict[str, str]:
    """{column: unit} for the columns that have one."""
    return {f.name: f.metadata[b"unit"].decode() for f in schema(table) if f.metadata}

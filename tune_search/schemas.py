"""One declared Arrow schema per results table, with each column's unit: the search's tables
here, each study's beside its code (`Study.tables`), the shared column groups here.

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


def columns(spec: str, type: pa.DataType, unit: str = "") -> list[Column]:
    """Columns of one type and unit: 'a, b, c'."""
    return [Column(name.strip(), type, unit, each="NAME" in name) for name in spec.split(",")]


CONFIG = [
    *(Column(h.name, INT if h.integer else FLOAT) for h in HYPERPARAMETERS),
    Column(switch_key("NAME"), BOOL, each=True),
    Column(strength_key("NAME"), FLOAT, "strength in [0, 1]", each=True),
]
TRIALS = [
    *columns("trial_id, status, baseline", STRING),
    *columns("epochs", INT),
    *columns("top1, top5, best_top1", FLOAT, FRACTION),
    *columns("val_loss, train_loss", FLOAT, NATS),
    *columns("time_s", FLOAT, SECONDS),
    *columns("node_id", STRING),
    *CONFIG,
    *columns("error", STRING),
]
HISTORY = [
    *columns("trial_id", STRING),
    *columns("epoch", INT),
    *columns("top1, top5", FLOAT, FRACTION),
    *columns("val_loss, train_loss", FLOAT, NATS),
    *columns("time_s, train_s, eval_s, data_s", FLOAT, SECONDS),
]
# a designed study's runs: screen, dose, confirm, ablation and explain share these
RUNS = [
    *columns("study", STRING),
    *columns("design_row, seed", INT),
    *columns("label", STRING),
    *CONFIG,
    *columns("epochs", INT),
    *columns("top1, top5", FLOAT, FRACTION),
    *columns("val_loss, train_loss", FLOAT, NATS),
    Column("per_class_top1", PER_CLASS, FRACTION),
    *columns("node_id, trial_id", STRING),
    *columns("affinity_NAME", FLOAT, DIFFERENCE),
]
EXPLAIN_RUNS = [
    *RUNS,
    *columns("bundle", BOOL),
    *columns("cell, model, weights", STRING),
    *columns("oversample_to, max_epochs, params", INT),
]
INTERVAL = columns("effect, ci_low, ci_high", FLOAT, DIFFERENCE)
DOSE = [
    *columns("augmentation", STRING),
    *columns("strength", FLOAT, "strength in [0, 1]"),
    *INTERVAL,
    *columns("fitted, fit_low, fit_high", FLOAT, DIFFERENCE),
    *columns("n_seeds", INT),
    *columns("threshold", FLOAT, DIFFERENCE),
]
STRENGTH = "strength in [0, 1]"

# the screen's verdict columns, which its focused second stage (focus.parquet) repeats
VERDICT_COLUMNS = [
    *columns("augmentation", STRING),
    *columns("strength", FLOAT, STRENGTH),
    *INTERVAL,
    *columns("p_value, p_adjusted", FLOAT, PROBABILITY),
    *columns("verdict", STRING),
    *columns("detectable, negligible", FLOAT, DIFFERENCE),
    *columns("p_equivalence, p_equivalence_adjusted, alpha", FLOAT, PROBABILITY),
    *columns("settle_replicates", INT),
    *columns("top5_effect, top5_ci_low, top5_ci_high", FLOAT, DIFFERENCE),
    *columns("n_runs", INT),
    *columns("df", FLOAT),
]
# the search's own estimates per augmentation, the last columns of effects.parquet
SEARCH_EFFECTS = [
    *columns("search_effect, search_ci_low, search_ci_high", FLOAT, DIFFERENCE),
    *columns("search_verdict", STRING),
    *columns("search_n_on, search_n_off", INT),
    *columns("search_method", STRING),
    *columns("search_importance", FLOAT, "share (all importances sum to 1)"),
    *columns("search_mean_strength", FLOAT, STRENGTH),
    *columns("search_slope, search_slope_ci_low, search_slope_ci_high", FLOAT, "difference of fractions per unit of strength"),
    *columns("search_harmful_above", FLOAT, STRENGTH),
]


@dataclass(frozen=True)
class Table:
    """A results table: what it holds and its declared columns. The search's tables are below;
    each study declares its own beside its code (`Study.tables`)."""

    what: str
    columns: Sequence[Column]

    def schema(self, augmentations: Sequence[str] = NAMES) -> pa.Schema:
        """Neighbouring per-augmentation columns expand together, augmentation by augmentation
        (aug_crop, aug_crop_strength, aug_hflip, ...), over the built-ins or a run's
        `augmentations` (the built-ins, then the entries its space file declares)."""
        fields: list[pa.Field] = []
        for each, group in itertools.groupby(self.columns, key=lambda c: c.each):
            group = list(group)
            fields += [c.field(n) for n in augmentations for c in group] if each else [c.field() for c in group]
        return pa.schema(fields)

    def to_arrow(self, name: str, frame: pd.DataFrame, classes: Sequence[str] = ()) -> pa.Table:
        """`frame` in this schema: declared columns it lacks are nulls; per-class lists become
        maps from the class names (`classes`, else the class indices); ValueError naming a
        column the schema does not declare (a table that drifted from its declaration). The
        columns of declared augmentations the frame has are typed like the built-ins'."""
        declared = self.schema(names_in(frame.columns))
        extra = [c for c in frame.columns if c not in declared.names]
        if extra:
            raise ValueError(f"{name}: columns {extra} are not in its declared schema")
        arrays = []
        for field in declared:
            values = frame[field.name] if field.name in frame else pd.Series([None] * len(frame), dtype=object)
            if pa.types.is_map(field.type):
                values = values.map(lambda v: None if v is None or (not hasattr(v, "__len__")) else list(zip(_names(classes, len(v)), map(float, v))))
            elif pa.types.is_integer(field.type):
                values = values.astype("Int64") if values.dtype.kind in "fO" else values
            arrays.append(pa.array(values, type=field.type, from_pandas=True))
        return pa.Table.from_arrays(arrays, schema=declared)

    def from_arrow(self, frame: pd.DataFrame) -> pd.DataFrame:
        """The table as pandas reads it, with per-class maps (lists of (class, top-1) pairs)
        back as lists in class order, as the analysis reads them."""
        for field in self.schema():
            if pa.types.is_map(field.type) and field.name in frame:
                frame[field.name] = frame[field.name].map(lambda pairs: None if pairs is None else [v for _, v in pairs])
        return frame

    def markdown(self) -> str:
        """The columns as docs/schemas.md shows them: neighbours of one type and unit share a
        row, a column per augmentation is shown once with NAME."""
        rows: list[tuple[list[str], str, str]] = []
        for c in self.columns:
            if rows and rows[-1][1:] == (_type_name(c.type), c.unit):
                rows[-1][0].append(c.name)
            else:
                rows.append(([c.name], _type_name(c.type), c.unit))
        return "\n".join(["| columns | type | unit |", "|---|---|---|", *(f"| {', '.join(names)} | {type} | {unit} |" for names, type, unit in rows)])

    def unit_metadata(self) -> dict[str, str]:
        """{column: unit} for the columns that have one."""
        return {f.name: f.metadata[b"unit"].decode() for f in self.schema() if f.metadata}


def _names(classes: Sequence[str], count: int) -> list[str]:
    return list(classes) if len(classes) == count else [str(i) for i in range(count)]


def _type_name(type: pa.DataType) -> str:
    return "map<string, double>" if pa.types.is_map(type) else str(type)


SEARCH_TABLES: dict[str, Table] = {
    "trials": Table("the search's trials", TRIALS),
    "history": Table("the search's trials, epoch by epoch", HISTORY),
    # the search's best trials, then the confirmation's recommendation: `source` says which, and
    # `n_seeds` how many runs its top-1 averages
    "best_configs": Table("the best trials, then the recommendation", [*TRIALS, *columns("source", STRING), *columns("n_seeds", INT)]),
}

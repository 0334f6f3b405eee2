"""The designed studies that follow a search, one module each, behind the `Study` protocol:
the CLI, the pipeline, the results folder and the report loop over `STUDIES`.

A new study is one module with a `Study` subclass (its configs, run, analysis, report section
and console lines), listed here in the order studies run and are analysed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd

from tune_search.export import with_recommendation
from tune_search.schemas import SEARCH_EFFECTS, STRING, Table, columns
from tune_search.sections import SearchConfigBase
from tune_search.studies._base import Flag, Study, StudyContext, Tables
from tune_search.studies.ablation import Ablation
from tune_search.studies.confirm import Confirm
from tune_search.studies.dose import Dose
from tune_search.studies.explain import Explain
from tune_search.studies.focus import Focus
from tune_search.studies.screen import Screen
from tune_search.studies.sweep import Sweep

__all__ = ["EFFECTS", "STUDIES", "Flag", "Study", "StudyContext", "Tables", "analyse", "by_command", "by_name", "effects_table", "selected", "with_effects"]

STUDIES: tuple[Study, ...] = (Screen(), Focus(), Sweep(), Dose(), Confirm(), Ablation(), Explain())
by_name = {s.name: s for s in STUDIES}
by_command = {s.command: s for s in STUDIES if s.command}


def selected(names: Sequence[str], cfg: SearchConfigBase) -> list[Study]:
    """The studies `names` asks for, each followed by the enabled studies that follow it, in
    registry order."""
    chosen = set(names)
    chosen |= {s.name for s in STUDIES if s.follows in chosen and s.enabled(cfg)}
    return [s for s in STUDIES if s.name in chosen]


# effects.parquet: one row per augmentation, its columns joined from the studies that declare
# some (`Study.effect_columns`, in registry order), then the search's own estimates
EFFECTS = Table(
    "verdicts per augmentation",
    [*columns("augmentation", STRING), *(c for study in STUDIES for c in study.effect_columns), *SEARCH_EFFECTS],
)


def effects_table(names: Sequence[str], search: pd.DataFrame | None) -> pd.DataFrame:
    """effects.parquet before any study adds its columns: each study's blank (null, or its
    `effect_blank`), then the search's own estimates as search_<column> (empty when the
    search had too few trials)."""
    from tune_search.analysis import EFFECT_COLUMNS as SEARCH_COLUMNS

    table = pd.DataFrame({"augmentation": list(names)})
    for study in STUDIES:
        for column in study.effect_columns:
            table[column.name] = study.effect_blank.get(column.name, math.nan)
    if search is None:
        search = pd.DataFrame({c: list(names) if c == "augmentation" else math.nan for c in SEARCH_COLUMNS})
    renamed = search.rename(columns={c: f"search_{c}" for c in search.columns if c != "augmentation"})
    return table.merge(renamed, on="augmentation", how="left")


def with_effects(effects: pd.DataFrame, study: Study, mine: pd.DataFrame) -> pd.DataFrame:
    """effects.parquet with `study`'s columns replaced by `mine` (keyed by augmentation; a row
    it lacks gets its blank). A column it does not declare is refused: no study writes
    another's."""
    own = [c.name for c in study.effect_columns]
    stray = sorted(set(mine.columns) - {"augmentation", *own})
    if stray:
        raise ValueError(f"study {study.name} returned effects columns it does not declare: {stray}")
    joined = effects[["augmentation"]].merge(mine, on="augmentation", how="left")
    out = effects.copy()
    for column in own:
        values = joined[column] if column in joined else pd.Series(math.nan, index=joined.index)
        blank = study.effect_blank.get(column)
        out[column] = (values.where(values.notna(), blank) if blank is not None else values).to_numpy()
    return out


def analyse(tables: Tables, cfg: SearchConfigBase, classes: Sequence[str], search: pd.DataFrame | None) -> dict[str, pd.DataFrame]:
    """Every analysis table from the runs tables present, without training: effects.parquet,
    then each study's own in registry order (a study reads those of the studies before it).
    Pure: the tables are returned, never written."""
    current = dict(tables) | {"effects": effects_table(cfg.space.augmentation_names, search)}
    made = {"effects"}
    for study in STUDIES:
        out = study.analyse(current, cfg, classes)
        if "effects" in out:  # its columns, joined into the shared table by its owner, here
            out = out | {"effects": with_effects(current["effects"], study, out["effects"])}
        current |= out
        made |= set(out)
    if "best_configs" in current:  # its owner appends the (last) recommendation a study makes
        recommended = [r for study in STUDIES if (r := study.recommendation(current)) is not None]
        current["best_configs"] = with_recommendation(current["best_configs"], recommended[-1] if recommended else None)
        made.add("best_configs")
    return {name: current[name] for name in made}

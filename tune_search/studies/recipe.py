"""The recipe: what the verdicts keep, at which strength. Pure functions over the analysis
tables, read by the strength sweep (which augmentations to sweep) and the confirmation (the
recipe arm)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from tune_search.sections import Section
from tune_search.studies.run_configs import base_settings, with_augmentations

DECISION_COLUMNS = ("augmentation", "stage", "verdict", "effect", "ci_low", "ci_high", "decision", "strength")
NOT_SCREENED = "not screened"


class RecipeConfig(Section):
    """The recipe the verdicts recommend (the focused screen's where it ran, else the
    screen's): hurts dropped, helps kept, harmless kept unless `keep_harmless: false`."""

    keep_harmless: bool = True
    keep_unclear: bool = False  # also keep augmentations whose verdict is unclear


def decisions(effects: pd.DataFrame, focus: pd.DataFrame | None, sweep: pd.DataFrame | None, settings: RecipeConfig) -> pd.DataFrame:
    """Per screened augmentation: the verdict that decides it (the focused screen's, in the
    recipe's context, where it ran; else the screen's), what the recipe does with it (kept /
    dropped / left out) and at which strength (the strength sweep's choice for one that helps,
    else the screened one, below where dose-response found harm starting)."""
    screened = effects[effects["verdict"] != NOT_SCREENED].sort_values("effect", ascending=False)
    focused = focus.set_index("augmentation") if focus is not None and len(focus) else None
    chosen = sweep[sweep["chosen"]].set_index("augmentation")["strength"] if sweep is not None and len(sweep) else pd.Series(dtype=float)
    rows = []
    for _, r in screened.iterrows():
        name = r["augmentation"]
        stage, row = ("focus", focused.loc[name]) if focused is not None and name in focused.index and r["verdict"] != "hurts" else ("screen", r)
        verdict = row["verdict"]
        keep = verdict == "helps" or (verdict == "harmless" and settings.keep_harmless) or (verdict == "unclear" and settings.keep_unclear)
        strength = float(chosen.get(name, row["strength"])) if verdict == "helps" else float(row["strength"])
        start = r.get("harmful_above_low", math.nan)
        if keep and isinstance(start, float) and not math.isnan(start) and start <= strength:
            strength = round(max(start - 0.05, 0.0), 2)  # below where harm may start
            keep = strength > 0
        decision = "kept" if keep else ("dropped" if verdict == "hurts" else "left out")
        rows.append({"augmentation": name, "stage": stage, "verdict": verdict, "effect": row["effect"], "ci_low": row["ci_low"],
                     "ci_high": row["ci_high"], "decision": decision, "strength": strength if keep else math.nan})  # fmt: skip
    return pd.DataFrame(rows, columns=list(DECISION_COLUMNS))


def recipe_config(base: Mapping[str, Any], table: pd.DataFrame, names: Sequence[str]) -> dict[str, Any]:
    """The recipe as a trial config: `base`'s settings, the kept augmentations on."""
    kept = table[table["decision"] == "kept"]
    return with_augmentations(base_settings(base), dict(zip(kept["augmentation"], kept["strength"])), names)

"""The strength sweep: an augmentation kept because it helps gets its strength from measured
runs. Each one runs at `sweep.strengths` and off, on top of the rest of the recipe, paired by
seed; one least-squares fit per augmentation (a level per strength, a block per seed) gives
each strength's effect against off with its 95 % interval. The strength kept is the strongest
whose measured effect is within the equivalence margin (`screen.negligible`) of the best
measured one: the most augmentation the data shows costs nothing against the best.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import pandas as pd
from pydantic import Field, field_validator

from tune_search import render
from tune_search.export import config_from_row
from tune_search.schemas import BOOL, FLOAT, FRACTION, INT, INTERVAL, RUNS, STRENGTH, STRING, Table, columns
from tune_search.sections import SearchConfigBase, Section, Strength, two_levels
from tune_search.stats import level_contrasts
from tune_search.studies import run_configs, training
from tune_search.studies._base import Study, StudyContext, Tables
from tune_search.studies.recipe import decisions, recipe_config
from tune_search.trainable.augment import strength_key, switch_key

SEED_OFFSET = 2000  # its runs' seeds: none shared with the other studies' runs
SWEEP_COLUMNS = ("augmentation", "strength", "effect", "ci_low", "ci_high", "top1", "n_seeds", "chosen")


class SweepConfig(Section):
    """The strength of every augmentation the focused screen calls helpful, from measured runs:
    each at `strengths` and off on top of the rest of the recipe, paired by seed."""

    enabled: bool = True
    strengths: tuple[Strength, ...] = (0.25, 0.5, 1.0)
    seeds: Annotated[int, Field(ge=2)] = 2

    _levels = field_validator("strengths")(lambda value: two_levels(value, "the strength sweep"))


def sweep_configs(recipe: dict, names: Sequence[str], levels: Sequence[float], seeds: Sequence[int], searched: Sequence[str]) -> list[dict]:
    """Each augmentation of `names` off and at every strength of `levels`, the rest of the
    recipe as it is, once per seed."""
    out = []
    on = {n: float(recipe[strength_key(n)]) for n in searched if recipe.get(switch_key(n))}
    for seed in seeds:
        for name in names:
            for level in (0.0, *levels):
                mine = {k: v for k, v in on.items() if k != name} | ({name: level} if level > 0 else {})
                config = run_configs.with_augmentations(run_configs.base_settings(recipe), mine, searched)
                out.append({**config, "study": "sweep", "design_row": -1, "seed": seed, "label": name})
    return out


def sweep_table(runs: pd.DataFrame, negligible: float) -> pd.DataFrame:
    """sweep.parquet: per augmentation and strength, the effect against off (one fit per
    augmentation: a level per strength, a block per seed) with its 95 % interval, mean top-1,
    and the strength chosen."""
    frames = []
    for name in dict.fromkeys(runs["label"]):
        mine = runs[runs["label"] == name]
        level = mine[strength_key(name)].where(mine[switch_key(name)].astype(bool), 0.0).fillna(0.0).to_numpy(float)
        rows = [
            {"augmentation": name, "strength": s, "effect": e.effect, "ci_low": e.ci_low, "ci_high": e.ci_high,
             "top1": float(mine.loc[level == s, "top1"].mean()), "n_seeds": int(mine.loc[level == s, "seed"].nunique())}
            for s, e in level_contrasts(level, mine["seed"], mine["top1"]).items()
        ]  # fmt: skip
        table = pd.DataFrame(rows)
        best = table["effect"].max()
        table["chosen"] = False
        table.loc[table[table["effect"] >= best - negligible]["strength"].idxmax(), "chosen"] = True
        frames.append(table)
    return pd.concat(frames, ignore_index=True)[list(SWEEP_COLUMNS)] if frames else pd.DataFrame(columns=list(SWEEP_COLUMNS))


def helpful(table: pd.DataFrame) -> list[str]:
    """The augmentations the recipe's decisions (`recipe.decisions`) keep because they help."""
    return list(table.loc[(table["decision"] == "kept") & (table["verdict"] == "helps"), "augmentation"])


class Sweep(Study):
    name = "sweep"
    sections = {"sweep": SweepConfig}
    follows = "screen"
    tables = {
        "sweep_runs": Table("the strength sweep's runs", RUNS),
        "sweep": Table(
            "each helpful augmentation's effect per strength, and the one kept",
            [
                *columns("augmentation", STRING),
                *columns("strength", FLOAT, STRENGTH),
                *INTERVAL,
                *columns("top1", FLOAT, FRACTION),
                *columns("n_seeds", INT),
                *columns("chosen", BOOL),
            ],
        ),
    }

    def enabled(self, cfg: SearchConfigBase) -> bool:
        return cfg.screen.enabled and cfg.sweep.enabled

    def run(self, ctx: StudyContext) -> None:
        """Sweep the strength of every augmentation the recipe keeps because it helps; write
        sweep_runs.parquet."""
        from tune_search.studies import analyse

        cfg = ctx.cfg
        tables = analyse(ctx.folder.read_all(), cfg, [], None)
        screen = ctx.folder.read("screen")
        if screen is None or "effects" not in tables:
            return
        table = decisions(tables["effects"], tables.get("focus"), None, cfg.recipe)
        names = [n for n in helpful(table) if n not in ctx.space.switches]  # a declared switch has no strength to sweep
        if not names:
            return
        searched = list(ctx.space.augmentations)
        recipe = recipe_config(config_from_row(screen.iloc[0]), table, searched)
        seeds = [SEED_OFFSET + s for s in range(cfg.sweep.seeds)]
        configs = sweep_configs(recipe, names, cfg.sweep.strengths, seeds, searched)
        levels = ", ".join(f"{s:g}" for s in cfg.sweep.strengths)
        print(f"sweep: {len(configs)} runs, {', '.join(names)} at strengths {levels} and off on top of the rest of the recipe, {len(seeds)} seeds")
        _, runs = training.train(ctx, configs, "sweep")
        ctx.folder.write("sweep_runs", runs)
        training.prune(ctx, "sweep")

    def analyse(self, tables: Tables, cfg: SearchConfigBase, classes: Sequence[str]) -> dict[str, pd.DataFrame]:
        runs = tables.get("sweep_runs")
        if runs is None or not len(runs):
            return {}
        return {"sweep": sweep_table(runs, cfg.screen.negligible)}

    def section(self, tables: Tables, folder: Path) -> list[str]:
        sweep = tables.get("sweep")
        if sweep is None or not len(sweep):
            return []
        table = pd.DataFrame(
            {
                "augmentation": sweep["augmentation"],
                "strength": sweep["strength"].map(lambda v: f"{v:g}"),
                "against off, points [95 %]": [render.effect_interval(*v) for v in zip(sweep["effect"], sweep["ci_low"], sweep["ci_high"])],
                "top-1": sweep["top1"].map(lambda v: f"{v:.3f}" if not math.isnan(v) else ""),
                "kept": sweep["chosen"].map({True: "yes", False: ""}),
            }
        )
        return [
            "## Strength of what helps",
            "",
            "Each augmentation kept because it helps, at each strength and off on top of the rest of the recipe, paired by seed; "
            "the strength kept is the strongest whose measured effect is within the equivalence margin of the best measured one.",
            "",
            render.markdown_table(table),
            "",
        ]

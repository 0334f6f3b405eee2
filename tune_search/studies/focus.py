"""The focused screen: what each augmentation does when added to the recipe.

The screen's effects are averages over contexts where harmful augmentations are on half the
time, and its residual error pays for their interactions (rotate x blur, ...), so most
augmentations stay `unclear` there. This second stage screens again only the augmentations the
screen did not call `hurts`, with the harmful ones off, at the screen's settings (the recipe's),
in their own folded two-level design, and adds replicates while any verdict is unclear (up to
`focus.max_seeds`). Its estimate is the one a user needs: the effect of adding the
augmentation to the recipe. Its verdicts are read off simultaneous intervals at its share of
the procedure's 5 % (`errors`), split over its looks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import pandas as pd

from tune_search import render
from tune_search.export import config_from_row
from tune_search.schemas import RUNS, VERDICT_COLUMNS, Table
from tune_search.sections import PositiveInt, SearchConfigBase, Section
from tune_search.studies import run_configs, training
from tune_search.studies._base import Study, StudyContext, Tables
from tune_search.studies.errors import look_alpha
from tune_search.studies.screen import VERDICTS, family_alpha, fit, screen_configs, screen_effects, screening_design
from tune_search.trainable.augment import switch_key

SEED_OFFSET = 1000  # its runs' seeds: none shared with the screen's or the confirmation's runs


class FocusConfig(Section):
    """The focused screen: the augmentations the screen did not call harmful, screened again
    with the harmful ones off, at the recipe's settings, in their own two-level design."""

    enabled: bool = True
    seeds: PositiveInt | Literal["auto"] = "auto"  # auto: replicates added while any verdict is unclear
    max_seeds: PositiveInt = 4  # with auto: at most this many replicates


def candidates(effects: pd.DataFrame) -> list[str]:
    """The screened augmentations the screen did not call `hurts`, in the effects' order."""
    screened = effects[~effects["verdict"].isin(["not screened", "hurts"])]
    return list(screened["augmentation"])


def focus_configs(base: dict, strengths: dict[str, float], searched: Sequence[str], seeds: Sequence[int]) -> list[dict]:
    """The focused design over `strengths`' augmentations (every other searched one off), at
    `base`'s settings, once per seed."""
    configs = screen_configs(base, strengths, seeds, clean_seed=None)
    out = []
    for config in configs:
        on = {n: strengths[n] for n in strengths if config[switch_key(n)]}
        out.append(
            {
                **run_configs.with_augmentations(run_configs.base_settings(config), on, searched),
                "study": "focus",
                "design_row": config["design_row"],
                "seed": config["seed"],
                "label": "",
            }
        )
    return out


def focus_effects(runs: pd.DataFrame, cfg: SearchConfigBase) -> pd.DataFrame:
    """focus.parquet: the screen's effect columns for the focused design's runs."""
    names = run_configs.screened(runs, cfg.space.augmentation_names)
    return screen_effects(runs, names, alpha=look_alpha(cfg, "focus"), negligible=cfg.screen.negligible)


def another_replicate(runs: pd.DataFrame, cfg: SearchConfigBase) -> bool:
    """Add a replicate while any verdict is unclear, up to focus.max_seeds (`seeds: auto`)."""
    if cfg.focus.seeds != "auto" or runs["seed"].nunique() >= cfg.focus.max_seeds:
        return False
    return bool((focus_effects(runs, cfg)["verdict"] == "unclear").any())


def look_line(runs: pd.DataFrame, cfg: SearchConfigBase) -> str:
    effects = focus_effects(runs, cfg)
    residual = fit(runs, list(effects["augmentation"])).residual_sd
    counts = ", ".join(f"{n} {v}" for v in VERDICTS if (n := int((effects["verdict"] == v).sum())))
    seeds = runs["seed"].nunique()
    noise = f"residual SD {100 * residual:.2f} points" if math.isfinite(residual) else "no residual degrees of freedom yet"
    return f"focus after {seeds} replicate{'s' * (seeds != 1)}: {noise}; {counts}"


class Focus(Study):
    name = "focus"
    sections = {"focus": FocusConfig}
    follows = "screen"
    tables = {
        "focus_runs": Table("the focused screen's runs", RUNS),
        "focus": Table("each augmentation's effect when added to the recipe", VERDICT_COLUMNS),
    }

    def enabled(self, cfg: SearchConfigBase) -> bool:
        return cfg.screen.enabled and cfg.focus.enabled

    def run(self, ctx: StudyContext) -> None:
        """Screen again the augmentations the screen did not call harmful, the harmful ones
        off; replicates while a verdict is unclear; write focus_runs.parquet."""
        cfg, screen = ctx.cfg, ctx.folder.read("screen")
        if screen is None:
            return
        names = run_configs.screened(screen, list(ctx.space.augmentations))
        effects = screen_effects(screen, names, alpha=family_alpha(cfg), negligible=cfg.screen.negligible)
        kept = candidates(effects)
        if len(kept) < 1:
            print("focus: every screened augmentation hurts; nothing to screen in the recipe's context")
            return
        strengths = dict(zip(effects["augmentation"], effects["strength"]))
        base = run_configs.base_settings(config_from_row(screen.iloc[0]))
        fixed = cfg.focus.seeds != "auto"
        first = cfg.focus.seeds if fixed else 1
        searched = list(ctx.space.augmentations)
        design = len(screening_design(len(kept)))
        dropped = [n for n in names if n not in kept]
        print(
            f"focus: {design} runs per replicate ({len(kept)} augmentations in a folded Plackett-Burman design"
            + (f"; {', '.join(dropped)} off" if dropped else "")
            + "), at the screen's settings; "
            + (
                f"{first} replicates"
                if fixed
                else f"replicates while a verdict is unclear (at most {cfg.focus.max_seeds}, each look at alpha {look_alpha(cfg, 'focus'):.3g})"
            )
        )
        seeds = [SEED_OFFSET + s for s in range(first)]
        _, runs = training.train(ctx, focus_configs(base, {n: float(strengths[n]) for n in kept}, searched, seeds), "focus")
        for k in () if fixed else range(1, cfg.focus.max_seeds + 1):
            print(look_line(runs, cfg))
            if not another_replicate(runs, cfg):  # False after the last replicate
                break
            extra_configs = focus_configs(base, {n: float(strengths[n]) for n in kept}, searched, [SEED_OFFSET + k])
            _, extra = training.train(ctx, extra_configs, f"focus-seed{k}", phase=f"focus replicate {k + 1}")
            runs = pd.concat([runs, extra], ignore_index=True)
        ctx.folder.write("focus_runs", runs)
        training.prune(ctx, "focus", *(f"focus-seed{k}" for k in range(1, cfg.focus.max_seeds)))

    def analyse(self, tables: Tables, cfg: SearchConfigBase, classes: Sequence[str]) -> dict[str, pd.DataFrame]:
        runs = tables.get("focus_runs")
        if runs is None or not len(runs):
            return {}
        return {"focus": focus_effects(runs, cfg)}

    def section(self, tables: Tables, folder: Path) -> list[str]:
        focus = tables.get("focus")
        if focus is None or not len(focus):
            return []
        first = focus.iloc[0]
        shown = focus.sort_values("effect")
        table = pd.DataFrame(
            {
                "augmentation": shown["augmentation"],
                "strength": shown["strength"].round(2),
                "added to the recipe, points [simultaneous]": [render.row_interval(r) for _, r in shown.iterrows()],
                "verdict": shown["verdict"],
            }
        )
        return [
            "## In the recipe's context",
            "",
            f"The augmentations the screen did not call `hurts`, screened again with the harmful ones off at the screen's settings: "
            f"{int(first['n_runs'])} runs, {first['df']:.0f} residual degrees of freedom; intervals simultaneous across {len(focus)} "
            f"augmentations at alpha {first['alpha']:.3g} (this stage's share of 5 %, split over its looks); harmless: within "
            f"±{100 * first['negligible']:.1f} points.",
            "",
            render.markdown_table(table),
            "",
        ]

    def console(self, tables: Tables) -> str | None:
        focus = tables.get("focus")
        if focus is None or not len(focus):
            return None
        shown = focus.sort_values("effect")
        table = pd.DataFrame(
            {
                "augmentation": shown["augmentation"],
                "added to the recipe, points": [render.effect_interval(e, lo, hi) for e, lo, hi in zip(shown["effect"], shown["ci_low"], shown["ci_high"])],
                "verdict": shown["verdict"],
            }
        )
        first = focus.iloc[0]
        return f"in the recipe's context (focused screen, {int(first['n_runs'])} runs):\n{render.markdown_table(table)}"

"""The recipe and its confirmation: what to train with, and how sure we are.

The recipe follows from the screen's verdicts: augmentations that hurt are dropped; those that
help or are harmless (within ±`screen.negligible`) are kept at their screened strength (below
the strength where dose-response found harm starting, where it ran); `unclear` ones are left
out unless `recipe.keep_unclear`. The screen's effects are averages over the design's
contexts, so the recipe itself is then trained at full budget beside no augmentation, the
original set (the all + aug baseline's augmentations, or `confirm.compare`) and the search's
best config, over `confirm.seeds` seeds, all paired by seed; one least-squares fit (arm + seed
blocks) gives every comparison with the recipe, Holm-corrected across them, with Bonferroni
intervals that agree with the corrected tests. Should the recipe not beat no augmentation,
it says so and the recipe without its worst kept augmentation is tried once.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import yaml

from tune_search import render
from tune_search.config import SearchConfig
from tune_search.constants import BASELINES, MOTIVATING
from tune_search.export import config_columns, config_from_row
from tune_search.stats import ALPHA, block_fit, contrast, equivalence_verdicts
from tune_search.studies import _base as common
from tune_search.studies._base import Flag, Study, StudyContext, Tables
from tune_search.trainable.augment import strength_key, strengths_in
from tune_search.trainable.hyperparameters import describe_settings

RECIPE, NONE, ORIGINAL, BEST, REDUCED = "recipe", "none", "original", "best", "recipe minus worst"
ARMS = {NONE: "no augmentation", ORIGINAL: "the original set", BEST: "the search's best config", REDUCED: "the recipe without its worst kept augmentation"}
KEEP = ("helps", "harmless")
RECOMMENDED = "recommended"  # the recipe's row in best_configs.parquet: its trial_id and status
DECISION_COLUMNS = ("augmentation", "verdict", "effect", "ci_low", "ci_high", "decision", "strength")
CONFIRM_COLUMNS = (
    "comparison", "arm", "effect", "ci_low", "ci_high", "p_value", "p_holm", "p_equivalence_holm", "verdict",
    "top1_recipe", "top1_other", "n_seeds", "df",
)  # fmt: skip
SAYS = {"helps": "better", "hurts": "worse", "harmless": "no different", "unclear": "unclear"}  # the recipe against an arm


# the recipe ----------------------------------------------------------------------------------


def decisions(effects: pd.DataFrame, *, keep_unclear: bool = False) -> pd.DataFrame:
    """Per screened augmentation: its verdict, effect and what the recipe does with it (kept /
    dropped / left out) at which strength."""
    screened = effects[effects["verdict"] != "not screened"].sort_values("effect", ascending=False)
    rows = []
    for _, r in screened.iterrows():
        keep = r["verdict"] in KEEP or (keep_unclear and r["verdict"] == "unclear")
        strength = float(r["strength"])
        start = r.get("harmful_above_low", math.nan)
        if keep and isinstance(start, float) and not math.isnan(start) and start <= strength:
            strength = round(max(start - 0.05, 0.0), 2)  # below where harm may start
            keep = strength > 0
        decision = "kept" if keep else ("dropped" if r["verdict"] == "hurts" else "left out")
        rows.append({"augmentation": r["augmentation"], "verdict": r["verdict"], "effect": r["effect"], "ci_low": r["ci_low"],
                     "ci_high": r["ci_high"], "decision": decision, "strength": strength if keep else math.nan})  # fmt: skip
    return pd.DataFrame(rows, columns=list(DECISION_COLUMNS))


def recipe_config(base: Mapping[str, Any], table: pd.DataFrame, names: Sequence[str]) -> dict[str, Any]:
    """The recipe as a trial config: `base`'s settings, the kept augmentations on."""
    kept = table[table["decision"] == "kept"]
    return common.with_augmentations(common.base_settings(base), dict(zip(kept["augmentation"], kept["strength"])), names)


def original_set(trials: pd.DataFrame | None, effects: pd.DataFrame, compare: Sequence[str] | None) -> dict[str, float]:
    """The augmentations a user trained with before: `compare` at the screen's strengths, else
    the all + aug baseline's (the thread's six), as the search ran them."""
    screened = effects.set_index("augmentation")["strength"].dropna()
    if compare is not None:
        return {n: float(screened.get(n, 0.5)) for n in compare}
    if trials is not None and len(row := trials[trials["baseline"] == BASELINES[2]]):
        return strengths_in(config_from_row(row.iloc[0]))
    return {n: float(screened.get(n, 0.5)) for n in MOTIVATING}


def recommended_row(recipe: Mapping[str, Any], best: pd.DataFrame, top1: float, epochs: int) -> pd.DataFrame:
    """best_configs.parquet with the recipe as its last row (`recommended`), replacing an
    earlier one: `--config-from best_configs.parquet --row N` re-trains it."""
    searched = best[best["trial_id"] != RECOMMENDED]
    row = {c: math.nan for c in searched.columns} | {"trial_id": RECOMMENDED, "status": RECOMMENDED, "baseline": "", "epochs": epochs,
                                                     "top1": top1, "node_id": None, "error": None, **config_columns(recipe)}  # fmt: skip
    return pd.concat([searched, pd.DataFrame([row], columns=searched.columns).astype(searched.dtypes.to_dict())], ignore_index=True)


def recipe_space(cfg: SearchConfig, recipe: Mapping[str, Any], row: int) -> str:
    """recipe.yaml: the run's space file narrowed to the recipe (its settings fixed, only its
    augmentations searched, at their strengths), with how to re-train the recipe exactly."""
    tree = yaml.safe_load(cfg.dump())
    on = strengths_in(recipe)
    tree["space"] |= {k: recipe[k] for k in ("lr", "freeze_depth", "weight_decay", "batch_size", "label_smoothing")}
    tree["space"]["augmentations"] = list(on) or tree["space"]["augmentations"]
    if on:
        low, high = min(on.values()), max(on.values())
        tree["space"]["strength"] = [low, high]
    else:
        tree["screen"]["enabled"] = False
    head = (
        f"# The recipe tune-search recommends: {describe_settings(recipe)}; "
        f"augmentations: {', '.join(f'{n} {s:.2f}' for n, s in on.items()) or 'none'}.\n"
        f"# Re-train it exactly: tune-search --space recipe.yaml --config-from best_configs.parquet --row {row}\n"
        "# Search around it: tune-search --space recipe.yaml (its settings fixed, its augmentations searched)\n"
    )
    return head + yaml.safe_dump(tree, sort_keys=False)


# the confirmation ----------------------------------------------------------------------------


def confirm_configs(arms: Mapping[str, Mapping[str, Any]], seeds: Sequence[int]) -> list[dict[str, Any]]:
    """Every arm (a label and its trial config) once per seed."""
    return [{**config, "study": "confirm", "design_row": -1, "seed": seed, "label": label} for seed in seeds for label, config in arms.items()]


def comparisons(runs: pd.DataFrame, *, negligible: float, alpha: float = ALPHA) -> pd.DataFrame:
    """confirm.parquet: the recipe against every other arm, from one fit of top-1 on the arm
    (the recipe as reference) and seed blocks: recipe minus the arm, Bonferroni intervals,
    Holm-adjusted p-values and the verdict (`better`, `worse`, `no different`: within
    ±negligible by an equivalence test, or `unclear`)."""
    others = [a for a in dict.fromkeys(runs["label"]) if a != RECIPE]
    if RECIPE not in set(runs["label"]) or not others or runs["seed"].nunique() < 2:
        return pd.DataFrame(columns=list(CONFIRM_COLUMNS))
    frame = pd.DataFrame({f"arm{i}": (runs["label"] == a).astype(float).to_numpy() for i, a in enumerate(others)})
    frame["seed"], frame["_y"] = runs["seed"].to_numpy(), runs["top1"].to_numpy(float)
    fit = block_fit(frame, "_y", list(frame.columns[: len(others)]))
    columns = list(fit.model.exog_names)
    simultaneous = alpha / len(others)
    estimates = []
    for i in range(len(others)):
        weights = np.zeros(len(columns))
        weights[columns.index(f"arm{i}")] = -1.0  # recipe minus the arm
        estimates.append(contrast(fit, weights, alpha=simultaneous))
    effect = np.array([e.effect for e in estimates])
    se = np.array([e.se for e in estimates])
    p_holm, p_equivalence, said = equivalence_verdicts(effect, se, np.array([e.p_value for e in estimates]), float(fit.df_resid), negligible, alpha)
    mean = runs.groupby("label")["top1"].mean()
    return pd.DataFrame(
        [
            {"comparison": f"recipe vs {ARMS.get(arm, arm)}", "arm": arm, "effect": e.effect, "ci_low": e.ci_low, "ci_high": e.ci_high,
             "p_value": e.p_value, "p_holm": p_holm[i], "p_equivalence_holm": p_equivalence[i], "verdict": SAYS[said[i]],
             "top1_recipe": float(mean[RECIPE]), "top1_other": float(mean[arm]), "n_seeds": int(runs["seed"].nunique()), "df": e.df}
            for i, (arm, e) in enumerate(zip(others, estimates))
        ],
        columns=list(CONFIRM_COLUMNS),
    )  # fmt: skip


def _beats_none(table: pd.DataFrame) -> bool:
    row = table[table["arm"] == NONE]
    return bool(len(row)) and row["verdict"].iloc[0] == "better"


class Confirm(Study):
    name = "confirm"
    command = "confirm"
    help = "confirm the recipe a screened search recommends against no augmentation, the original set and the best config"
    follows = "screen"
    flags = (Flag("--seeds", int, "confirm.seeds"),)
    tables = {
        "recipe": "what the recipe does with each screened augmentation",
        "confirm_runs": "the confirmation's runs",
        "confirm": "the recipe against each other arm, paired by seed",
    }

    def enabled(self, cfg: SearchConfig) -> bool:
        return cfg.screen.enabled and cfg.confirm.enabled

    def _arms(self, ctx: StudyContext, recipe: dict[str, Any], effects: pd.DataFrame) -> dict[str, dict[str, Any]]:
        names = list(ctx.space.augmentations)
        original = original_set(ctx.folder.read("trials"), effects, ctx.cfg.confirm.compare)
        arms = {RECIPE: recipe}
        if strengths_in(recipe):  # else the recipe is no augmentation
            arms[NONE] = common.with_augmentations(common.base_settings(recipe), {}, names)
        arms[ORIGINAL] = common.with_augmentations(common.base_settings(recipe), original, sorted({*names, *original}))
        best = ctx.folder.read("best_configs")
        if best is not None and len(best):
            arms[BEST] = config_from_row(best.iloc[0])
        # an arm that trains what an earlier one trains would repeat it to the digit
        distinct: dict[str, dict[str, Any]] = {}
        for label, config in arms.items():
            if all(config_columns(config) != config_columns(other) for other in distinct.values()):
                distinct[label] = config
        return distinct

    def run(self, ctx: StudyContext) -> None:
        """Train the recipe beside the other arms over confirm.seeds seeds (and, should the
        recipe not beat no augmentation, the recipe without its worst kept augmentation);
        write confirm_runs.parquet; keep the recipe's trained weights of seed 0."""
        from tune_search.studies import analyse

        cfg = ctx.cfg
        # the screen's and dose-response's verdicts, and the recipe they give
        tables = analyse(ctx.folder.read_all(), cfg, [], None)
        table = tables.get("recipe")
        if table is None:
            return
        names = list(ctx.space.augmentations)
        recipe = recipe_config(config_from_row(ctx.folder.read("screen").iloc[0]), table, names)
        arms = self._arms(ctx, recipe, tables["effects"])
        seeds = list(range(cfg.confirm.seeds))
        print(f"confirm: {len(arms) * len(seeds)} runs (the recipe, " + ", ".join(ARMS[a] for a in arms if a != RECIPE) + f"; {len(seeds)} seeds)")
        _, runs = common.train(ctx, confirm_configs(arms, seeds), "confirm")
        kept = table[table["decision"] == "kept"].sort_values("effect")
        if len(kept) and not _beats_none(comparisons(runs, negligible=cfg.screen.negligible)):
            worst = kept["augmentation"].iloc[0]
            print(f"confirm: the recipe does not beat no augmentation; trying it once without {worst}, its worst kept augmentation")
            reduced = {**recipe, f"aug_{worst}": False}
            reduced.pop(strength_key(worst), None)
            _, extra = common.train(ctx, confirm_configs({REDUCED: reduced}, seeds), "confirm-reduced")
            runs = pd.concat([runs, extra], ignore_index=True)
        ctx.folder.write("confirm_runs", runs)
        keep = set(runs.loc[(runs["label"] == RECIPE) & (runs["seed"] == 0), "trial_id"])
        common.prune(ctx, "confirm", "confirm-reduced", keep=keep)

    def analyse(self, tables: Tables, cfg: SearchConfig, classes: Sequence[str]) -> dict[str, pd.DataFrame]:
        effects, screen = tables.get("effects"), tables.get("screen")
        if screen is None or effects is None or (effects["verdict"] == "not screened").all():
            return {}
        table = decisions(effects, keep_unclear=cfg.recipe.keep_unclear)
        recipe = recipe_config(config_from_row(screen.iloc[0]), table, list(cfg.space.augmentation_names))
        out = {"recipe": table}
        runs, top1, final = tables.get("confirm_runs"), math.nan, RECIPE
        if runs is not None:
            out["confirm"] = comparisons(runs, negligible=cfg.screen.negligible)
            if (runs["label"] == REDUCED).any() and not _beats_none(out["confirm"]) and _reduced_beats_none(runs, cfg):
                recipe, final = config_from_row(runs[runs["label"] == REDUCED].iloc[0]), REDUCED
                out["recipe"] = _without(table, strengths_in(recipe))
            top1 = float(runs.loc[runs["label"] == final, "top1"].mean())
        if "best_configs" in tables:
            out["best_configs"] = recommended_row(recipe, tables["best_configs"], top1, cfg.budget.max_epochs)
        return out

    def files(self, tables: Tables, cfg: SearchConfig) -> dict[str, str]:
        best = tables.get("best_configs")
        if best is None or not (best["trial_id"] == RECOMMENDED).any():
            return {}
        row = int(np.flatnonzero(best["trial_id"] == RECOMMENDED)[0])
        return {"recipe.yaml": recipe_space(cfg, config_from_row(best.iloc[row]), row)}

    def headline(self, tables: Tables) -> list[str]:
        lines = [line.strip() for line in recipe_lines(tables)]
        if not lines:
            return []
        recipe, where, *rest = lines
        return ["## The answer", "", f"**Train with {recipe.removeprefix('recipe: ')}** {where}.", "", *(f"- {line}" for line in rest), ""]

    def closing(self, tables: Tables) -> str | None:
        lines = recipe_lines(tables)
        return "\n".join(lines) if lines else None


def _reduced_beats_none(runs: pd.DataFrame, cfg: SearchConfig) -> bool:
    """Whether the recipe without its worst kept augmentation beats no augmentation."""
    mine = runs[runs["label"].isin([REDUCED, NONE])].replace({"label": {REDUCED: RECIPE}})
    return _beats_none(comparisons(mine, negligible=cfg.screen.negligible))


def _without(table: pd.DataFrame, on: Mapping[str, float]) -> pd.DataFrame:
    """The recipe's decisions with the augmentations no longer on marked `dropped after confirmation`."""
    table = table.copy()
    gone = (table["decision"] == "kept") & ~table["augmentation"].isin(list(on))
    table.loc[gone, "decision"] = "dropped after confirmation"
    table.loc[gone, "strength"] = math.nan
    return table


def recipe_lines(tables: Tables) -> list[str]:
    """The recipe and its confirmed gains, in a few lines (the report's top, the console's end)."""
    table, best = tables.get("recipe"), tables.get("best_configs")
    if table is None or best is None or not (best["trial_id"] == RECOMMENDED).any():
        return []
    rows = np.flatnonzero(best["trial_id"] == RECOMMENDED)
    recipe = config_from_row(best.iloc[int(rows[0])])
    on = strengths_in(recipe)
    lines = [
        f"recipe: {', '.join(f'{n} {s:.2f}' for n, s in on.items()) or 'no augmentation'} at {describe_settings(recipe)}",
        f"  (best_configs.parquet row {int(rows[0])}, recipe.yaml)",
    ]
    for label, title in (("dropped", "dropped (hurts)"), ("left out", "left out (unclear)"), ("dropped after confirmation", "dropped after confirmation")):
        names = list(table.loc[table["decision"] == label, "augmentation"])
        if names:
            lines.append(f"  {title}: {', '.join(names)}")
    confirm = tables.get("confirm")
    if confirm is None or not len(confirm):
        return lines + ["  not confirmed: run `tune-search confirm RESULTS_DIR`"]
    first = confirm.iloc[0]
    gains = "; ".join(f"vs {ARMS.get(r['arm'], r['arm'])}: {render.row_interval(r)} ({r['verdict']})" for _, r in confirm.iterrows())
    lines.append(f"confirmed over {int(first['n_seeds'])} seeds, points of top-1, recipe minus the other, Bonferroni 95 % intervals, Holm-corrected: {gains}")
    if not _beats_none(confirm) and NONE in set(confirm["arm"]):
        lines.append("  the recipe does not beat no augmentation here" + ("; without its worst kept augmentation it does" if (table["decision"] == "dropped after confirmation").any() else ""))
    return lines

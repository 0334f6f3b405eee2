"""The confirmation: every candidate trained at full budget, and the best measured recommended.

The arms: the recipe (`recipe.decisions`: the focused screen's verdicts, the sweep's
strengths), no augmentation, the original set (the all + aug baseline's augmentations, or
`confirm.compare`), the search's best config, and the recipe plus each augmentation of the
best config whose deciding verdict is not `hurts` (at the best config's strength), and each
automatic policy of `confirm.policies` alone (TrivialAugmentWide by default) at the recipe's
settings: the policies to beat. Arms that train the same config once. Every arm runs over `confirm.seeds` seeds, paired by seed; one
least-squares fit (an arm term each, a block per seed) gives every pair of arms' difference
with an interval simultaneous over all pairs (Bonferroni, at the confirmation's share of the
procedure's 5 %), each verdict read off its interval. The recommendation is the arm measured
best or, among the arms within the equivalence margin of it that no arm measured better, the
simplest (fewest augmentations): never an arm another one measured better.
"""

from __future__ import annotations

import math
import shlex
from collections.abc import Mapping, Sequence
from itertools import combinations
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pandas as pd
import yaml
from pydantic import Field

from tune_search import render
from tune_search.console import display_path
from tune_search.constants import BASELINES, MOTIVATING
from tune_search.export import CONFIRMED, Recommendation, config_columns, config_from_row
from tune_search.schemas import BOOL, CONFIG, DIFFERENCE, FLOAT, FRACTION, INT, INTERVAL, PROBABILITY, RUNS, STRENGTH, STRING, Table, columns
from tune_search.sections import SearchConfigBase, Section
from tune_search.stats import ALPHA, block_fit, contrast, simultaneous
from tune_search.studies import run_configs, training
from tune_search.studies._base import Flag, Study, StudyContext, Tables
from tune_search.studies.errors import stage_alpha
from tune_search.studies.recipe import RecipeConfig, decisions, recipe_config
from tune_search.studies.run_configs import known_augmentations
from tune_search.trainable import declared as declaring
from tune_search.trainable.augment import strengths_in, switch_key
from tune_search.trainable.hyperparameters import describe_settings

RECIPE, NONE, ORIGINAL, BEST, PLUS, POLICY = "recipe", "none", "original", "best", "recipe + ", "policy "
ARMS = {RECIPE: "the recipe", NONE: "no augmentation", ORIGINAL: "the original set", BEST: "the search's best config"}
CONFIRM_COLUMNS = (
    "comparison", "arm", "effect", "ci_low", "ci_high", "p_value", "p_adjusted", "p_equivalence_adjusted", "verdict",
    "top1_recommended", "top1_other", "n_seeds", "df",
)  # fmt: skip
ARM_COLUMNS = ("arm", "augmentations", "n_augmentations", "top1", "n_seeds", "rank", "best_measured", "recommended", "negligible", "trial_id")
SAYS = {"helps": "better", "hurts": "worse", "harmless": "no different", "unclear": "unclear"}  # one arm against another


class ConfirmConfig(Section):
    """The confirmation study: the recipe against no augmentation, the original set and the
    search's best config, at full budget, paired by seed."""

    enabled: bool = True
    # 5: with 3 seeds and 3 arms the fit has 4 residual degrees of freedom, and an interval
    # simultaneous over the pairs at the confirmation's share needs t = 7.2 (4.0 with 5 seeds)
    seeds: Annotated[int, Field(ge=2)] = 5
    compare: tuple[str, ...] | None = None  # the original set; None: the all + aug baseline's
    # automatic-policy arms: v2 policy classes (declaring.POLICIES) or entries the space declares
    policies: tuple[str, ...] = ("TrivialAugmentWide",)


def describe_arm(arm: str) -> str:
    return ARMS.get(arm, arm.removeprefix(POLICY))  # `recipe + NAME` arms are named as they are, policies by their class


def _on_text(config: Mapping[str, Any]) -> str:
    return ", ".join(f"{n} {s:.2f}" for n, s in strengths_in(config).items()) or "no augmentation"


def recipe_space(cfg: SearchConfigBase, recipe: Mapping[str, Any], row: int, folder: str = ".") -> str:
    """recipe.yaml: the run's space file narrowed to the recommendation (its settings fixed,
    only its augmentations searched, at their strengths), with how to re-train it exactly;
    the commands name the files in `folder` (the results folder as the user types it)."""
    here = "" if folder in ("", ".") else folder.rstrip("/") + "/"
    space_file, table = shlex.quote(here + "recipe.yaml"), shlex.quote(here + "best_configs.parquet")
    tree = yaml.safe_load(cfg.dump())
    on = strengths_in(recipe)
    tree["space"] |= {k: recipe[k] for k in ("lr", "freeze_depth", "weight_decay", "batch_size", "label_smoothing")}
    tree["space"]["augmentations"] = cfg.space_items(on) or tree["space"]["augmentations"]
    if on:
        low, high = min(on.values()), max(on.values())
        tree["space"]["strength"] = [low, high]
    else:
        tree["screen"]["enabled"] = False
    head = (
        f"# The recipe tune-search recommends: {describe_settings(recipe)}; "
        f"augmentations: {', '.join(f'{n} {s:.2f}' for n, s in on.items()) or 'none'}.\n"
        f"# Re-train it exactly: tune-search --space {space_file} --config-from {table} --row {row}\n"
        f"# Search around it: tune-search --space {space_file} (its settings fixed, its augmentations searched)\n"
    )
    return head + yaml.safe_dump(tree, sort_keys=False)


def original_set(trials: pd.DataFrame | None, effects: pd.DataFrame, compare: Sequence[str] | None) -> dict[str, float]:
    """The augmentations a user trained with before: `compare` at the screen's strengths, else
    the all + aug baseline's (the thread's six the space searches), as the search ran them, else
    (the baseline left out) those same ones at the screen's strengths."""
    screened = effects.set_index("augmentation")["strength"].dropna()
    if compare is not None:
        return {n: float(screened.get(n, 0.5)) for n in compare}
    if trials is not None and len(row := trials[trials["baseline"] == BASELINES[2]]):
        return strengths_in(config_from_row(row.iloc[0]))
    return {n: float(screened[n]) for n in MOTIVATING if n in screened.index}


def arms(
    recipe: dict[str, Any],
    best: dict[str, Any] | None,
    original: Mapping[str, float],
    verdicts: pd.DataFrame,
    names: Sequence[str],
    policies: Mapping[str, str] | None = None,
) -> dict[str, dict[str, Any]]:
    """Every arm's trial config, each distinct config once (the first label that trains it).
    `verdicts`: each augmentation's deciding verdict (`recipe.decisions`, or the screen's
    effects); the best config's augmentations called `hurts` there are not added to the recipe.
    `policies`: {arm label: augmentation name} of the automatic policies, each trained alone at
    the recipe's settings."""
    settings = run_configs.base_settings(recipe)
    out = {RECIPE: recipe, NONE: run_configs.with_augmentations(settings, {}, names)}
    out[ORIGINAL] = run_configs.with_augmentations(settings, original, sorted({*names, *original}))
    if best is not None:
        out[BEST] = best
        hurts = set(verdicts.loc[verdicts["verdict"] == "hurts", "augmentation"])
        mine = strengths_in(recipe)
        for name, strength in strengths_in(best).items():
            if name not in hurts and name not in mine and name in names:
                out[PLUS + name] = run_configs.with_augmentations(settings, {**mine, name: strength}, names)
    for label, name in (policies or {}).items():
        out[label] = run_configs.with_augmentations(settings, {name: 1.0}, [*names, name])
    switches = [n for n in (policies or {}).values() if n not in names]
    out = {label: {**dict.fromkeys(map(switch_key, switches), False), **config} for label, config in out.items()}
    distinct: dict[str, dict[str, Any]] = {}
    for label, config in out.items():
        if all(config_columns(config) != config_columns(other) for other in distinct.values()):
            distinct[label] = config
    return distinct


def policy_arms(cfg: SearchConfigBase) -> dict[str, str]:
    """{arm label: augmentation name} of `confirm.policies`: `policy TrivialAugmentWide`, ..."""
    return {POLICY + shown: name for shown, name in zip(cfg.confirm.policies, cfg.policy_names)}


def confirm_configs(arms: Mapping[str, Mapping[str, Any]], seeds: Sequence[int]) -> list[dict[str, Any]]:
    """Every arm (a label and its trial config) once per seed."""
    return [{**config, "study": "confirm", "design_row": -1, "seed": seed, "label": label} for seed in seeds for label, config in arms.items()]


def pairwise(runs: pd.DataFrame, *, negligible: float, alpha: float = ALPHA) -> pd.DataFrame:
    """Every ordered pair of arms (a, b): a minus b in top-1 from one fit of top-1 on the arms
    and seed blocks, with intervals simultaneous over the unordered pairs (`stats.simultaneous`)
    and the verdict read off each (`better`, `worse`, `no different`: within ±negligible,
    `unclear`)."""
    labels = list(dict.fromkeys(runs["label"]))
    if len(labels) < 2 or runs["seed"].nunique() < 2:
        return pd.DataFrame(columns=["a", "b", "effect", "ci_low", "ci_high", "p_value", "p_adjusted", "p_equivalence_adjusted", "verdict", "df"])
    frame = pd.DataFrame({f"arm{i}": (runs["label"] == a).astype(float).to_numpy() for i, a in enumerate(labels[1:])})
    frame["seed"], frame["_y"] = runs["seed"].to_numpy(), runs["top1"].to_numpy(float)
    fit = block_fit(frame, "_y", list(frame.columns[: len(labels) - 1]))
    columns = list(fit.model.exog_names)

    def weight(label: str) -> np.ndarray:
        w = np.zeros(len(columns))
        if label != labels[0]:
            w[columns.index(f"arm{labels.index(label) - 1}")] = 1.0
        return w

    pairs = list(combinations(labels, 2))
    estimates = [contrast(fit, weight(a) - weight(b)) for a, b in pairs]
    judged = simultaneous([e.effect for e in estimates], [e.se for e in estimates], float(fit.df_resid), negligible, alpha)
    rows = []
    for i, ((a, b), e) in enumerate(zip(pairs, estimates)):
        said = judged.said[i]
        common_row = {"p_value": e.p_value, "p_adjusted": judged.p_adjusted[i], "p_equivalence_adjusted": judged.p_equivalence_adjusted[i], "df": e.df}
        rows.append({"a": a, "b": b, "effect": e.effect, "ci_low": judged.ci_low[i], "ci_high": judged.ci_high[i], "verdict": SAYS[said], **common_row})
        flipped = {"helps": "hurts", "hurts": "helps"}.get(said, said)
        rows.append({"a": b, "b": a, "effect": -e.effect, "ci_low": -judged.ci_high[i], "ci_high": -judged.ci_low[i], "verdict": SAYS[flipped], **common_row})
    return pd.DataFrame(rows)


def arm_table(runs: pd.DataFrame, pairs: pd.DataFrame, negligible: float) -> pd.DataFrame:
    """confirm_arms.parquet: per arm its augmentations, mean top-1 over its seeds and rank, the
    one measured best, and the recommended one: the simplest arm (fewest augmentations, then
    the higher mean) whose mean is within ±negligible of the best's and that no arm measured
    better (no `worse` verdict against any other arm); the best measured arm when none is
    simpler."""
    mean = runs.groupby("label", sort=False)["top1"].mean()
    seeds = runs.groupby("label", sort=False)["seed"].nunique()
    first = runs.drop_duplicates("label").set_index("label")
    count = {a: len(strengths_in(first.loc[a].to_dict())) for a in mean.index}
    best = str(mean.idxmax())
    beaten = set(pairs.loc[pairs["verdict"] == "worse", "a"]) if len(pairs) else set()
    tied = [a for a in mean.index if mean[a] >= mean[best] - negligible and a not in beaten]
    chosen = min(tied, key=lambda a: (count[a], -mean[a])) if tied else best
    table = pd.DataFrame(
        {
            "arm": list(mean.index),
            "augmentations": [_on_text(first.loc[a].to_dict()) for a in mean.index],
            "n_augmentations": [count[a] for a in mean.index],
            "top1": mean.to_numpy(float),
            "n_seeds": seeds.reindex(mean.index).to_numpy(int),
        }
    )
    table["rank"] = table["top1"].rank(ascending=False, method="min").astype(int)
    table["best_measured"] = table["arm"] == best
    table["recommended"] = table["arm"] == chosen
    table["negligible"] = negligible
    earliest = runs.sort_values("seed", kind="stable").drop_duplicates("label").set_index("label")
    table["trial_id"] = [str(earliest.loc[a, "trial_id"]) if "trial_id" in earliest else "" for a in mean.index]  # the run whose weights are kept
    configs = pd.DataFrame([config_columns(first.loc[a].to_dict()) for a in mean.index])
    table = pd.concat([table[list(ARM_COLUMNS)], configs], axis=1)
    return table.sort_values("rank", kind="stable").reset_index(drop=True)


def comparisons(pairs: pd.DataFrame, arm_summary: pd.DataFrame) -> pd.DataFrame:
    """confirm.parquet: the recommended arm against every other arm (recommended minus the
    other), from the pairwise family."""
    if not len(pairs) or not len(arm_summary):
        return pd.DataFrame(columns=list(CONFIRM_COLUMNS))
    chosen = arm_summary.loc[arm_summary["recommended"], "arm"].iloc[0]
    mean = arm_summary.set_index("arm")["top1"]
    seeds = arm_summary.set_index("arm")["n_seeds"]
    mine = pairs[pairs["a"] == chosen]
    return pd.DataFrame(
        [
            {"comparison": f"{describe_arm(chosen)} vs {describe_arm(r['b'])}", "arm": r["b"], "effect": r["effect"],
                "ci_low": r["ci_low"], "ci_high": r["ci_high"],
             "p_value": r["p_value"], "p_adjusted": r["p_adjusted"], "p_equivalence_adjusted": r["p_equivalence_adjusted"], "verdict": r["verdict"],
             "top1_recommended": float(mean[chosen]), "top1_other": float(mean[r["b"]]), "n_seeds": int(seeds[chosen]), "df": r["df"]}
            for _, r in mine.iterrows()
        ],
        columns=list(CONFIRM_COLUMNS),
    )  # fmt: skip


class Confirm(Study):
    name = "confirm"
    sections = {"recipe": RecipeConfig, "confirm": ConfirmConfig}

    def consistent(self, cfg: SearchConfigBase) -> None:
        searched = cfg.space.augmentation_names
        known_augmentations("confirm.compare", cfg.confirm.compare, cfg, None)
        for name in cfg.confirm.policies:
            if name not in declaring.POLICIES and name not in searched:
                raise ValueError(
                    f"confirm.policies: {name!r} is neither an automatic policy ({', '.join(declaring.POLICIES)}) nor an entry the space declares; [] for none"
                )

    command = "confirm"
    help = (
        "train the recipe beside no augmentation, the original set,"
        " the search's best config and the recipe plus each of its augmentations; recommend the best measured"
    )
    follows = "screen"
    flags = (Flag("--seeds", int, "confirm.seeds"),)
    tables = {
        "recipe": Table(
            "what the recipe does with each screened augmentation",
            [*columns("augmentation, stage, verdict", STRING), *INTERVAL, *columns("decision", STRING), *columns("strength", FLOAT, STRENGTH)],
        ),
        "confirm_runs": Table("the confirmation's runs", RUNS),
        "confirm_arms": Table(
            "every arm's mean top-1, the best measured and the recommended",
            [
                *columns("arm, augmentations", STRING),
                *columns("n_augmentations", INT),
                *columns("top1", FLOAT, FRACTION),
                *columns("n_seeds, rank", INT),
                *columns("best_measured, recommended", BOOL),
                *columns("negligible", FLOAT, DIFFERENCE),
                *columns("trial_id", STRING),
                *CONFIG,
            ],
        ),
        "confirm": Table(
            "the recommended arm against each other arm, paired by seed",
            [
                *columns("comparison, arm", STRING),
                *INTERVAL,
                *columns("p_value, p_adjusted, p_equivalence_adjusted", FLOAT, PROBABILITY),
                *columns("verdict", STRING),
                *columns("top1_recommended, top1_other", FLOAT, FRACTION),
                *columns("n_seeds", INT),
                *columns("df", FLOAT),
            ],
        ),
    }

    def enabled(self, cfg: SearchConfigBase) -> bool:
        return cfg.screen.enabled and cfg.confirm.enabled

    def run(self, ctx: StudyContext) -> None:
        """Train every arm over confirm.seeds seeds; write confirm_runs.parquet; keep the
        recommended arm's trained weights of seed 0."""
        from tune_search.studies import analyse

        cfg = ctx.cfg
        tables = analyse(ctx.folder.read_all(), cfg, [], None)  # the analysis tables only
        screen = ctx.folder.read("screen")
        if screen is None or "effects" not in tables:
            return
        names = list(ctx.space.augmentations)
        table = decisions(tables["effects"], tables.get("focus"), tables.get("sweep"), cfg.recipe)
        recipe = recipe_config(config_from_row(screen.iloc[0]), table, names)
        best = ctx.folder.read("best_configs")
        best_config = config_from_row(best.iloc[0]) if best is not None and len(best) else None
        original = original_set(ctx.folder.read("trials"), tables["effects"], cfg.confirm.compare)
        chosen = arms(recipe, best_config, original, table, names, policy_arms(cfg))
        seeds = list(range(cfg.confirm.seeds))
        print(f"confirm: {len(chosen) * len(seeds)} runs ({', '.join(describe_arm(a) for a in chosen)}; {len(seeds)} seeds)")
        _, runs = training.train(ctx, confirm_configs(chosen, seeds), "confirm")
        ctx.folder.write("confirm_runs", runs)
        summary = arm_table(runs, pairwise(runs, negligible=cfg.screen.negligible, alpha=stage_alpha(cfg, "confirm")), cfg.screen.negligible)
        recommended = summary.loc[summary["recommended"], "arm"].iloc[0]
        training.prune(ctx, "confirm", keep=set(runs.loc[(runs["label"] == recommended) & (runs["seed"] == 0), "trial_id"]))

    def analyse(self, tables: Tables, cfg: SearchConfigBase, classes: Sequence[str]) -> dict[str, pd.DataFrame]:
        effects, screen = tables.get("effects"), tables.get("screen")
        if screen is None or effects is None or (effects["verdict"] == "not screened").all():
            return {}
        table = decisions(effects, tables.get("focus"), tables.get("sweep"), cfg.recipe)
        out = {"recipe": table}
        runs = tables.get("confirm_runs")
        if runs is not None and len(runs):
            pairs = pairwise(runs, negligible=cfg.screen.negligible, alpha=stage_alpha(cfg, "confirm"))
            out["confirm_arms"] = summary = arm_table(runs, pairs, cfg.screen.negligible)
            out["confirm"] = comparisons(pairs, summary)
        return out

    def recommendation(self, tables: Tables) -> Recommendation | None:
        """The recommended arm of confirm_arms.parquet: its config, mean top-1 over its seeds
        and the run whose weights are kept (seed 0)."""
        arms, table, screen = tables.get("confirm_arms"), tables.get("recipe"), tables.get("screen")
        if arms is not None and arms["recommended"].any():
            row = arms[arms["recommended"]].iloc[0]
            epochs = int(tables["confirm_runs"]["epochs"].max())
            return Recommendation(config_from_row(row), float(row["top1"]), int(row["n_seeds"]), epochs, str(row["trial_id"]))
        if table is None or screen is None or not len(screen):
            return None
        # not confirmed yet: the recipe, no top-1 measured (0 seeds)
        recipe = recipe_config(config_from_row(screen.iloc[0]), table, list(table["augmentation"]))
        return Recommendation(recipe, math.nan, 0, int(screen["epochs"].max()), "")

    def files(self, tables: Tables, cfg: SearchConfigBase, folder: Path) -> dict[str, str]:
        best = tables.get("best_configs")
        if best is None or not (best["source"] == CONFIRMED).any():
            return {}
        row = int(np.flatnonzero(best["source"] == CONFIRMED)[0])
        return {"recipe.yaml": recipe_space(cfg, config_from_row(best.iloc[row]), row, display_path(folder))}

    def headline(self, tables: Tables) -> list[str]:
        lines = [line.strip() for line in recipe_lines(tables)]
        if not lines:
            return []
        recipe, where, *rest = lines
        return ["## The answer", "", f"**Train with {recipe.removeprefix('recommended: ')}**, {where}.", "", *(f"- {line}" for line in rest), ""]

    def closing(self, tables: Tables) -> str | None:
        lines = recipe_lines(tables)
        return "\n".join(lines) if lines else None


def recipe_lines(tables: Tables) -> list[str]:
    """The recommendation, which arm it is and by how much it won, in a few lines (the
    report's top, the console's end)."""
    table, best = tables.get("recipe"), tables.get("best_configs")
    if table is None or best is None or not (best["source"] == CONFIRMED).any():
        return []
    rows = np.flatnonzero(best["source"] == CONFIRMED)
    recommended = config_from_row(best.iloc[int(rows[0])])
    lines = [f"recommended: {_on_text(recommended)} at {describe_settings(recommended)}", f"  (best_configs.parquet row {int(rows[0])}, recipe.yaml)"]
    for label, title in (("kept", "the recipe arm keeps"), ("dropped", "dropped (hurts)"), ("left out", "left out")):
        mine = table[table["decision"] == label]
        if len(mine):
            lines.append(
                f"  {title}: "
                + ", ".join(f"{r['augmentation']} ({r['verdict']}{', ' + r['stage'] if r['stage'] == 'focus' else ''})" for _, r in mine.iterrows())
            )
    summary, confirm = tables.get("confirm_arms"), tables.get("confirm")
    if summary is None or confirm is None or not len(confirm):
        return lines + ["  not confirmed: run `tune-search confirm RESULTS_DIR`"]
    chosen = summary[summary["recommended"]].iloc[0]
    best_arm = summary[summary["best_measured"]].iloc[0]
    why = (
        f"the best measured of {len(summary)} arms"
        if chosen["arm"] == best_arm["arm"]
        else f"the simplest within ±{100 * chosen['negligible']:.1f} points of the best measured"
        f" ({describe_arm(best_arm['arm'])}, top-1 {best_arm['top1']:.3f}) that no arm measured better"
    )
    lines.insert(1, f"  which is the arm {describe_arm(chosen['arm'])}, {why}; top-1 {chosen['top1']:.3f}, mean of {int(chosen['n_seeds'])} seeds")
    pairs = len(summary) * (len(summary) - 1) // 2
    gains = "; ".join(f"vs {describe_arm(r['arm'])}: {render.row_interval(r)} ({r['verdict']})" for _, r in confirm.sort_values("effect").iterrows())
    lines.append(
        f"confirmed over {int(chosen['n_seeds'])} seeds, points of top-1, recommended minus the other,"
        f" intervals simultaneous over the {pairs} pairs of arms: {gains}"
    )
    return lines

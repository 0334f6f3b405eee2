"""The screen: which augmentations hurt, with honest intervals.

A two-level design over the searched augmentations (a Plackett-Burman design folded over:
resolution IV, so no main effect is aliased with a two-factor interaction), every run at the
same other settings and the full budget, replicated over seeds, plus one run without
augmentation (the clean model affinity is measured on). Main effects come from one
least-squares fit of top-1 on the ±1 switches plus one block per seed, with simultaneous
intervals from the residual error (Bonferroni across the augmentations, at the screen's share
of the procedure's 5 %: `errors`), each verdict read off its interval; and the smallest harm the
screen would detect with 80 % power is stated beside them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from itertools import combinations
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import pandas as pd
from pydantic import Field
from pyDOE3 import fold, pbdesign

from tune_search import render
from tune_search.constants import BASELINES, CLEAN, MOTIVATING
from tune_search.schemas import DIFFERENCE, FLOAT, FRACTION, NATS, PROBABILITY, RUNS, STRENGTH, STRING, VERDICT_COLUMNS, Table, columns
from tune_search.sections import PositiveInt, SearchConfigBase, Section, Strength
from tune_search.stats import (
    ALPHA,
    MainEffects,
    detectable_effect,
    equivalence_p,
    fdr_adjusted,
    main_effects,
    mean_prediction,
    replicates_to_settle,
    simultaneous,
)
from tune_search.studies import run_configs, training
from tune_search.studies._base import Flag, Study, StudyContext, Tables
from tune_search.studies.errors import look_alpha
from tune_search.trainable.augment import strength_key, switch_key
from tune_search.trainable.hyperparameters import KEYS as HYPERPARAMETER_KEYS

EFFECT_COLUMNS = tuple(c.name for c in VERDICT_COLUMNS)  # screen_effects' columns, augmentation first
NOT_SCREENED = "not screened"
VERDICTS = ("hurts", "helps", "harmless", "unclear")


class ScreenConfig(Section):
    """The screening study after the search: a two-level design over the searched
    augmentations at fixed other settings."""

    enabled: bool = True
    base: Literal["best", "baseline"] = "best"  # the best config's settings, or the "all layers" baseline's
    strength: Strength | dict[str, Strength] | None = None  # None: the baselines' strength
    seeds: PositiveInt | Literal["auto"] = "auto"  # auto: replicates added while any verdict is unclear
    negligible: Annotated[float, Field(gt=0, lt=1)] = 0.01  # harmless: an equivalence test puts the effect within +-this
    max_seeds: PositiveInt = 1  # the focused screen decides what the screen leaves unclear


def family_alpha(cfg: SearchConfigBase) -> float:
    """The error rate each look at the screen spends (`errors.look_alpha`): with `screen.seeds:
    auto` the screen is looked at after every replicate, up to `max_seeds` times, and its share
    of the procedure's 5 % is split over the looks (a union bound)."""
    return look_alpha(cfg, "screen")


# configs -------------------------------------------------------------------------------------


def screening_design(factors: int) -> np.ndarray:
    """A two-level design in -1/+1 with one column per factor, at resolution IV: a
    Plackett-Burman design folded over, so that no main effect is aliased with any
    two-factor interaction (12 factors: 32 runs; 6: 16; 5: 16)."""
    if factors < 1:
        raise ValueError("a screen needs at least one augmentation")
    return fold(pbdesign(factors)).astype(int)


def max_alias(design: np.ndarray) -> float:
    """The largest |correlation| between a main-effect column and any two-factor
    interaction column: 0 for a design of resolution IV or better."""
    worst = 0.0
    columns = design.astype(float)
    for i in range(columns.shape[1]):
        for j, k in combinations(range(columns.shape[1]), 2):
            if i in (j, k):
                continue
            worst = max(worst, abs(float(np.mean(columns[:, i] * columns[:, j] * columns[:, k]))))
    return worst


def screen_configs(base: Mapping[str, Any], strengths: Mapping[str, float], seeds: Sequence[int], *, clean_seed: int | None = 0) -> list[dict[str, Any]]:
    """Every row of the screening design over `strengths`' augmentations (on at that
    strength, or off), at `base`'s other settings, once per seed; plus one run with every
    augmentation off at `clean_seed` (its model is what affinity is measured on)."""
    names = list(strengths)
    design = screening_design(len(names))
    settings = run_configs.base_settings(base)
    out = []
    for seed in seeds:
        for row, levels in enumerate(design):
            on = {n: strengths[n] for n, level in zip(names, levels) if level > 0}
            out.append({**run_configs.with_augmentations(settings, on, names), "study": "screen", "design_row": row, "seed": seed, "label": ""})
    if clean_seed is not None:
        out.append({**run_configs.with_augmentations(settings, {}, names), "study": "screen", "design_row": -1, "seed": clean_seed, "label": CLEAN})
    return out


# analysis ------------------------------------------------------------------------------------


def design_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs that belong to the design (not the extra clean run)."""
    return runs[runs["design_row"] >= 0]


def fit(runs: pd.DataFrame, names: Sequence[str], response: str = "top1") -> MainEffects:
    """The design's main effects on `response`."""
    return main_effects(design_runs(runs), names, response)


def screen_effects(runs: pd.DataFrame, names: Sequence[str], *, alpha: float = ALPHA, negligible: float = 0.01) -> pd.DataFrame:
    """The screen's columns of effects.parquet: per augmentation, the effect of switching it
    on (top-1, a difference of fractions; negative hurts) with its simultaneous interval at
    `alpha` (Bonferroni across the augmentations) and the verdict read off it
    (`stats.simultaneous`), raw and adjusted p-values, the smallest harm this screen detects
    with 80 % power, the equivalence test's p-values (raw and adjusted) against ±`negligible`,
    for an `unclear` one how many replicates in all would likely settle it, and the effect on
    top-5 (with its plain 95 % interval: no verdict rests on it)."""
    top1 = fit(runs, names, "top1")
    if runs["top5"].notna().all():
        top5 = fit(runs, names, "top5")
        (low5, high5), effect5 = top5.conf_int(), top5.effect
    else:  # 5 classes or fewer: top-5 is not measured
        low5 = high5 = effect5 = np.full(len(names), math.nan)
    effect, se = top1.effect, top1.se
    p_value = top1.p_value
    judged = simultaneous(effect, se, top1.df, negligible, alpha)
    low, high, adjusted, equivalent, said = judged.ci_low, judged.ci_high, judged.p_adjusted, judged.p_equivalence_adjusted, judged.said
    raw_equivalence = equivalence_p(effect, se, top1.df, negligible)
    replicates = runs["seed"].nunique()
    reach = {x: detectable_effect(x, top1.df, len(names), alpha=alpha) for x in set(np.round(se, 12))}  # one per distinct error
    design = design_runs(runs)
    rows = []
    for i, name in enumerate(names):
        on = design[design[switch_key(name)].astype(bool)]
        rows.append(
            {
                "augmentation": name,
                "strength": float(on[strength_key(name)].iloc[0]) if len(on) else math.nan,
                "effect": float(effect[i]),
                "ci_low": float(low[i]),
                "ci_high": float(high[i]),
                "p_value": float(p_value[i]),
                "p_adjusted": float(adjusted[i]),
                "verdict": said[i],
                "detectable": reach[round(float(se[i]), 12)],
                "negligible": negligible,
                "p_equivalence": float(raw_equivalence[i]),
                "p_equivalence_adjusted": float(equivalent[i]),
                "alpha": alpha,
                "settle_replicates": _settle(said[i], se[i], top1.df, replicates, effect[i], negligible, len(names), alpha),
                "top5_effect": float(effect5[i]),
                "top5_ci_low": float(low5[i]),
                "top5_ci_high": float(high5[i]),
                "n_runs": len(design),
                "df": top1.df,
            }
        )
    return pd.DataFrame(rows, columns=list(EFFECT_COLUMNS))


def _settle(verdict: str, se: float, df: float, replicates: int, effect: float, negligible: float, tests: int, alpha: float) -> float:
    if verdict != "unclear":
        return math.nan
    total = replicates_to_settle(se, df / replicates, replicates, effect, negligible, tests, alpha)
    return math.nan if total is None else float(total)


def another_replicate(runs: pd.DataFrame, names: Sequence[str], cfg: SearchConfigBase) -> bool:
    """The sequential rule of `screen.seeds: auto`: after a look, add a replicate while any
    verdict is unclear and fewer than `max_seeds` replicates ran."""
    if cfg.screen.seeds != "auto" or runs["seed"].nunique() >= cfg.screen.max_seeds:
        return False
    effects = screen_effects(runs, names, alpha=family_alpha(cfg), negligible=cfg.screen.negligible)
    return bool((effects["verdict"] == "unclear").any())


def harmful(runs: pd.DataFrame, names: Sequence[str], cfg: SearchConfigBase) -> list[str]:
    """The augmentations the screen calls harmful, most harmful first."""
    effects = screen_effects(runs, run_configs.screened(runs, names), alpha=family_alpha(cfg), negligible=cfg.screen.negligible)
    return list(effects[effects["verdict"] == "hurts"].sort_values("effect")["augmentation"])


PER_CLASS_COLUMNS = ("augmentation", "class", "change", "ci_low", "ci_high", "p_value", "p_fdr", "top1_with", "top1_without")


def per_class_effects(runs: pd.DataFrame, names: Sequence[str], classes: Sequence[str]) -> pd.DataFrame:
    """per_class.parquet: the same fit on each class's top-1: per augmentation and class, the
    change when it is on, with a 95 % interval and p-value, the p-value adjusted for the false
    discovery rate across every (augmentation, class) cell (Benjamini-Hochberg), and the mean
    class top-1 with it on and off."""
    design = design_runs(runs)
    accuracy = np.stack(design["per_class_top1"].to_list()).astype(float)
    rows = []
    for c, cls in enumerate(classes):
        frame = design.assign(_class=accuracy[:, c])
        if frame["_class"].isna().any():
            continue
        effects = main_effects(frame, names, "_class")
        low, high = effects.conf_int()
        for i, name in enumerate(names):
            on = frame[switch_key(name)].astype(bool)
            rows.append(
                {
                    "augmentation": name,
                    "class": cls,
                    "change": float(effects.effect[i]),
                    "ci_low": float(low[i]),
                    "ci_high": float(high[i]),
                    "p_value": float(effects.p_value[i]),
                    "top1_with": float(frame.loc[on, "_class"].mean()),
                    "top1_without": float(frame.loc[~on, "_class"].mean()),
                }
            )
    table = pd.DataFrame(rows, columns=list(PER_CLASS_COLUMNS))
    table["p_fdr"] = fdr_adjusted(table["p_value"]) if len(table) else []
    return table


def harmed_classes(per_class: pd.DataFrame | None, name: str, alpha: float = ALPHA, most: int = 3) -> pd.DataFrame:
    """The classes `name` harms after the false-discovery correction, most harmed first."""
    if per_class is None or not len(per_class) or "p_fdr" not in per_class:
        return pd.DataFrame(columns=list(PER_CLASS_COLUMNS))
    mine = per_class[(per_class["augmentation"] == name) & (per_class["p_fdr"] < alpha) & (per_class["change"] < 0)]
    return mine.nsmallest(most, "change")


def diversity(runs: pd.DataFrame, names: Sequence[str]) -> pd.DataFrame:
    """Per augmentation, how much it raises the final training loss (the same fit on
    train_loss): diversity in the sense of Gontijo-Lopes et al. (2021), with its interval."""
    effects = fit(runs, names, "train_loss")
    low, high = effects.conf_int()
    clean = runs.loc[runs["design_row"] < 0, "train_loss"]
    return pd.DataFrame(
        {
            "augmentation": list(names),
            "diversity": effects.effect,
            "diversity_ci_low": low,
            "diversity_ci_high": high,
            "clean_train_loss": float(clean.mean()) if len(clean) else math.nan,
        }
    )


def additivity(runs: pd.DataFrame, names: Sequence[str], bundle: Sequence[str], measured: float) -> dict[str, float]:
    """Do the main effects add up? The screen's fitted top-1 with `bundle` on and the rest
    off, with a 95 % prediction interval for one run, beside a `measured` run of that
    configuration (the search's all + aug baseline when the screen ran at its settings)."""
    results = fit(runs, names, "top1").fit
    columns = list(results.model.exog_names)
    blocks = [c for c in columns if c.startswith("C(seed)")]
    row = np.zeros(len(columns))
    row[columns.index("Intercept")] = 1.0
    row[[columns.index(c) for c in blocks]] = 1.0 / (len(blocks) + 1)  # averaged over the seed blocks
    for name in names:
        row[columns.index(name)] = 1.0 if name in bundle else -1.0
    none = row.copy()
    none[[columns.index(n) for n in names]] = -1.0
    frame = mean_prediction(results, np.vstack([row, none]), ALPHA)
    predicted, low, high = (float(frame[k].iloc[0]) for k in ("mean", "obs_ci_lower", "obs_ci_upper"))
    return {
        "predicted": predicted,
        "prediction_low": low,
        "prediction_high": high,
        "measured": measured,
        "predicted_none": float(frame["mean"].iloc[1]),
        "adds_up": bool(low <= measured <= high),
    }


def affinity_table(runs: pd.DataFrame, names: Sequence[str], strengths: pd.Series) -> pd.DataFrame:
    """affinity.parquet: per augmentation its strength, affinity (measured on the clean run's
    model) and diversity."""
    table = diversity(runs, names)
    table.insert(1, "strength", strengths.to_numpy())
    clean = runs[runs["label"] == CLEAN]
    table.insert(2, "affinity", [float(clean[f"affinity_{n}"].iloc[0]) if f"affinity_{n}" in clean and len(clean) else math.nan for n in names])
    return table


# the study -----------------------------------------------------------------------------------


def look_line(runs: pd.DataFrame, names: Sequence[str], cfg: SearchConfigBase, seeds: int) -> str:
    """One look at the screen so far, in a line: its noise, reach and verdict counts."""
    effects = screen_effects(runs, names, alpha=family_alpha(cfg), negligible=cfg.screen.negligible)
    residual = fit(runs, names).residual_sd
    counts = ", ".join(f"{n} {v}" for v in VERDICTS if (n := int((effects["verdict"] == v).sum())))
    if not math.isfinite(residual):  # one augmentation, one replicate: its two configs, no error estimate
        return f"screen after {seeds} replicate{'s' * (seeds != 1)}: no residual degrees of freedom yet; {counts}"
    return (
        f"screen after {seeds} replicate{'s' * (seeds != 1)}: residual SD {100 * residual:.2f} points,"
        f" detectable harm {100 * effects['detectable'].max():.2f} points; {counts}"
    )


def _measured_before(folder) -> dict[str, float]:
    """The affinity an earlier run of this screen measured on its clean run (screen.parquet),
    for a finished screen resumed after its checkpoints were pruned; {} when there is none."""
    runs = folder.read("screen")
    if runs is None or not runs["label"].eq(CLEAN).any():
        return {}
    clean = runs[runs["label"].eq(CLEAN)].iloc[0]
    return {c.removeprefix("affinity_"): float(clean[c]) for c in runs.columns if c.startswith("affinity_")}


def seeds_flag(text: str) -> int | str:
    """A replicate count, or `auto` (replicates added while any verdict is unclear)."""
    return text if text == "auto" else int(text)


def _run_line(cfg: SearchConfigBase, base: dict, names: list[str], replicates: int, fixed: bool, timing: str) -> str:
    shown = ", ".join(f"{k} {v:.3g}" for k, v in base.items())
    runs = len(screening_design(len(names))) + 1
    seeds = (
        f"{replicates} replicate{'s' * (replicates != 1)}"
        if fixed
        else f"replicates while a verdict is unclear (at most {cfg.screen.max_seeds}, each look at alpha {family_alpha(cfg):.3g})"
    )
    return (
        f"screen: {runs} runs per replicate ({len(names)} augmentations in a folded Plackett-Burman design, and none on), "
        f"{cfg.budget.max_epochs} epochs at the {cfg.screen.base} config's {shown}; {seeds}{timing}{' for the first' if timing and not fixed else ''}"
    )


class Screen(Study):
    name = "screen"
    sections = {"screen": ScreenConfig}
    effect_columns = tuple(VERDICT_COLUMNS[1:])
    effect_blank = {"verdict": NOT_SCREENED}

    def consistent(self, cfg: SearchConfigBase) -> None:
        strength, searched = cfg.screen.strength, cfg.space.augmentation_names
        stray = [n for n in strength if n not in searched] if isinstance(strength, dict) else []
        if stray:
            raise ValueError(f"screen.strength names {', '.join(stray)}, which the space does not search; searched: {', '.join(searched)}")

    command = "screen"
    help = "screen the augmentations of a finished search (then the studies that follow it)"
    flags = (Flag("--seeds", seeds_flag, "screen.seeds"), Flag("--strength", float, "screen.strength"), Flag("--base", str, "screen.base"))
    tables = {
        "screen": Table("the screen's runs", RUNS),
        "per_class": Table(
            "the screen's effects per class",
            [
                *columns("augmentation, class", STRING),
                *columns("change, ci_low, ci_high", FLOAT, DIFFERENCE),
                *columns("p_value, p_fdr", FLOAT, PROBABILITY),
                *columns("top1_with, top1_without", FLOAT, FRACTION),
            ],
        ),
        "affinity": Table(
            "affinity and diversity per augmentation",
            [
                *columns("augmentation", STRING),
                *columns("strength", FLOAT, STRENGTH),
                *columns("affinity", FLOAT, DIFFERENCE),
                *columns("diversity, diversity_ci_low, diversity_ci_high", FLOAT, "difference of mean cross-entropy, nats"),
                *columns("clean_train_loss", FLOAT, NATS),
            ],
        ),
    }

    def enabled(self, cfg: SearchConfigBase) -> bool:
        return cfg.screen.enabled

    def run(self, ctx: StudyContext) -> None:
        """Train the screen, replicated over seeds as screen.seeds says, measure affinity on
        its clean run, and write screen.parquet."""
        from tune_search.trainable.probes import affinity
        from tune_search.trainable.trial import TrialSettings

        cfg = ctx.cfg
        base = run_configs.study_base(ctx.folder, cfg.screen.base)
        strengths = run_configs.screen_strengths(cfg, ctx.space)
        names = list(strengths)
        fixed = cfg.screen.seeds != "auto"
        replicates = cfg.screen.seeds if fixed else 1
        design_size = len(screening_design(len(names)))
        timing = training.estimate(ctx.folder, [(int(base["freeze_depth"]), cfg.budget.max_epochs)] * (design_size * replicates + 1), training.slots(cfg))
        print(_run_line(cfg, base, names, replicates, fixed, timing))
        results, runs = training.train(ctx, screen_configs(base, strengths, list(range(replicates))), "screen")
        clean = training.clean_model(results, CLEAN)
        measured = affinity(TrialSettings.from_config(clean[0]), ctx.spec, ctx.data, clean[1], strengths) if clean else _measured_before(ctx.folder)
        for seed in () if fixed else range(1, cfg.screen.max_seeds + 1):
            print(look_line(runs, names, cfg, seed))
            if not another_replicate(runs, names, cfg):  # False after the last replicate
                break
            _, extra = training.train(ctx, screen_configs(base, strengths, [seed], clean_seed=None), f"screen-seed{seed}", phase=f"screen replicate {seed + 1}")
            runs = pd.concat([runs, extra], ignore_index=True)
        for name, value in measured.items():
            runs[f"affinity_{name}"] = runs["label"].eq(CLEAN).map({True: value, False: math.nan})
        ctx.folder.write("screen", runs)
        training.prune(ctx, "screen", *(f"screen-seed{seed}" for seed in range(1, cfg.screen.max_seeds)))

    def analyse(self, tables: Tables, cfg: SearchConfigBase, classes: Sequence[str]) -> dict[str, pd.DataFrame]:
        runs = tables.get("screen")
        if runs is None:
            return {}
        names = run_configs.screened(runs, cfg.space.augmentation_names)
        effects = screen_effects(runs, names, alpha=family_alpha(cfg), negligible=cfg.screen.negligible)
        classes = list(classes) or [str(i) for i in range(len(runs["per_class_top1"].iloc[0]))]
        return {
            "per_class": per_class_effects(runs, names, classes),
            "affinity": affinity_table(runs, names, effects["strength"]),
            "effects": effects,
        }

    def section(self, tables: Tables, folder: Path) -> list[str]:
        effects = tables.get("effects")
        lines = ["## Verdicts", ""]
        if effects is None or effects["verdict"].eq(NOT_SCREENED).all():
            return lines + ["No screen was run (`--no-screen`): run `tune-search screen RESULTS_DIR` for verdicts.", ""]
        lines += _verdicts(effects, tables.get("per_class"), tables.get("ablation"), folder)
        lines += _additivity(tables.get("trials"), tables.get("screen"), effects)
        lines += _affinity(tables.get("affinity"), folder)
        lines += _per_class(tables.get("per_class"), effects)
        return lines

    def console(self, tables: Tables) -> str | None:
        return verdict_table(tables["effects"]) if "effects" in tables else None


# rendering -----------------------------------------------------------------------------------


def verdict_table(effects: pd.DataFrame) -> str:
    """The console's closing table: the screen's verdicts, most harmful first."""
    shown = effects[effects["verdict"] != NOT_SCREENED].sort_values("effect")
    if shown.empty:
        return "no screen: run `tune-search screen RESULTS_DIR` for verdicts"
    table = pd.DataFrame(
        {
            "augmentation": shown["augmentation"],
            "top-1 effect, points": [render.effect_interval(e, lo, hi) for e, lo, hi in zip(shown["effect"], shown["ci_low"], shown["ci_high"])],
            "verdict": shown["verdict"],
            "harmful above": ["" if math.isnan(v) else f"{v:.2f}" for v in shown["harmful_above"]],
        }
    )
    return f"{render.markdown_table(table)}\n({caption(shown)})"


def forest_plot(effects: pd.DataFrame, path: Path, *, title: str, ablation: pd.DataFrame | None = None) -> None:
    """Each augmentation's effect on top-1 with its simultaneous interval, harmful ones in red."""
    plt = render.pyplot()
    fig, ax = plt.subplots(figsize=(7, 0.42 * len(effects) + 1.6))
    names = list(effects["augmentation"])
    y = list(range(len(names)))
    colours = {"hurts": "tab:red", "helps": "tab:green", "harmless": "tab:purple"}
    shift = 0.15 if ablation is not None and len(ablation) else 0.0
    labelled = set()
    for i, (_, row) in enumerate(effects.iterrows()):
        verdict = row["verdict"]
        err = [[100 * (row["effect"] - row["ci_low"])], [100 * (row["ci_high"] - row["effect"])]]
        label = None if verdict in labelled else f"screen: {verdict}"
        labelled.add(verdict)
        ax.errorbar(100 * row["effect"], i - shift, xerr=err, fmt="o", color=colours.get(verdict, "tab:grey"), capsize=3, label=label)
    if shift:
        ab = ablation.set_index("augmentation").reindex(names)
        err = [100 * (ab["effect"] - ab["ci_low"]), 100 * (ab["ci_high"] - ab["effect"])]
        ax.errorbar(100 * ab["effect"], [v + shift for v in y], xerr=err, fmt="s", color="tab:blue", capsize=3, label="ablation of the best config")
    ax.legend(loc="best", fontsize=8)
    ax.axvline(0, color="black", lw=1)
    ax.set_yticks(y, names)
    ax.invert_yaxis()
    ax.set_xlabel("change in top-1 when switched on (percentage points), simultaneous interval")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _sentence(row, per_class: pd.DataFrame | None) -> str:
    text = (
        f"- **{row['augmentation']}** (strength {row['strength']:.2g}) costs {-100 * row['effect']:.1f} points of top-1 "
        f"(simultaneous interval {-100 * row['ci_high']:.1f} to {-100 * row['ci_low']:.1f}; adjusted p = {row['p_adjusted']:.2g})"
    )
    harmed = harmed_classes(per_class, row["augmentation"])
    if len(harmed):
        text += "; most harmed classes (false-discovery corrected): " + ", ".join(
            f"{r['class']} {render.row_interval(r.rename({'change': 'effect'}))}" for _, r in harmed.iterrows()
        )
    start = row.get("harmful_above", math.nan)
    if isinstance(start, float) and not math.isnan(start):
        low, high = row.get("harmful_above_low", math.nan), row.get("harmful_above_high", math.nan)
        high_text = f"{high:.2f}" if not math.isnan(high) else "beyond the strengths tried"
        text += f"; it costs more than the dose threshold above strength {start:.2f} (95 % interval {low:.2f} to {high_text})"
    return text + "."


def caption(effects: pd.DataFrame) -> str:
    """What the four verdicts mean for this screen, in one sentence."""
    first = effects.iloc[0]
    unclear = effects[effects["verdict"] == "unclear"]
    settle = unclear["settle_replicates"].dropna()
    more = ""
    if len(unclear):
        replicates = int(first["n_runs"] // max(1, len(screening_design(len(effects)))))
        more = (
            f" {len(unclear)} unclear: about {int(settle.max())} replicates in all (this screen has {replicates}) would likely settle them."
            if len(settle) == len(unclear)
            else f" {len(unclear)} unclear: more than 16 replicates would be needed for some."
        )
    return (
        f"intervals simultaneous across {len(effects)} augmentations at alpha {first['alpha']:.3g} (Bonferroni; the screen's share of 5 %); "
        f"hurts / helps: the interval excludes zero; harmless: it lies within ±{100 * first['negligible']:.1f} points.{more}"
    )


def _verdicts(effects: pd.DataFrame, per_class, ablation, folder: Path) -> list[str]:
    first = effects.iloc[0]
    reach = effects["detectable"].max()
    hurts = effects[effects["verdict"] == "hurts"].sort_values("effect")
    helps = effects[effects["verdict"] == "helps"]
    harmless = effects[effects["verdict"] == "harmless"]
    said = caption(effects)
    lines = [
        f"From the screen: {int(first['n_runs'])} runs at full budget in a two-level design (each augmentation on in half of them), "
        f"main effects by least squares with {first['df']:.0f} residual degrees of freedom. {said[0].upper()}{said[1:]} "
        f"This screen detects a harm of {100 * reach:.1f} points or more with 80 % power; no evidence of harm is not "
        f"evidence of no harm: only `harmless` says that.",
        "",
    ]
    if len(hurts):
        lines += ["Harmful:", ""] + [_sentence(r, per_class) for _, r in hurts.iterrows()] + [""]
    else:
        lines += [f"No augmentation is shown harmful (this screen detects a harm of {100 * reach:.1f} points or more with 80 % power).", ""]
    if len(helps):
        lines += ["Helpful: " + ", ".join(f"**{r['augmentation']}** {render.row_interval(r)}" for _, r in helps.iterrows()) + " points.", ""]
    if len(harmless):
        lines += [
            f"Harmless (within ±{100 * first['negligible']:.1f} points): "
            + ", ".join(f"**{r['augmentation']}** {render.row_interval(r)}" for _, r in harmless.iterrows())
            + " points.",
            "",
        ]
    table = pd.DataFrame(
        {
            "augmentation": effects["augmentation"],
            "strength": effects["strength"].round(2),
            "top-1 effect [simultaneous], points": [render.row_interval(r) for _, r in effects.iterrows()],
            "adjusted p": effects["p_adjusted"].map(lambda p: f"{p:.2g}"),
            "equivalence p (adjusted)": effects["p_equivalence_adjusted"].map(lambda p: f"{p:.2g}"),
            "verdict": effects["verdict"],
            **({"top-5 effect, points": effects["top5_effect"].map(render.points)} if effects["top5_effect"].notna().any() else {}),
            "harmful above strength": effects["harmful_above"].map(lambda v: "" if math.isnan(v) else f"{v:.2f}"),
        }
    )
    order = effects["effect"].argsort().to_numpy()
    forest_plot(effects.iloc[order], folder / "effects.png", title="Screen: what switching each augmentation on does to top-1", ablation=ablation)
    return lines + [render.markdown_table(table.iloc[order]), "", "![effects](effects.png)", ""]


def _additivity(trials: pd.DataFrame | None, screen_runs: pd.DataFrame | None, effects: pd.DataFrame) -> list[str]:
    """With the screen at the "all layers" baseline's settings: do the main effects add up to
    the baseline table's all + aug drop?"""
    if screen_runs is None or trials is None:
        return []
    rows = {b: trials[trials["baseline"] == b] for b in BASELINES[1:]}
    if any(not len(r) for r in rows.values()):
        return []
    plain, bundled = rows[BASELINES[1]].iloc[0], rows[BASELINES[2]].iloc[0]
    first = screen_runs.iloc[0]
    if not all(first[k] == plain[k] for k in HYPERPARAMETER_KEYS):
        return []
    names = list(effects.loc[effects["verdict"] != NOT_SCREENED, "augmentation"])
    bundle = [n for n in MOTIVATING if n in names and bool(bundled[switch_key(n)])]
    result = additivity(screen_runs, names, bundle, float(bundled["top1"]))
    verdict = "the effects add up" if result["adds_up"] else "the augmentations interact: the measured drop is not the sum of their effects"
    return [
        "### Do the effects add up to the baseline table's drop?",
        "",
        f"The screen ran at the all-layers baseline's settings. Its fit predicts top-1 {result['predicted']:.3f} with "
        f"{', '.join(bundle)} on (95 % prediction interval for one run {result['prediction_low']:.3f} to {result['prediction_high']:.3f}) "
        f"and {result['predicted_none']:.3f} with none on; the search's all + aug baseline measured {result['measured']:.3f} "
        f"(all layers without augmentation: {float(plain['top1']):.3f}): {verdict}.",
        "",
    ]


def _affinity_readable(affinity: pd.DataFrame) -> pd.DataFrame:
    """Affinity in points of top-1, diversity as the rise in final train loss with its interval."""
    return pd.DataFrame(
        {
            "augmentation": affinity["augmentation"],
            "strength": affinity["strength"].map(lambda v: f"{v:g}"),
            "affinity, points of top-1": [f"{100 * v:+.1f}" for v in affinity["affinity"]],
            "diversity: train-loss rise [95 %]": [
                f"{d:+.3f}" + ("" if math.isnan(lo) else f" [{lo:+.3f}, {hi:+.3f}]")
                for d, lo, hi in zip(
                    affinity["diversity"], *(affinity.get(c, pd.Series(math.nan, index=affinity.index)) for c in ("diversity_ci_low", "diversity_ci_high"))
                )
            ],
        }
    ).sort_values("affinity, points of top-1", key=lambda c: c.map(float))


def _affinity(affinity: pd.DataFrame | None, folder: Path) -> list[str]:
    if affinity is None or not affinity["affinity"].notna().any():
        return []
    in_points = affinity.assign(affinity=100 * affinity["affinity"])
    render.scatter(in_points, "affinity", "diversity", folder / "affinity.png", xlabel="affinity: clean model's top-1 change on augmented images (points)",
        ylabel="diversity: rise in final train loss (95 % interval)", labels="augmentation",
        title="Why: how far it moves the images (x), how much harder it makes training (y)",
                   interval=("diversity_ci_low", "diversity_ci_high") if {"diversity_ci_low", "diversity_ci_high"} <= set(affinity) else None)  # fmt: skip
    return [
        "## Why: affinity and diversity", "", render.markdown_table(_affinity_readable(affinity)), "", "![affinity](affinity.png)", "",
        "Low affinity: the augmentation moves images away from what the clean model learned (e.g. a crop that cuts the object out)."
        " Diversity: how much it raises the final training loss.", "",
    ]  # fmt: skip


def _per_class(per_class: pd.DataFrame | None, effects: pd.DataFrame) -> list[str]:
    if per_class is None or not len(per_class):
        return []
    lines = [
        "## For which classes",
        "",
        "Per-class harms that survive a false-discovery correction (Benjamini-Hochberg, across every augmentation and class),"
        " in points of per-class top-1 with 95 % intervals:",
        "",
    ]
    verdicts = effects.set_index("augmentation")["verdict"]
    order = list(effects.sort_values("effect")["augmentation"])
    names = list(dict.fromkeys(per_class["augmentation"]))
    named = 0
    for name in [n for n in order if n in names] + [n for n in names if n not in order]:
        harmed = harmed_classes(per_class, name)
        if len(harmed):
            named += 1
            cells = ", ".join(f"{r['class']} {render.row_interval(r.rename({'change': 'effect'}))}" for _, r in harmed.iterrows())
            lines.append(f"- {name} ({verdicts.get(name, NOT_SCREENED)}): {cells}")
    if not named:
        lines.append("- none: no class's change survives the correction")
    return lines + [""]

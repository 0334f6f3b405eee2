"""Dose-response: where harm starts. Each augmentation the screen calls harmful (the most
harmful `dose.max_augmentations`) re-runs alone at several strengths, paired by seed with the
run that has none on, at the screen's settings; effect(s) = b1 s + b2 s² is fitted by least
squares with one block per seed (strength 0 is the identity). Where harm starts is read
off the curve made monotone (at each strength, the worst the fit reaches up to it: more
augmentation never undoes harm), and only where the whole 95 % band passes the threshold.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pandas as pd
from pydantic import Field, field_validator

from tune_search import render
from tune_search.constants import CLEAN
from tune_search.export import config_from_row
from tune_search.schemas import DOSE, FLOAT, RUNS, STRENGTH, Table, columns
from tune_search.sections import PositiveInt, SearchConfigBase, Section, Strength, two_levels
from tune_search.stats import block_fit, level_contrasts, mean_prediction
from tune_search.studies._base import Study, StudyContext, Tables
from tune_search.studies.run_configs import base_settings, with_augmentations
from tune_search.studies.screen import harmful
from tune_search.studies.training import prune, train
from tune_search.trainable.augment import strength_key, switch_key

DOSE_COLUMNS = ("augmentation", "strength", "effect", "ci_low", "ci_high", "fitted", "fit_low", "fit_high", "n_seeds", "threshold")
EFFECT_COLUMNS = ("harmful_above", "harmful_above_low", "harmful_above_high")  # its columns of effects.parquet


class DoseConfig(Section):
    """Dose-response of each augmentation the screen calls harmful."""

    enabled: bool = True
    strengths: tuple[Strength, ...] = (0.1, 0.25, 0.5, 1.0)  # 0.1: a run near where harm may start
    seeds: Annotated[int, Field(ge=2)] = 3  # with one pooled fit, +-2 points per strength at 1 point of seed noise
    max_augmentations: PositiveInt = 1  # the most harmful ones first
    threshold: Annotated[float, Field(gt=0, lt=1)] = 0.005  # harmful above: where it costs more than this

    _levels = field_validator("strengths")(lambda value: two_levels(value, "dose-response"))


def dose_configs(base: Mapping[str, Any], names: Sequence[str], levels: Sequence[float], seeds: Sequence[int], searched: Sequence[str]) -> list[dict[str, Any]]:
    """Each augmentation in `names` alone at every strength in `levels`, and the run with
    none on (strength 0), once per seed, at `base`'s other settings."""
    settings = base_settings(base)
    out = []
    for seed in seeds:
        out.append({**with_augmentations(settings, {}, searched), "study": "dose", "design_row": -1, "seed": seed, "label": CLEAN})
        for name in names:
            for level in levels:
                config = with_augmentations(settings, {name: level}, searched)
                out.append({**config, "study": "dose", "design_row": -1, "seed": seed, "label": name})
    return out


def dose_effects(runs: pd.DataFrame, name: str) -> pd.DataFrame:
    """Per strength of `name`: top-1 with it alone on minus the run with none on, from one fit
    over its runs and those with none on (`stats.level_contrasts`: a level per strength, a
    block per seed), with its 95 % interval."""
    mine = runs[runs["label"].isin([name, CLEAN])]
    level = mine[strength_key(name)].where(mine[switch_key(name)].astype(bool), 0.0).fillna(0.0).to_numpy(float)
    if not (level > 0).any() or not (level == 0).any():
        return pd.DataFrame(columns=["augmentation", "strength", "effect", "ci_low", "ci_high", "n_seeds"])
    estimates = level_contrasts(level, mine["seed"], mine["top1"])
    seeds = {s: int(mine.loc[level == s, "seed"].nunique()) for s in estimates}
    return pd.DataFrame(
        [{"augmentation": name, "strength": s, "effect": e.effect, "ci_low": e.ci_low, "ci_high": e.ci_high, "n_seeds": seeds[s]} for s, e in estimates.items()]
    )


@dataclass(frozen=True)
class DoseCurve:
    """effect(s) = b1 s + b2 s², fitted with one block per seed."""

    fit: object  # the statsmodels results

    def band(self, strengths: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The fitted effect at `strengths` (against strength 0) and its 95 % band."""
        columns = list(self.fit.model.exog_names)
        rows = np.zeros((len(strengths), len(columns)))
        rows[:, columns.index("s")] = strengths
        rows[:, columns.index("s2")] = np.asarray(strengths) ** 2
        frame = mean_prediction(self.fit, rows)
        return frame["mean"].to_numpy(), frame["mean_ci_lower"].to_numpy(), frame["mean_ci_upper"].to_numpy()


def dose_curve(runs: pd.DataFrame, name: str) -> DoseCurve | None:
    """The dose-response fit of `name`'s runs and the runs with none on; None when the runs
    leave no residual degrees of freedom."""
    mine = runs[runs["label"].isin([name, CLEAN])]
    s = mine[strength_key(name)].fillna(0.0).where(mine[switch_key(name)].astype(bool), 0.0).to_numpy(float)
    if len(mine) <= 2 + mine["seed"].nunique():
        return None
    frame = pd.DataFrame({"s": s, "s2": s**2, "seed": mine["seed"].to_numpy(), "top1": mine["top1"].to_numpy(float)})
    return DoseCurve(block_fit(frame, "top1", ["s", "s2"], intercept=False))


def harmful_above(curve: DoseCurve | None, threshold: float, top: float = 1.0, bottom: float = 0.0) -> tuple[float, float, float]:
    """The strength above which the fitted curve costs more than `threshold` of top-1, and
    its 95 % interval: from the first strength where the band's lower edge passes
    -threshold (the earliest the harm may start) to the first where its upper edge does (by
    then it surely has). Read only over the strengths measured, [bottom, top]: a start at
    `bottom` says harm is there already at the lowest strength run, never that it starts
    below it. NaN unless the whole band passes -threshold within [bottom, top]."""
    if curve is None:
        return math.nan, math.nan, math.nan
    grid = np.linspace(bottom, top, 201)
    mean, low, high = (np.minimum.accumulate(np.minimum(v, 0.0)) for v in curve.band(grid))  # monotone: harm is never undone

    def first(values: np.ndarray) -> float:
        hit = np.nonzero(values <= -threshold)[0]
        return float(grid[hit[0]]) if len(hit) else math.nan

    if math.isnan(first(high)):  # the harm may never pass the threshold: no start to name
        return math.nan, math.nan, math.nan
    return first(mean), first(low), first(high)


def dose_table(runs: pd.DataFrame, names: Sequence[str], threshold: float) -> pd.DataFrame:
    """dose.parquet: per augmentation and strength, the paired effect and the fitted curve,
    with the harm threshold it was read against."""
    frames = []
    for name in names:
        table = dose_effects(runs, name)
        curve = dose_curve(runs, name)
        if curve is not None and len(table):
            table["fitted"], table["fit_low"], table["fit_high"] = curve.band(table["strength"].to_numpy(float))
        table["threshold"] = threshold
        frames.append(table.reindex(columns=list(DOSE_COLUMNS)))
    if not frames:
        return pd.DataFrame(columns=list(DOSE_COLUMNS))
    return pd.concat(frames, ignore_index=True)


def dose_starts(thresholds: Mapping[str, tuple[float, float, float]]) -> pd.DataFrame:
    """Its columns of effects.parquet: where each dosed augmentation's harm starts."""
    rows = [{"augmentation": n, **dict(zip(EFFECT_COLUMNS, t, strict=True))} for n, t in thresholds.items()]
    return pd.DataFrame(rows, columns=["augmentation", *EFFECT_COLUMNS])


class Dose(Study):
    name = "dose"
    sections = {"dose": DoseConfig}
    effect_columns = tuple(columns(", ".join(EFFECT_COLUMNS), FLOAT, STRENGTH))
    follows = "screen"
    tables = {
        "dose_runs": Table("the dose-response runs", RUNS),
        "dose": Table("dose-response per augmentation and strength", DOSE),
    }

    def enabled(self, cfg: SearchConfigBase) -> bool:
        return cfg.screen.enabled and cfg.dose.enabled

    def run(self, ctx: StudyContext) -> None:
        """Re-run each augmentation the screen calls harmful alone at dose.strengths, with
        dose.seeds seeds, at the screen's settings; write dose_runs.parquet."""
        cfg, screen = ctx.cfg, ctx.folder.read("screen")
        if screen is None:
            return
        # a declared switch has no strength to vary
        names = [n for n in harmful(screen, list(ctx.space.augmentations), cfg) if n not in ctx.space.switches]
        if not names:
            return
        which = (
            f"; the {cfg.dose.max_augmentations} most harmful of {len(names)} that hurt (dose.max_augmentations)"
            if len(names) > cfg.dose.max_augmentations
            else ""
        )
        names = names[: cfg.dose.max_augmentations]
        base = base_settings(config_from_row(screen.iloc[0]))
        configs = dose_configs(base, names, cfg.dose.strengths, list(range(cfg.dose.seeds)), list(ctx.space.augmentations))
        levels = ", ".join(f"{s:g}" for s in cfg.dose.strengths)
        print(
            f"dose-response: {len(configs)} runs, {', '.join(names)} at strengths {levels}"
            f" and none on, {cfg.dose.seeds} seed{'s' * (cfg.dose.seeds != 1)}{which}"
        )
        _, runs = train(ctx, configs, "dose")
        ctx.folder.write("dose_runs", runs)
        prune(ctx, "dose")

    def analyse(self, tables: Tables, cfg: SearchConfigBase, classes: Sequence[str]) -> dict[str, pd.DataFrame]:
        runs = tables.get("dose_runs")
        if runs is None:
            return {}
        dosed = [n for n in cfg.space.augmentation_names if (runs["label"] == n).any()]
        top, bottom = max(cfg.dose.strengths), min(cfg.dose.strengths)
        thresholds = {n: harmful_above(dose_curve(runs, n), cfg.dose.threshold, top=top, bottom=bottom) for n in dosed}
        return {"dose": dose_table(runs, dosed, cfg.dose.threshold), "effects": dose_starts(thresholds)}

    def section(self, tables: Tables, folder: Path) -> list[str]:
        dose = tables.get("dose")
        if dose is None or not len(dose):
            return []
        dose_plot(dose, tables["dose_runs"], tables["effects"], folder / "dose.png")
        return ["## Where harm starts", "", render.markdown_table(_dose_points(dose)), "", "![dose-response](dose.png)", ""]


def _dose_points(dose: pd.DataFrame) -> pd.DataFrame:
    """The dose table as a person reads it: effects in points with their intervals."""
    return pd.DataFrame(
        {
            "augmentation": dose["augmentation"],
            "strength": dose["strength"].map(lambda v: f"{v:g}"),
            "measured effect [95 %], points": [render.effect_interval(*v) for v in zip(dose["effect"], dose["ci_low"], dose["ci_high"])],
            "fitted [95 % band], points": [render.effect_interval(*v) for v in zip(dose["fitted"], dose["fit_low"], dose["fit_high"])],
            "seeds": dose["n_seeds"],
        }
    )


def dose_plot(dose: pd.DataFrame, runs: pd.DataFrame, effects: pd.DataFrame, path: Path) -> None:
    """Measured effect per strength (mean over seeds, paired, with its t-interval) and the
    fitted curve with its 95 % band, in points; the harm threshold and where harm starts."""
    plt = render.pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    starts = effects.set_index("augmentation")
    for name, group in dose.groupby("augmentation", sort=False):
        group = group.sort_values("strength")
        effect = 100 * group["effect"].to_numpy(float)
        below = np.nan_to_num(effect - 100 * group["ci_low"].to_numpy(float))  # one seed: no interval
        above = np.nan_to_num(100 * group["ci_high"].to_numpy(float) - effect)
        colour = ax.errorbar(group["strength"], effect, yerr=[below, above], fmt="o", capsize=3, label=f"{name}, measured")[0].get_color()
        curve = dose_curve(runs, name)
        if curve is not None:
            grid = np.linspace(0.0, float(group["strength"].max()), 101)
            mean, low, high = (100 * v for v in curve.band(grid))
            ax.plot(grid, mean, color=colour, lw=1.2, label=f"{name}, fitted")
            ax.fill_between(grid, low, high, color=colour, alpha=0.12)
        start = starts.at[name, "harmful_above"] if name in starts.index else math.nan
        if not math.isnan(start):
            ax.axvline(start, color=colour, ls="--", lw=1)
    ax.axhline(0, color="black", lw=1)
    threshold = float(dose["threshold"].iloc[0])
    ax.axhline(-100 * threshold, color="grey", ls=":", lw=1, label=f"threshold (-{100 * threshold:g} points)")
    title = (
        "Dose-response: measured effect (dots, 95 % intervals), fitted curve with its 95 % band"
        ";\ndashed: the strength where the whole band passes the threshold"
    )
    render.save(fig, ax, path, xlabel="strength (0 = off)", ylabel="change in top-1 (points)", title=title, size=9)

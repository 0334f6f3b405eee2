"""Verdicts from designed studies: pure functions over runs tables.

The screen is a two-level design (`tune_search.design.screening_design`) over the augmentations,
every run at the same other settings and the full budget. Its main effects come from one
least-squares fit of the response on the ±1 switches (plus one block per seed), with 95 %
intervals from the residual error; verdicts are Holm-corrected across the augmentations, so
that when none matters the chance of any `hurts` or `helps` stays at 5 %; and the smallest
harm the screen would detect with 80 % power is stated beside them.

Dose-response re-runs one augmentation alone at several strengths, paired by seed with the
run that has none on, and fits effect(s) = b1 s + b2 s² (strength 0 is the identity).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import statsmodels.api as sm
from scipy import optimize, stats
from statsmodels.stats.multitest import multipletests

from tune_search.analysis import EFFECT_COLUMNS
from tune_search.trainable.augment import strength_key, switch_key

ALPHA = 0.05
POWER = 0.8
SCREEN_COLUMNS = (
    "augmentation", "strength", "effect", "ci_low", "ci_high", "p_value", "p_holm", "verdict", "detectable",
    "top5_effect", "top5_ci_low", "top5_ci_high", "n_runs", "df",
)  # fmt: skip
DOSE_COLUMNS = ("augmentation", "strength", "effect", "ci_low", "ci_high", "fitted", "fit_low", "fit_high", "n_seeds")


@dataclass(frozen=True)
class MainEffects:
    """One response's main effects (on minus off, in the response's units)."""

    names: tuple[str, ...]
    effect: np.ndarray
    se: np.ndarray
    p_value: np.ndarray
    df: float
    residual_sd: float
    fit: object  # the statsmodels results, for predictions

    def interval(self, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
        half = stats.t.ppf(0.5 + level / 2, self.df) * self.se
        return self.effect - half, self.effect + half


def screened(runs: pd.DataFrame, names: Sequence[str]) -> list[str]:
    """The augmentations of `names` that the screen's runs switched on."""
    return [n for n in names if runs[switch_key(n)].any()]


def design_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs that belong to the design (not the extra clean run)."""
    return runs[runs["design_row"] >= 0]


def _design_matrix(runs: pd.DataFrame, names: Sequence[str]) -> pd.DataFrame:
    x = pd.DataFrame({n: np.where(runs[switch_key(n)].astype(bool), 1.0, -1.0) for n in names}, index=runs.index)
    seeds = sorted(runs["seed"].unique())
    for seed in seeds[1:]:  # one block per extra seed: seeds shift every run alike
        x[f"seed_{seed}"] = (runs["seed"] == seed).astype(float)
    return sm.add_constant(x, has_constant="add")


def main_effects(runs: pd.DataFrame, names: Sequence[str], response: str = "top1") -> MainEffects:
    """Least-squares main effects of the ±1 switches on `response`, from the design's runs."""
    runs = design_runs(runs)
    x = _design_matrix(runs, names)
    y = runs[response].to_numpy(float)
    if len(y) <= x.shape[1]:
        raise ValueError(f"{len(y)} runs leave no residual degrees of freedom for {len(names)} augmentations")
    fit = sm.OLS(y, x).fit()
    names = tuple(names)
    # a coefficient is half the difference between on and off
    return MainEffects(
        names=names,
        effect=2 * fit.params[list(names)].to_numpy(),
        se=2 * fit.bse[list(names)].to_numpy(),
        p_value=fit.pvalues[list(names)].to_numpy(),
        df=float(fit.df_resid),
        residual_sd=float(np.sqrt(fit.scale)),
        fit=fit,
    )


def verdicts(effect: np.ndarray, p_value: np.ndarray, alpha: float = ALPHA) -> tuple[np.ndarray, list[str]]:
    """Holm-adjusted p-values and verdicts: `hurts` / `helps` where the adjusted p-value is
    below alpha, by the effect's sign; `unclear` otherwise."""
    if not len(p_value):
        return np.array([]), []
    _, adjusted, _, _ = multipletests(p_value, alpha=alpha, method="holm")
    out = ["unclear" if p >= alpha else ("hurts" if e < 0 else "helps") for e, p in zip(effect, adjusted)]
    return adjusted, out


def detectable_effect(se: float, df: float, tests: int, *, alpha: float = ALPHA, power: float = POWER) -> float:
    """The smallest true effect (same units as `se`) that a two-sided t-test at alpha /
    tests (Holm's first, strictest step) detects with probability `power`."""
    if not (se > 0 and df > 0):
        return math.nan
    critical = stats.t.ppf(1 - alpha / (2 * tests), df)

    def shortfall(delta: float) -> float:
        shift = delta / se
        # the far tail is negligible, and scipy returns NaN for it at large shifts
        far = np.nan_to_num(stats.nct.cdf(-critical, df, shift))
        return stats.nct.sf(critical, df, shift) + far - power

    return float(optimize.brentq(shortfall, 0.0, se * (critical + 5)))


def screen_effects(runs: pd.DataFrame, names: Sequence[str]) -> pd.DataFrame:
    """effects.parquet's main columns: per augmentation, the effect of switching it on (top-1,
    a difference of fractions; negative hurts) with its 95 % interval, raw and Holm-adjusted
    p-values, the verdict, the smallest harm this screen detects with 80 % power, and the
    effect on top-5."""
    top1 = main_effects(runs, names, "top1")
    top5 = main_effects(runs, names, "top5")
    low, high = top1.interval()
    low5, high5 = top5.interval()
    adjusted, said = verdicts(top1.effect, top1.p_value)
    design = design_runs(runs)
    detectable = [detectable_effect(se, top1.df, len(names)) for se in top1.se]
    rows = []
    for i, name in enumerate(names):
        on = design[design[switch_key(name)].astype(bool)]
        rows.append(
            {
                "augmentation": name,
                "strength": float(on[strength_key(name)].iloc[0]) if len(on) else math.nan,
                "effect": float(top1.effect[i]),
                "ci_low": float(low[i]),
                "ci_high": float(high[i]),
                "p_value": float(top1.p_value[i]),
                "p_holm": float(adjusted[i]),
                "verdict": said[i],
                "detectable": detectable[i],
                "top5_effect": float(top5.effect[i]),
                "top5_ci_low": float(low5[i]),
                "top5_ci_high": float(high5[i]),
                "n_runs": len(design),
                "df": top1.df,
            }
        )
    return pd.DataFrame(rows, columns=list(SCREEN_COLUMNS))


def per_class_effects(runs: pd.DataFrame, names: Sequence[str], classes: Sequence[str]) -> pd.DataFrame:
    """per_class.parquet: the same fit on each class's top-1: per augmentation and class, the
    change when it is on, with a 95 % interval, and the mean class top-1 with it on and off."""
    design = design_runs(runs)
    accuracy = np.stack(design["per_class_top1"].to_list()).astype(float)
    rows = []
    for c, cls in enumerate(classes):
        frame = design.assign(_class=accuracy[:, c])
        if frame["_class"].isna().any():
            continue
        fit = main_effects(frame, names, "_class")
        low, high = fit.interval()
        for i, name in enumerate(names):
            on = frame[switch_key(name)].astype(bool)
            rows.append(
                {
                    "augmentation": name,
                    "class": cls,
                    "change": float(fit.effect[i]),
                    "ci_low": float(low[i]),
                    "ci_high": float(high[i]),
                    "top1_with": float(frame.loc[on, "_class"].mean()),
                    "top1_without": float(frame.loc[~on, "_class"].mean()),
                }
            )
    return pd.DataFrame(rows, columns=["augmentation", "class", "change", "ci_low", "ci_high", "top1_with", "top1_without"])


def diversity(runs: pd.DataFrame, names: Sequence[str]) -> pd.DataFrame:
    """Per augmentation, how much it raises the final training loss (the same fit on
    train_loss): diversity in the sense of Gontijo-Lopes et al. (2021), with its interval."""
    fit = main_effects(runs, names, "train_loss")
    low, high = fit.interval()
    clean = runs.loc[runs["design_row"] < 0, "train_loss"]
    return pd.DataFrame(
        {
            "augmentation": list(names),
            "diversity": fit.effect,
            "diversity_ci_low": low,
            "diversity_ci_high": high,
            "clean_train_loss": float(clean.mean()) if len(clean) else math.nan,
        }
    )


def additivity(runs: pd.DataFrame, names: Sequence[str], bundle: Sequence[str], measured: float) -> dict[str, float]:
    """Do the main effects add up? The screen's fitted top-1 with `bundle` on and the rest
    off, with a 95 % prediction interval for one run, beside a `measured` run of that
    configuration (the search's all + aug baseline when the screen ran at its settings)."""
    fit = main_effects(runs, names, "top1").fit
    row = pd.DataFrame([{c: 0.0 for c in fit.model.exog_names}])
    row["const"] = 1.0
    for name in names:
        row[name] = 1.0 if name in bundle else -1.0
    block_columns = [c for c in fit.model.exog_names if c.startswith("seed_")]
    if block_columns:  # average over the seed blocks
        row[block_columns] = 1.0 / (len(block_columns) + 1)
    frame = fit.get_prediction(row[fit.model.exog_names]).summary_frame(alpha=ALPHA)
    predicted, low, high = (float(frame[k].iloc[0]) for k in ("mean", "obs_ci_lower", "obs_ci_upper"))
    none = row.copy()
    none[list(names)] = -1.0
    clean = float(fit.get_prediction(none[fit.model.exog_names]).predicted_mean[0])
    return {
        "predicted": predicted,
        "prediction_low": low,
        "prediction_high": high,
        "measured": measured,
        "predicted_none": clean,
        "adds_up": bool(low <= measured <= high),
    }


def paired_interval(diffs: np.ndarray) -> tuple[float, float]:
    """95 % t-interval of the mean of paired differences; NaN with fewer than two."""
    if len(diffs) < 2:
        return math.nan, math.nan
    half = stats.t.ppf(0.975, len(diffs) - 1) * diffs.std(ddof=1) / math.sqrt(len(diffs))
    return float(diffs.mean() - half), float(diffs.mean() + half)


def dose_effects(runs: pd.DataFrame, name: str) -> pd.DataFrame:
    """Per strength of `name`: top-1 with it alone on minus the run with none on, paired by
    seed, with a t-interval over seeds."""
    clean = runs[runs["label"] == "(no augmentation)"].set_index("seed")["top1"]
    mine = runs[runs["label"] == name]
    rows = []
    for strength, group in mine.groupby(strength_key(name)):
        seeds = group.set_index("seed")["top1"]
        common = seeds.index.intersection(clean.index)
        diffs = (seeds.loc[common] - clean.loc[common]).to_numpy(float)
        low, high = paired_interval(diffs)
        mean = float(diffs.mean()) if len(diffs) else math.nan
        rows.append({"augmentation": name, "strength": float(strength), "effect": mean, "ci_low": low, "ci_high": high, "n_seeds": len(diffs)})
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class DoseCurve:
    """effect(s) = b1 s + b2 s², fitted by least squares with one block per seed."""

    fit: object

    def band(self, strengths: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        contrast = np.zeros((len(strengths), len(self.fit.params)))
        names = list(self.fit.model.exog_names)
        contrast[:, names.index("s")] = strengths
        contrast[:, names.index("s2")] = strengths**2
        mean = contrast @ self.fit.params.to_numpy()
        se = np.sqrt(np.einsum("ij,jk,ik->i", contrast, self.fit.cov_params().to_numpy(), contrast))
        half = stats.t.ppf(0.5 + level / 2, self.fit.df_resid) * se
        return mean, mean - half, mean + half


def dose_curve(runs: pd.DataFrame, name: str) -> DoseCurve | None:
    """The dose-response fit of `name`'s runs and the runs with none on; None when the runs
    leave no residual degrees of freedom."""
    mine = runs[runs["label"].isin([name, "(no augmentation)"])]
    s = mine[strength_key(name)].fillna(0.0).where(mine[switch_key(name)].astype(bool), 0.0).to_numpy(float)
    x = pd.DataFrame({"s": s, "s2": s**2}, index=mine.index)
    for seed in sorted(mine["seed"].unique()):
        x[f"seed_{seed}"] = (mine["seed"] == seed).astype(float)
    if len(mine) <= x.shape[1]:
        return None
    return DoseCurve(sm.OLS(mine["top1"].to_numpy(float), x).fit())


def harmful_above(curve: DoseCurve | None, threshold: float, top: float = 1.0) -> tuple[float, float, float]:
    """The strength above which the fitted curve costs more than `threshold` of top-1, and
    its 95 % interval: from the first strength where the band's lower edge passes
    -threshold (the earliest the harm may start) to the first where its upper edge does (by
    then it surely has). NaN where that does not happen within [0, top]."""
    if curve is None:
        return math.nan, math.nan, math.nan
    grid = np.linspace(0.0, top, 201)
    mean, low, high = curve.band(grid)

    def first(values: np.ndarray) -> float:
        hit = np.nonzero(values <= -threshold)[0]
        return float(grid[hit[0]]) if len(hit) else math.nan

    return first(mean), first(low), first(high)


def dose_table(runs: pd.DataFrame, names: Sequence[str]) -> pd.DataFrame:
    """dose.parquet: per augmentation and strength, the paired effect and the fitted curve."""
    frames = []
    for name in names:
        table = dose_effects(runs, name)
        curve = dose_curve(runs, name)
        if curve is not None and len(table):
            table["fitted"], table["fit_low"], table["fit_high"] = curve.band(table["strength"].to_numpy(float))
        frames.append(table.reindex(columns=list(DOSE_COLUMNS)))
    if not frames:
        return pd.DataFrame(columns=list(DOSE_COLUMNS))
    return pd.concat(frames, ignore_index=True)


DOSE_EFFECT_COLUMNS = ("harmful_above", "harmful_above_low", "harmful_above_high")


def effects_table(
    screen: pd.DataFrame | None,
    search: pd.DataFrame | None,
    names: Sequence[str],
    harmful: dict[str, tuple[float, float, float]] | None = None,
) -> pd.DataFrame:
    """effects.parquet: the screen's columns first (verdict `not screened` without a screen),
    the dose-response's harmful_above with its interval, then the search's estimates as
    search_<column>."""
    table = pd.DataFrame({"augmentation": list(names)})
    if screen is not None:
        table = table.merge(screen, on="augmentation", how="left")
    else:
        for column in SCREEN_COLUMNS[1:]:
            table[column] = "not screened" if column == "verdict" else math.nan
    for i, column in enumerate(DOSE_EFFECT_COLUMNS):
        table[column] = [(harmful or {}).get(n, (math.nan,) * 3)[i] for n in names]
    if search is None:  # the same columns, empty: the search had too few trials
        search = pd.DataFrame({c: list(names) if c == "augmentation" else math.nan for c in EFFECT_COLUMNS})
    renamed = search.rename(columns={c: f"search_{c}" for c in search.columns if c != "augmentation"})
    return table.merge(renamed, on="augmentation", how="left")

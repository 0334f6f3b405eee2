"""The statistics every study's verdicts rest on, on statsmodels results objects: least-squares
fits with one block per seed (`C(seed)`), their intervals and tests (`conf_int`, `t_test`,
`get_prediction`), multiplicity corrections (`multipletests`), and the verdict rules, each
named for the rule it applies. Pure functions over DataFrames and arrays.
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
from statsmodels.stats.weightstats import DescrStatsW

from tune_search.trainable.augment import switch_key

ALPHA = 0.05
POWER = 0.8


def block_fit(frame: pd.DataFrame, response: str, terms: Sequence[str], *, intercept: bool = True):
    """OLS of `response` on the columns `terms` of `frame` plus one block per seed (seeds
    shift every run alike): the model `response ~ terms + C(seed)` (`~ 0 + ...` without
    `intercept`), with its columns named as statsmodels' formulas name them. The design
    matrix is built here rather than parsed from a formula: the simulations fit it
    thousands of times. The statsmodels results object."""
    seeds = pd.Categorical(frame["seed"])
    blocks = pd.get_dummies(seeds, dtype=float).set_axis(frame.index)
    if intercept:
        blocks = blocks.iloc[:, 1:].set_axis([f"C(seed)[T.{s}]" for s in seeds.categories[1:]], axis=1)
        exog = pd.concat([pd.Series(1.0, index=frame.index, name="Intercept"), blocks, frame[list(terms)].astype(float)], axis=1)
    else:
        blocks = blocks.set_axis([f"C(seed)[{s}]" for s in seeds.categories], axis=1)
        exog = pd.concat([blocks, frame[list(terms)].astype(float)], axis=1)
    return sm.OLS(frame[response].astype(float), exog).fit()


@dataclass(frozen=True)
class MainEffects:
    """The main effects (on minus off, in the response's units) of ±1-coded switches from
    one `block_fit`: a coefficient is half the difference between on and off."""

    names: tuple[str, ...]
    fit: object  # the statsmodels results

    @property
    def effect(self) -> np.ndarray:
        return 2 * self.fit.params[list(self.names)].to_numpy()

    @property
    def se(self) -> np.ndarray:
        return 2 * self.fit.bse[list(self.names)].to_numpy()

    @property
    def p_value(self) -> np.ndarray:
        return self.fit.pvalues[list(self.names)].to_numpy()

    @property
    def df(self) -> float:
        return float(self.fit.df_resid)

    @property
    def residual_sd(self) -> float:
        return float(np.sqrt(self.fit.scale))

    def conf_int(self, alpha: float = ALPHA) -> tuple[np.ndarray, np.ndarray]:
        bounds = 2 * self.fit.conf_int(alpha).loc[list(self.names)].to_numpy()
        return bounds[:, 0], bounds[:, 1]


def main_effects(runs: pd.DataFrame, names: Sequence[str], response: str = "top1", switch=switch_key) -> MainEffects:
    """Main effects of the switches `switch(name)` (booleans in `runs`) on `response`.

    Runs of one config at one seed count once (their mean): training is deterministic at a
    seed, so a design row repeated within a replicate (one or two augmentations: the folded
    design's 8 runs hold 2 or 4 configs) reproduces its twin, and counted apart it would be a
    residual degree of freedom without error in it, narrowing every interval. A fit left
    without residual degrees of freedom (one augmentation, one replicate) has infinite
    standard errors: intervals NaN, verdicts `unclear`."""
    frame = pd.DataFrame({n: np.where(runs[switch(n)].astype(bool), 1.0, -1.0) for n in names}, index=runs.index)
    frame["seed"], frame["_y"] = runs["seed"].to_numpy(), runs[response].to_numpy(float)
    frame = frame.groupby([*names, "seed"], as_index=False, sort=False)["_y"].mean()
    if len(frame) < len(names) + frame["seed"].nunique():
        raise ValueError(f"{len(frame)} distinct runs cannot estimate {len(names)} augmentations' effects")
    return MainEffects(tuple(names), block_fit(frame, "_y", list(names)))


def holm_adjusted(p_value: Sequence[float], alpha: float = ALPHA) -> np.ndarray:
    """Holm-adjusted p-values (family-wise error at alpha across the family given)."""
    if not len(p_value):
        return np.array([])
    return multipletests(np.asarray(p_value, float), alpha=alpha, method="holm")[1]


def fdr_adjusted(p_value: Sequence[float], alpha: float = ALPHA) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (false discovery rate at alpha)."""
    if not len(p_value):
        return np.array([])
    return multipletests(np.asarray(p_value, float), alpha=alpha, method="fdr_bh")[1]


def support_verdicts(effect, se, sign, df, negligible: float, alpha: float = ALPHA) -> tuple[Simultaneous, list[str]]:
    """Verdicts on claims that each predict the sign of an effect, judged together
    (`simultaneous`; NaN effects are not tested): `supported` where the interval excludes zero
    on the predicted side, `opposite` where it excludes it on the other, `negligible` where it
    lies within ±negligible, `unclear` otherwise."""
    judged = simultaneous(effect, se, df, negligible, alpha)
    words = {"harmless": "negligible", "unclear": "unclear"}
    said = [words.get(v) or ("supported" if (v == "helps") == (s > 0) else "opposite") for v, s in zip(judged.said, sign)]
    return judged, said


def interval_verdict(ci_low: float, ci_high: float, bound: float = 0.0) -> str:
    """The verdict an interval gives: `hurts` / `helps` when it lies below / above zero,
    `harmless` when it lies within ±bound (never with bound 0), `unclear` otherwise (NaN
    bounds included). The correction is the interval's own."""
    if ci_high < 0:
        return "hurts"
    if ci_low > 0:
        return "helps"
    if -bound < ci_low and ci_high < bound:
        return "harmless"
    return "unclear"


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

    high = se * (critical + 5)
    while shortfall(high) < 0:  # few residual df: the t's heavy tail needs a far larger shift
        if high > se * 1e6:
            return math.nan
        high *= 4
    return float(optimize.brentq(shortfall, 0.0, high))


def paired_interval(diffs: np.ndarray, alpha: float = ALPHA) -> tuple[float, float]:
    """The t-interval of the mean of paired differences; NaN with fewer than two."""
    if len(diffs) < 2:
        return math.nan, math.nan
    low, high = DescrStatsW(np.asarray(diffs, float)).tconfint_mean(alpha)
    return float(low), float(high)


@dataclass(frozen=True)
class Estimate:
    """One linear contrast of a fit: its estimate, interval and two-sided p-value."""

    effect: float
    ci_low: float
    ci_high: float
    p_value: float
    df: float
    se: float = math.nan


def contrast(fit, weights: np.ndarray | str, alpha: float = ALPHA) -> Estimate:
    """`fit.t_test` of one contrast (a weight per parameter, or a hypothesis string); NaN
    interval and p-value where the fit leaves no residual degrees of freedom."""
    test = fit.t_test(weights)
    effect, df = float(np.squeeze(test.effect)), float(fit.df_resid)
    if not (df > 0 and float(np.squeeze(test.sd)) > 0):
        return Estimate(effect, math.nan, math.nan, math.nan, df)
    low, high = (float(v) for v in np.squeeze(test.conf_int(alpha=alpha)))
    return Estimate(effect, low, high, float(np.squeeze(test.pvalue)), df, float(np.squeeze(test.sd)))


def paired_estimate(diffs: np.ndarray, alpha: float = ALPHA) -> Estimate:
    """The mean of paired differences (one per seed) with its t-interval and two-sided
    p-value on len - 1 degrees of freedom; NaN interval and p-value with fewer than two."""
    diffs = np.asarray(diffs, float)
    effect, df = float(diffs.mean()) if len(diffs) else math.nan, float(len(diffs) - 1)
    if len(diffs) < 2 or not diffs.std() > 0:
        return Estimate(effect, math.nan, math.nan, math.nan, df)
    described = DescrStatsW(diffs)
    low, high = described.tconfint_mean(alpha)
    return Estimate(effect, float(low), float(high), float(described.ttest_mean()[1]), df, float(described.std_mean))


def level_contrasts(levels: Sequence[float], seeds: Sequence, response: Sequence[float], alpha: float = ALPHA) -> dict[float, Estimate]:
    """Each nonzero level's difference from level 0 (for instance a strength against off), from
    one least-squares fit of `response` on a term per nonzero level and a block per seed: every
    interval rests on the residual error of all runs, not on the few seeds of its own level (two
    seeds give one degree of freedom, and two that differ alike an interval of zero width)."""
    levels = np.asarray(levels, float)
    values = sorted(set(levels) - {0.0})
    frame = pd.DataFrame({f"l{i}": (levels == v).astype(float) for i, v in enumerate(values)})
    frame["seed"], frame["_y"] = np.asarray(seeds), np.asarray(response, float)
    fit = block_fit(frame, "_y", [f"l{i}" for i in range(len(values))])
    columns = list(fit.model.exog_names)
    out = {}
    for i, v in enumerate(values):
        weights = np.zeros(len(columns))
        weights[columns.index(f"l{i}")] = 1.0
        out[v] = contrast(fit, weights, alpha)
    return out


def mean_prediction(fit, rows: np.ndarray, alpha: float = ALPHA) -> pd.DataFrame:
    """`fit.get_prediction` for rows of the design matrix (columns in the fit's order):
    mean, mean_ci_lower/upper (the fitted value's interval) and obs_ci_lower/upper (one run's)."""
    return fit.get_prediction(np.atleast_2d(rows), transform=False).summary_frame(alpha=alpha)


def equivalence_p(effect, se, df: float, bound: float) -> np.ndarray:
    """Two one-sided tests (TOST) of |effect| >= bound: the larger of the two one-sided
    p-values (H0: effect <= -bound, H0: effect >= bound); small when the effect surely lies
    within ±bound."""
    effect, se = np.asarray(effect, float), np.asarray(se, float)
    below = stats.t.sf((effect + bound) / se, df)
    above = stats.t.cdf((effect - bound) / se, df)
    return np.maximum(below, above)


@dataclass(frozen=True)
class Simultaneous:
    """A family of effects judged together (`simultaneous`): each effect's Bonferroni
    interval, its adjusted p-values, and the verdict its interval gives."""

    ci_low: np.ndarray
    ci_high: np.ndarray
    p_adjusted: np.ndarray  # two-sided, Bonferroni: below alpha exactly when the interval excludes 0
    p_equivalence_adjusted: np.ndarray  # TOST, Bonferroni: below alpha exactly when the interval lies within +-bound
    said: list[str]  # hurts / helps / harmless / unclear (NaN effects: unclear)
    level: float  # each interval's two-sided error rate: alpha / the number of effects tested


def simultaneous(effect, se, df, bound: float, alpha: float = ALPHA) -> Simultaneous:
    """The verdicts on a family of effects, each read off its printed interval, so that a
    verdict and its interval always agree: (1 - alpha / k) t-intervals for the k effects tested
    (Bonferroni: all k cover at once with probability 1 - alpha or more); `hurts` / `helps`
    where the interval lies below / above zero, `harmless` where it lies within ±bound (two
    one-sided tests at alpha / 2k each), `unclear` otherwise. NaN effects or standard errors are
    not tested and stay `unclear` with NaN intervals."""
    effect, se = np.atleast_1d(np.asarray(effect, float)), np.atleast_1d(np.asarray(se, float))
    df = np.broadcast_to(np.asarray(df, float), effect.shape)
    tested = np.isfinite(effect) & np.isfinite(se) & (se > 0) & (df > 0)
    k = max(int(tested.sum()), 1)
    level = alpha / k
    low, high, p, q = (np.full(effect.shape, math.nan) for _ in range(4))
    critical = stats.t.ppf(1 - level / 2, df[tested])
    low[tested], high[tested] = effect[tested] - critical * se[tested], effect[tested] + critical * se[tested]
    p[tested] = np.minimum(1.0, k * 2 * stats.t.sf(np.abs(effect[tested]) / se[tested], df[tested]))
    q[tested] = np.minimum(1.0, 2 * k * equivalence_p(effect[tested], se[tested], df[tested], bound))
    said = [interval_verdict(lo, hi, bound) for lo, hi in zip(low, high)]
    return Simultaneous(low, high, p, q, said, level)


def replicates_to_settle(se: float, df_per_replicate: float, replicates: int, effect: float, bound: float, tests: int, alpha: float = ALPHA) -> int | None:
    """How many replicates in all would likely (at the estimated effect and its standard
    error shrinking as 1/sqrt(replicates)) turn an `unclear` effect into a verdict: the
    first count, up to 16 replicates, where its (1 - alpha / tests) interval (`simultaneous`)
    would clear zero or fit within ±bound; None when no count up to that does."""
    for total in range(replicates + 1, 17):
        scaled = se * math.sqrt(replicates / total)
        df = df_per_replicate * total
        critical = stats.t.ppf(1 - alpha / (2 * tests), df)
        if abs(effect) / scaled > critical or (bound - abs(effect)) / scaled > critical:  # the interval clears 0, or fits in +-bound
            return total
    return None


def replicates_for_halfwidth(se: float, df: float, replicates: int, halfwidth: float, most: int, alpha: float = ALPHA) -> int:
    """The fewest replicates in all (at least `replicates`, at most `most`) at which an
    estimate with standard error `se` and `df` residual degrees of freedom from `replicates`
    replicates would have a (1 - alpha) t-interval of at most ±`halfwidth`: its standard
    error shrinks as 1/sqrt(replicates) and its degrees of freedom grow as replicates - 1
    (one block per replicate); `most` when none up to it does."""
    for total in range(replicates, most + 1):
        scaled = se * math.sqrt(replicates / total)
        grown = df * (total - 1) / (replicates - 1) if replicates > 1 else df * total / replicates
        if stats.t.ppf(1 - alpha / 2, grown) * scaled <= halfwidth:
            return total
    return max(replicates, most)

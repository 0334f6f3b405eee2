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


def main_effects(runs: pd.DataFrame, names: Sequence[str], response: str = "top1", switch=lambda n: f"aug_{n}") -> MainEffects:
    """Main effects of the switches `switch(name)` (booleans in `runs`) on `response`."""
    frame = pd.DataFrame({n: np.where(runs[switch(n)].astype(bool), 1.0, -1.0) for n in names}, index=runs.index)
    frame["seed"], frame["_y"] = runs["seed"].to_numpy(), runs[response].to_numpy(float)
    blocks = runs["seed"].nunique() - 1
    if len(frame) <= len(names) + 1 + blocks:
        raise ValueError(f"{len(frame)} runs leave no residual degrees of freedom for {len(names)} augmentations")
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


def holm_verdicts(effect: np.ndarray, p_value: np.ndarray, alpha: float = ALPHA) -> tuple[np.ndarray, list[str]]:
    """Holm-adjusted p-values and verdicts: `hurts` / `helps` where the adjusted p-value is
    below alpha, by the effect's sign; `unclear` otherwise."""
    adjusted = holm_adjusted(p_value, alpha)
    return adjusted, ["unclear" if p >= alpha else ("hurts" if e < 0 else "helps") for e, p in zip(effect, adjusted)]


def support_verdicts(effect, se, p_value, sign, df, negligible: float, alpha: float = ALPHA) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Verdicts on claims that each predict the sign of an effect, Holm-corrected across the
    claims tested (NaN p-values are not tested): `supported` where the two-sided test rejects
    zero with the predicted sign, `opposite` where it rejects it with the other, `negligible`
    where the equivalence test (TOST) puts the effect within ±negligible, `unclear`
    otherwise. The Holm-adjusted two-sided and equivalence p-values, and the verdicts."""
    effect, se, p_value = (np.asarray(v, float) for v in (effect, se, p_value))
    df = np.broadcast_to(np.asarray(df, float), effect.shape)
    adjusted, equivalent = np.full(len(effect), math.nan), np.full(len(effect), math.nan)
    tested = ~np.isnan(p_value)
    adjusted[tested] = holm_adjusted(p_value[tested], alpha)
    tost = np.array([equivalence_p(e, x, d, negligible) for e, x, d in zip(effect[tested], se[tested], df[tested])], float)
    equivalent[tested] = holm_adjusted(tost, alpha)
    said = []
    for e, p, q, s in zip(effect, adjusted, equivalent, sign):
        if p < alpha:
            said.append("supported" if s * e > 0 else "opposite")
        elif q < alpha:
            said.append("negligible")
        else:
            said.append("unclear")
    return adjusted, equivalent, said


def interval_verdict(ci_low: float, ci_high: float) -> str:
    """`hurts` / `helps` when the interval excludes zero, `unclear` otherwise (no correction:
    for estimates that are not verdicts of a design, such as the search's own)."""
    if ci_high < 0:
        return "hurts"
    if ci_low > 0:
        return "helps"
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

    return float(optimize.brentq(shortfall, 0.0, se * (critical + 5)))


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


def equivalence_verdicts(effect, se, p_value, df: float, bound: float, alpha: float = ALPHA) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Four verdicts on a family of effects: `hurts` / `helps` where Holm's correction of the
    two-sided tests rejects zero; else `harmless` where Holm's correction of the equivalence
    tests (TOST, ±bound) rejects a difference of `bound` or more; else `unclear`. The
    Holm-adjusted two-sided and equivalence p-values, and the verdicts."""
    adjusted, said = holm_verdicts(np.asarray(effect, float), np.asarray(p_value, float), alpha)
    equivalent = holm_adjusted(equivalence_p(effect, se, df, bound), alpha)
    said = ["harmless" if v == "unclear" and q < alpha else v for v, q in zip(said, equivalent)]
    return adjusted, equivalent, said


def replicates_to_settle(se: float, df_per_replicate: float, replicates: int, effect: float, bound: float, tests: int, alpha: float = ALPHA) -> int | None:
    """How many replicates in all would likely (at the estimated effect and its standard
    error shrinking as 1/sqrt(replicates)) turn an `unclear` effect into a verdict: the
    first count, up to 16 replicates, where either test would reject at alpha / tests; None
    when no count up to that does."""
    for total in range(replicates + 1, 17):
        scaled = se * math.sqrt(replicates / total)
        df = df_per_replicate * total
        critical = stats.t.ppf(1 - alpha / (2 * tests), df)
        if abs(effect) / scaled > critical or (bound - abs(effect)) / scaled > stats.t.ppf(1 - alpha / tests, df):
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

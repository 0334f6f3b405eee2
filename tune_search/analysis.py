"""Per-augmentation effects from a search: pure functions over the exported DataFrames.

ASHA lets only good trials train long, so final scores are biased by survivorship. The
effects here compare every trial at the same fidelity (the last epoch that every trial that
did not fail reached) and come from one ridge regression over everything that was searched
(every switch, its strength, lr, freeze depth and searched extras), bootstrapped over trials.
"""

from __future__ import annotations

import math

import numpy as np
import optuna
import pandas as pd
from sklearn.linear_model import Ridge

from tune_search.constants import FINISHED
from tune_search.stats import interval_verdict
from tune_search.trainable.augment import strength_key, switch_key
from tune_search.trainable.hyperparameters import BY_NAME, HYPERPARAMETERS, Hyperparameter

MIN_TRIALS = 10  # fewer trials than this say nothing about a dozen switches
MIN_FOR_SLOPE = 10  # trials with the switch on before a strength slope is fitted
EFFECT_COLUMNS = (
    "augmentation", "effect", "ci_low", "ci_high", "verdict", "n_on", "n_off", "method", "importance",
    "mean_strength", "slope", "slope_ci_low", "slope_ci_high", "harmful_above",
)  # fmt: skip


def common_fidelity(trials: pd.DataFrame) -> int:
    """The largest epoch that every trial which did not fail reached."""
    ok = trials[trials["status"].isin(FINISHED)]
    return int(ok["epochs"].min()) if len(ok) else 0


def at_epoch(trials: pd.DataFrame, history: pd.DataFrame, epoch: int) -> pd.DataFrame:
    """trials' config columns with `score`, each trial's top-1 at `epoch`."""
    scores = history.loc[history["epoch"] == epoch, ["trial_id", "top1"]].rename(columns={"top1": "score"})
    ok = trials[trials["status"].isin(FINISHED)]
    return ok.merge(scores, on="trial_id", how="inner")


def _varies(column: pd.Series) -> bool:
    return column.nunique(dropna=True) > 1


def control_features(table: pd.DataFrame) -> pd.DataFrame:
    """Every hyperparameter that varies (on a log scale where the table says so): centred,
    each with a square term (an optimum inside the range is the usual shape)."""
    x = pd.DataFrame(index=table.index)
    for h in HYPERPARAMETERS:  # every searched one is a control
        column = h.name
        if column in table and _varies(table[column]):
            values = np.log10(table[column].clip(lower=1e-12)) if h.log else table[column].astype(float)
            centred = values - values.mean()
            x[column], x[f"{column}^2"] = centred, centred**2
    return x


def augmentation_features(table: pd.DataFrame, name: str, with_slope: bool) -> pd.DataFrame:
    """The switch, and switch x (strength - mean strength when on): the switch's coefficient
    is then the effect at the mean strength, the slope's the change per unit strength."""
    on = table[switch_key(name)].astype(float)
    x = pd.DataFrame({f"on_{name}": on}, index=table.index)
    if with_slope:
        strength = table[strength_key(name)].astype(float)
        mean = strength[on == 1].mean()
        x[f"slope_{name}"] = on * (strength.fillna(mean) - mean)
    return x


def _fit(x: np.ndarray, y: np.ndarray, alpha: float) -> np.ndarray:
    scale = x.std(axis=0)
    scale[scale == 0] = 1.0
    return Ridge(alpha=alpha).fit(x / scale, y).coef_ / scale


def _bootstrap(x: pd.DataFrame, y: np.ndarray, samples: np.ndarray, alpha: float) -> pd.DataFrame:
    """Rows: point estimate, 2.5 % and 97.5 % percentiles of the bootstrap; one column per feature."""
    x = x.loc[:, [c for c in x.columns if _varies(x[c])]]
    values = x.to_numpy(float)
    boots = np.array([_fit(values[i], y[i], alpha) for i in samples])
    rows = [_fit(values, y, alpha), np.percentile(boots, 2.5, axis=0), np.percentile(boots, 97.5, axis=0)]
    return pd.DataFrame(rows, index=["point", "low", "high"], columns=x.columns)


def estimate_effects(
    table: pd.DataFrame,
    augmentations: list[str],
    *,
    n_boot: int = 1000,
    alpha: float = 1e-3,
    seed: int = 0,
    fidelity: str = "",
) -> pd.DataFrame:
    """One row per augmentation: its effect on `score` (a difference of fractions; negative
    hurts) with a 95 % bootstrap interval over trials, the slope of the effect per unit
    strength (where at least MIN_FOR_SLOPE trials had it on), and the strength above which it
    turns harmful when the slope is clearly negative.

    With enough trials one joint regression holds every switch and the controls; with fewer
    (fewer than 3 per feature) each augmentation gets its own regression on the controls,
    which treats the other switches as noise: TPE draws them independently of this one."""
    y = table["score"].to_numpy(float)
    controls = control_features(table)
    slopes = {n: bool(table[switch_key(n)].sum() >= MIN_FOR_SLOPE and _varies(table[strength_key(n)])) for n in augmentations}
    blocks = {n: augmentation_features(table, n, slopes[n]) for n in augmentations}
    samples = np.random.default_rng(seed).integers(0, len(y), (n_boot, len(y)))
    joint = pd.concat([*blocks.values(), controls], axis=1)
    if len(y) >= 3 * joint.shape[1]:
        fits = dict.fromkeys(augmentations, _bootstrap(joint, y, samples, alpha))
        method = "joint ridge regression"
    else:
        fits = {n: _bootstrap(pd.concat([blocks[n], controls], axis=1), y, samples, alpha) for n in augmentations}
        method = "per-augmentation ridge regression"
    searched = [h.label for h in HYPERPARAMETERS if h.name in controls.columns]
    method += f" on {' and '.join(searched) or 'no other setting'}, bootstrap over {len(y)} trials" + (f", {fidelity}" if fidelity else "")
    rows = []
    for name in augmentations:
        fit, on = fits[name], table[switch_key(name)].astype(bool)
        get = lambda key, row: float(fit.at[row, key]) if key in fit else math.nan  # noqa: E731
        key, slope_key = f"on_{name}", f"slope_{name}"
        mean_strength = float(table.loc[on, strength_key(name)].mean()) if on.any() else math.nan
        rows.append(
            {
                "augmentation": name,
                "effect": get(key, "point"),
                "ci_low": get(key, "low"),
                "ci_high": get(key, "high"),
                "verdict": interval_verdict(get(key, "low"), get(key, "high")),
                "n_on": int(on.sum()),
                "n_off": int((~on).sum()),
                "method": method,
                "importance": math.nan,
                "mean_strength": mean_strength,
                "slope": get(slope_key, "point"),
                "slope_ci_low": get(slope_key, "low"),
                "slope_ci_high": get(slope_key, "high"),
                "harmful_above": zero_crossing(get(key, "point"), get(slope_key, "point"), get(slope_key, "high"), mean_strength),
            }
        )
    return pd.DataFrame(rows, columns=list(EFFECT_COLUMNS))


def zero_crossing(effect: float, slope: float, slope_ci_high: float, mean_strength: float) -> float:
    """The strength where the fitted effect crosses zero on its way down, when the data show
    a clearly negative slope (interval below zero) and the crossing lies in [0, 1]."""
    if not (slope_ci_high < 0) or math.isnan(effect):
        return math.nan
    crossing = mean_strength - effect / slope
    return float(np.clip(crossing, 0.0, 1.0)) if crossing <= 1.0 else math.nan


def _distribution(h: Hyperparameter, values: pd.Series) -> optuna.distributions.BaseDistribution:
    """The Optuna distribution spanning a hyperparameter's observed values."""
    if h.choices:
        return optuna.distributions.CategoricalDistribution(sorted(h.cast(v) for v in values.unique()))
    if h.integer:
        return optuna.distributions.IntDistribution(int(values.min()), int(values.max()), log=h.log and values.min() > 0)
    return optuna.distributions.FloatDistribution(float(values.min()), float(values.max()), log=h.log and values.min() > 0)


def importance(table: pd.DataFrame, augmentations: list[str]) -> dict[str, float]:
    """Optuna's PED-ANOVA importance (it handles conditional parameters) of each
    augmentation, its switch and strength together, for `score`. NaN where it cannot say."""
    dists: dict[str, optuna.distributions.BaseDistribution] = {}
    for h in HYPERPARAMETERS:  # every searched one competes for the importance
        if h.name in table and _varies(table[h.name]):
            dists[h.name] = _distribution(h, table[h.name])
    for name in augmentations:
        dists[switch_key(name)] = optuna.distributions.CategoricalDistribution([False, True])
        strengths = table[strength_key(name)].dropna()
        if _varies(strengths):
            dists[strength_key(name)] = optuna.distributions.FloatDistribution(strengths.min(), strengths.max())
    switches = {switch_key(n) for n in augmentations}
    study = optuna.create_study(direction="maximize")
    for _, row in table.iterrows():
        params = {}
        for key, dist in dists.items():
            value = row[key]
            if isinstance(value, float) and math.isnan(value):
                continue
            if isinstance(dist, optuna.distributions.CategoricalDistribution):
                params[key] = bool(value) if key in switches else BY_NAME[key].cast(value)
            else:
                params[key] = int(value) if isinstance(dist, optuna.distributions.IntDistribution) else float(value)
        used = {k: dists[k] for k in params}
        study.add_trial(optuna.trial.create_trial(params=params, distributions=used, value=float(row["score"])))
    try:
        scores = optuna.importance.get_param_importances(study, evaluator=optuna.importance.PedAnovaImportanceEvaluator(), normalize=True)
    except (ValueError, RuntimeError, ZeroDivisionError):
        return {name: math.nan for name in augmentations}
    return {name: scores.get(switch_key(name), 0.0) + scores.get(strength_key(name), 0.0) for name in augmentations}


def search_effects(trials: pd.DataFrame, history: pd.DataFrame, augmentations: list[str], *, seed: int = 0) -> pd.DataFrame:
    """effects.parquet's rows from a search's trials and history."""
    epoch = common_fidelity(trials)
    table = at_epoch(trials, history, epoch)
    if len(table) < MIN_TRIALS:
        raise ValueError(f"{len(table)} trials reached epoch {epoch}: too few to estimate effects")
    effects = estimate_effects(table, augmentations, seed=seed, fidelity=f"top-1 at epoch {epoch}, which every trial reached")
    effects["importance"] = effects["augmentation"].map(importance(table, augmentations))
    return effects

"""Why it hurts: the motivating thread's explanations as contrasts of the explain study's
runs. Pure functions over runs tables.

Each explanation predicts the sign of one contrast. A contrast comparing two cells (freeze
depth, pretrained against scratch, two models, oversampling) comes from one least-squares
fit on those cells' runs, top-1 ~ bundle x cell + seed blocks, so the seeds pair the runs and
the interval rests on the residual error of just those runs. The verdict is `supported` when
the Holm-adjusted test (across the explanations tested) rejects "no difference" with the
predicted sign, `contradicted` when it rejects it with the other sign, or when the whole 95 %
interval lies within +-`negligible` (the explanation would not matter at a size worth naming),
and `unclear` otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import statsmodels.api as sm
from scipy import stats

from tune_search.design import BUNDLE, CLEAN, SCRATCH, depth_cell
from tune_search.screen import ALPHA, main_effects, paired_interval


@dataclass(frozen=True)
class Explanation:
    title: str
    claim: str  # what it predicts, in words
    contrast: str  # the difference measured, in short
    sign: int  # the sign of the contrast it predicts
    detail: str  # the two estimates behind the contrast, for the report ({a}, {b}: points)


EXPLANATIONS = {
    "freeze": Explanation(
        "(a) trainable capacity", "the augmentations hurt more when fewer layers train",
        "classifier only minus all layers", -1,
        "the bundle's effect is {a} training all layers and {b} training the classifier only"),
    "scratch": Explanation(
        "(b) fine-tuning, not scratch", "augmentation helps more when training from scratch than when fine-tuning",
        "random init minus pretrained, same budget", +1,
        "the bundle's effect is {a} from the pretrained weights and {b} from random init"),
    "scratch_long": Explanation(
        "(b) ... with a longer scratch run", "augmentation helps more when training from scratch for longer",
        "random init at the longer budget minus pretrained", +1,
        "the bundle's effect is {a} from the pretrained weights and {b} from random init ({level_b})"),
    "recipe": Explanation(
        "(c) pretraining recipe", "augmentations the backbone was not pretrained with hurt more",
        "outside the recipe minus inside", -1,
        "the screen's mean effect is {a} for augmentations in the recipe and {b} for the others"),
    "crop": Explanation(
        "(d) crops lose the object", "crop hurts more the less of the image it keeps",
        "highest strength minus lowest", -1,
        "crop's effect is {a} at {level_a} and {b} at {level_b}"),
    "capacity": Explanation(
        "(a) model capacity", "a larger model suffers less from the augmentations",
        "largest model minus smallest", +1,
        "the bundle's effect is {a} on the smallest ({level_a}) and {b} on the largest ({level_b})"),
    "confound": Explanation(
        "the oversampling confound", "oversampling every class, done together with augmentation, lowers top-1 by itself",
        "top-1 oversampled minus not, both without the bundle", -1,
        "the bundle's effect is {a} without oversampling and {b} with it"),
}  # fmt: skip

EXPLAIN_COLUMNS = (
    "explanation", "title", "claim", "contrast", "expected", "effect", "ci_low", "ci_high", "p_value", "p_holm",
    "verdict", "level_a", "effect_a", "level_b", "effect_b", "n_runs", "df", "note",
)  # fmt: skip
CELL_COLUMNS = ("cell", "freeze_depth", "model", "weights", "oversample_to", "max_epochs", "top1_without", "top1_with", "bundle_effect", "ci_low", "ci_high", "n_seeds")


def cells(runs: pd.DataFrame) -> pd.DataFrame:
    """Per cell, the bundle's effect (on minus off, paired by seed) with a t-interval over
    seeds, and the mean top-1 without and with it."""
    rows = []
    for label, group in runs[runs["label"] != "crop"].groupby("label", sort=False):
        on = group[group[BUNDLE].astype(bool)].set_index("seed")["top1"]
        off = group[~group[BUNDLE].astype(bool)].set_index("seed")["top1"]
        common = on.index.intersection(off.index)
        diffs = (on.loc[common] - off.loc[common]).to_numpy(float)
        low, high = paired_interval(diffs)
        first = group.iloc[0]
        rows.append(
            {
                "cell": label,
                **{k: first.get(k) for k in ("freeze_depth", "model", "weights", "oversample_to", "max_epochs")},
                "top1_without": float(off.mean()),
                "top1_with": float(on.mean()),
                "bundle_effect": float(diffs.mean()) if len(diffs) else math.nan,
                "ci_low": low,
                "ci_high": high,
                "n_seeds": len(diffs),
            }
        )
    return pd.DataFrame(rows, columns=list(CELL_COLUMNS))


@dataclass(frozen=True)
class TwoCells:
    """The 2 x 2 fit of two cells with the bundle off and on: the bundle's effect in each,
    the difference between those effects (the interaction), and the second cell's shift
    with the bundle off; each estimate with its standard error, on `df` residual df."""

    effect_a: float
    effect_b: float
    interaction: float
    interaction_se: float
    shift: float
    shift_se: float
    df: float
    n_runs: int

    def interval(self, estimate: float, se: float, level: float = 0.95) -> tuple[float, float]:
        if not (self.df > 0 and se > 0):
            return math.nan, math.nan
        half = stats.t.ppf(0.5 + level / 2, self.df) * se
        return estimate - half, estimate + half

    def p_value(self, estimate: float, se: float) -> float:
        return float(2 * stats.t.sf(abs(estimate / se), self.df)) if self.df > 0 and se > 0 else math.nan


def two_cells(runs: pd.DataFrame, a: str, b: str, response: str = "top1") -> TwoCells | None:
    """Fit `response` ~ bundle + cell + bundle:cell + seed blocks on cells `a` and `b`;
    None when either cell has no runs."""
    mine = runs[runs["label"].isin([a, b])]
    if not (mine["label"] == a).any() or not (mine["label"] == b).any():
        return None
    on = mine[BUNDLE].astype(bool).astype(float)
    in_b = (mine["label"] == b).astype(float)
    x = pd.DataFrame({"const": 1.0, "bundle": on, "cell": in_b, "both": on * in_b}, index=mine.index)
    for seed in sorted(mine["seed"].unique())[1:]:
        x[f"seed_{seed}"] = (mine["seed"] == seed).astype(float)
    fit = sm.OLS(mine[response].to_numpy(float), x).fit()
    df = float(fit.df_resid) if len(mine) > x.shape[1] else 0.0
    se = fit.bse if df > 0 else pd.Series(math.nan, index=x.columns)
    return TwoCells(
        effect_a=float(fit.params["bundle"]),
        effect_b=float(fit.params["bundle"] + fit.params["both"]),
        interaction=float(fit.params["both"]),
        interaction_se=float(se["both"]),
        shift=float(fit.params["cell"]),
        shift_se=float(se["cell"]),
        df=df,
        n_runs=len(mine),
    )


def _row(key: str, effect: float, interval: tuple[float, float], p: float, **rest) -> dict:
    e = EXPLANATIONS[key]
    return {
        "explanation": key, "title": e.title, "claim": e.claim, "contrast": e.contrast,
        "expected": "negative" if e.sign < 0 else "positive",
        "effect": effect, "ci_low": interval[0], "ci_high": interval[1], "p_value": p, **rest,
    }  # fmt: skip


def _interaction_row(key: str, fit: TwoCells | None, a: str, b: str) -> dict | None:
    if fit is None:
        return None
    interval = fit.interval(fit.interaction, fit.interaction_se)
    p = fit.p_value(fit.interaction, fit.interaction_se)
    return _row(key, fit.interaction, interval, p, level_a=a, effect_a=fit.effect_a, level_b=b, effect_b=fit.effect_b, n_runs=fit.n_runs, df=fit.df)


def recipe_row(screen: pd.DataFrame, names: Sequence[str], in_recipe: Sequence[str], source: str) -> dict | None:
    """(c): the screen's mean main effect of the screened augmentations outside the recipe
    minus inside it, as one linear contrast of the screen's fit; None when either group is
    empty."""
    inside = [n for n in names if n in in_recipe]
    outside = [n for n in names if n not in in_recipe]
    if not inside or not outside:
        return None
    fit = main_effects(screen, names).fit
    contrast = np.zeros(len(fit.params))
    columns = list(fit.model.exog_names)
    for group, weight in ((outside, 2.0), (inside, -2.0)):  # a coefficient is half an effect
        for name in group:
            contrast[columns.index(name)] = weight / len(group)
    test = fit.t_test(contrast)
    effect = float(np.squeeze(test.effect))
    low, high = (float(v) for v in np.squeeze(test.conf_int(alpha=ALPHA)))
    inside_mean = float(2 * fit.params[inside].mean())
    outside_mean = float(2 * fit.params[outside].mean())
    note = f"in the recipe: {', '.join(inside)}; outside: {', '.join(outside)}; the recipe: {source}"
    return _row("recipe", effect, (low, high), float(np.squeeze(test.pvalue)), level_a="in recipe", effect_a=inside_mean,
                level_b="outside", effect_b=outside_mean, n_runs=int(fit.nobs), df=float(fit.df_resid), note=note)  # fmt: skip


def crop_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Crop's dose runs beside their reference (the base depth's cell with the bundle off),
    labelled as `tune_search.screen.dose_effects` reads them."""
    crop = runs[runs["label"] == "crop"]
    if crop.empty:
        return crop
    reference = runs[(runs["label"] == depth_cell(int(crop["freeze_depth"].iloc[0]))) & ~runs[BUNDLE].astype(bool)]
    return pd.concat([reference.assign(label=CLEAN), crop], ignore_index=True)


def crop_row(runs: pd.DataFrame) -> dict | None:
    """(d): crop's effect at its highest strength minus at its lowest, from one fit of crop's
    runs and their reference on one level per strength plus seed blocks (the reference's runs
    add residual degrees of freedom)."""
    runs = crop_runs(runs)
    crop = runs[runs["label"] == "crop"]
    levels = sorted(crop["aug_crop_strength"].unique())
    if len(levels) < 2:
        return None
    x = pd.DataFrame({"const": 1.0}, index=runs.index)
    for i, level in enumerate(levels):
        x[f"s{i}"] = ((runs["label"] == "crop") & (runs["aug_crop_strength"] == level)).astype(float)
    for seed in sorted(runs["seed"].unique())[1:]:
        x[f"seed_{seed}"] = (runs["seed"] == seed).astype(float)
    if len(runs) <= x.shape[1]:
        return None
    fit = sm.OLS(runs["top1"].to_numpy(float), x).fit()
    contrast = np.zeros(x.shape[1])
    contrast[[x.columns.get_loc("s0"), x.columns.get_loc(f"s{len(levels) - 1}")]] = (-1.0, 1.0)
    test = fit.t_test(contrast)
    low, high = (float(v) for v in np.squeeze(test.conf_int(alpha=ALPHA)))
    return _row("crop", float(np.squeeze(test.effect)), (low, high), float(np.squeeze(test.pvalue)),
                level_a=f"strength {levels[0]:g}", effect_a=float(fit.params["s0"]), level_b=f"strength {levels[-1]:g}",
                effect_b=float(fit.params[f"s{len(levels) - 1}"]), n_runs=len(runs), df=float(fit.df_resid))  # fmt: skip


def explain_table(
    runs: pd.DataFrame,
    *,
    max_depth: int,
    screen: pd.DataFrame | None = None,
    screened: Sequence[str] = (),
    recipe: tuple[Sequence[str], str] | None = None,
    params: Mapping[str, int] | None = None,
    negligible: float = 0.01,
) -> pd.DataFrame:
    """explain.parquet: one row per explanation the runs (and the screen) can test, with its
    contrast, 95 % interval, raw and Holm-adjusted p-values and verdict.

    `params`: each cell's parameter count, by cell label ("depth 0" is the study's own model
    training all layers, "model NAME" the others), for the capacity contrast."""
    labels = set(runs["label"])
    all_layers = depth_cell(0)
    rows = [_interaction_row("freeze", two_cells(runs, all_layers, depth_cell(max_depth)), all_layers, depth_cell(max_depth))]
    rows.append(_interaction_row("scratch", two_cells(runs, all_layers, SCRATCH), all_layers, SCRATCH))
    longer = sorted(label for label in labels if label.startswith(f"{SCRATCH} ") and label.endswith(" epochs"))
    if longer:
        rows.append(_interaction_row("scratch_long", two_cells(runs, all_layers, longer[0]), all_layers, longer[0]))
    if recipe is not None and screen is not None:
        rows.append(recipe_row(screen, screened, *recipe))
    rows.append(crop_row(runs))
    sized = sorted((n, label) for label, n in (params or {}).items() if label in labels and (label == all_layers or label.startswith("model ")))
    if len(sized) >= 2:
        (small, a), (large, b) = sized[0], sized[-1]
        named = runs.groupby("label")["model"].first().to_dict() if "model" in runs else {}
        row = _interaction_row("capacity", two_cells(runs, a, b), named.get(a) or a, named.get(b) or b)
        rows.append(row | {"note": f"{small / 1e6:.1f} M and {large / 1e6:.1f} M parameters"})
    oversampled = sorted(label for label in labels if label.startswith("oversample "))
    if oversampled:
        fit = two_cells(runs, all_layers, oversampled[0])
        if fit is not None:
            rows.append(_row("confound", fit.shift, fit.interval(fit.shift, fit.shift_se), fit.p_value(fit.shift, fit.shift_se),
                             level_a="not oversampled", effect_a=fit.effect_a, level_b=oversampled[0], effect_b=fit.effect_b,
                             n_runs=fit.n_runs, df=fit.df, note=f"the bundle's effect changes by {100 * fit.interaction:+.1f} points when oversampled"))  # fmt: skip
    table = pd.DataFrame([r for r in rows if r is not None], columns=list(EXPLAIN_COLUMNS))
    return judge(table, negligible)


def judge(table: pd.DataFrame, negligible: float, alpha: float = ALPHA) -> pd.DataFrame:
    """Holm-adjusted p-values across the explanations tested, and each verdict."""
    from statsmodels.stats.multitest import multipletests

    table = table.copy()
    tested = table["p_value"].notna()
    table["p_holm"] = math.nan
    if tested.any():
        table.loc[tested, "p_holm"] = multipletests(table.loc[tested, "p_value"], alpha=alpha, method="holm")[1]
    verdicts = []
    for row in table.itertuples():
        sign = -1 if row.expected == "negative" else 1
        if row.p_holm < alpha:
            verdicts.append("supported" if sign * row.effect > 0 else "contradicted")
        elif -negligible <= row.ci_low and row.ci_high <= negligible:
            verdicts.append("contradicted")
        else:
            verdicts.append("unclear")
    table["verdict"] = verdicts
    return table


def crop_sensitivity_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per kept area, over all classes: the share of validation images whose prediction the
    crop changes, and top-1 on the crops."""
    weights = table["images"]
    grouped = table.assign(_changed=table["changed"] * weights, _top1=table["top1"] * weights).groupby("area")
    return pd.DataFrame(
        {"changed": grouped["_changed"].sum() / grouped["images"].sum(), "top1": grouped["_top1"].sum() / grouped["images"].sum()}
    ).reset_index()


def sentence(row: Mapping) -> str:
    """One explanation's result in plain words (effects in points of top-1)."""
    e = EXPLANATIONS[row["explanation"]]

    def pts(x: float) -> str:
        return "n/a" if x is None or math.isnan(x) else f"{100 * x:+.1f}"

    interval = "" if math.isnan(row["ci_low"]) else f" [{pts(row['ci_low'])}, {pts(row['ci_high'])}]"
    detail = e.detail.format(a=f"{pts(row['effect_a'])} points", b=f"{pts(row['effect_b'])} points", level_a=row["level_a"], level_b=row["level_b"])
    note = f" ({row['note']})" if isinstance(row.get("note"), str) and row["note"] else ""
    return (
        f"**{e.title}: {row['verdict']}.** Claim: {e.claim}. {detail[0].upper()}{detail[1:]}; the difference "
        f"({e.contrast}) is {pts(row['effect'])}{interval} points, where the claim predicts a {row['expected']} one{note}."
    )

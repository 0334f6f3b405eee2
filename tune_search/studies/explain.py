"""Why it hurts: the motivating thread's explanations, each tested by one contrast of a
designed study.

Every cell changes one thing against the base settings (freeze depth, random init, another
model, oversampled classes) and trains with the augmentation bundle off and on, once per
seed; crop alone runs at several strengths beside them. A contrast comparing two cells is taken
seed by seed (the bundle's effect in one cell minus in the other, per seed) with a t-interval
over the seeds: the seeds pair the runs, and every interval rests on its own contrast's spread.
The verdicts: `tune_search.stats.support_verdicts`, each read off its Bonferroni interval
across the explanations tested (the interval printed beside it).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import pandas as pd
from pydantic import Field, field_validator

from tune_search import render
from tune_search.constants import CLEAN, MOTIVATING
from tune_search.runs import BUNDLE
from tune_search.schemas import DIFFERENCE, DOSE, EXPLAIN_RUNS, FLOAT, FRACTION, INT, INTERVAL, PROBABILITY, STRING, Table, columns
from tune_search.sections import ConfigError, ModelConfig, PositiveInt, SearchConfigBase, Section, Strength, two_levels
from tune_search.stats import ALPHA, Estimate, contrast, paired_estimate, paired_interval, replicates_for_halfwidth, support_verdicts
from tune_search.studies import run_configs, training
from tune_search.studies._base import Flag, Study, StudyContext, Tables
from tune_search.studies.dose import dose_table
from tune_search.studies.run_configs import known_augmentations
from tune_search.studies.screen import fit as screen_fit
from tune_search.studies.screen import harmful, seeds_flag
from tune_search.trainable.augment import names_in, strength_key, switch_key
from tune_search.trainable.models import ModelSpec

# a run's cell: what it changes against the base settings (the `cell` key of its config)
DEPTH, SCRATCH, SCRATCH_LONG, MODEL, OVERSAMPLE, CROP = "depth", "scratch", "scratch_long", "model", "oversample", "crop"


@dataclass(frozen=True)
class Explanation:
    title: str
    claim: str  # what it predicts, in words
    contrast: str  # the difference measured, in short
    sign: int  # the sign of the contrast it predicts
    detail: str  # the two estimates behind the contrast, for the report ({a}, {b}: points)


class ExplainModel(Section):
    name: str
    weights: str = ModelSpec.weights

    _known = field_validator("name")(ModelConfig._known.__func__)


class ExplainConfig(Section):
    """The explain study: the motivating thread's explanations, each tested by a contrast."""

    enabled: bool = False
    bundle: Literal["auto"] | tuple[str, ...] = "auto"  # auto: the screen's harmful set, else constants.MOTIVATING
    seeds: Annotated[int, Field(ge=2)] | Literal["auto"] = "auto"  # auto: 3 seeds, then as many as reach +-precision
    precision: Annotated[float, Field(gt=0, lt=1)] = 0.02  # auto: the half-width a contrast's 95 % interval should reach
    max_seeds: Annotated[int, Field(ge=3)] = 32  # auto: at most this many seeds
    scratch_epochs: PositiveInt | None = None  # also a longer from-scratch run, at this budget
    scratch_lr: tuple[Annotated[float, Field(gt=0)], ...] = (1.0, 3.0, 10.0)  # the from-scratch lr sweep: multiples of the base lr
    models: tuple[str | ExplainModel, ...] = ()  # capacity: other models, all layers training
    oversample_to: PositiveInt | None = None  # None: 4x the mean class size (the thread: 60 -> 256)
    crop_strengths: tuple[Strength, ...] = (0.25, 0.5, 1.0)
    negligible: Annotated[float, Field(gt=0, lt=1)] = 0.01  # negligible: an equivalence test puts the contrast within +-this

    @field_validator("models")
    @classmethod
    def _known_models(cls, value):
        return tuple(ExplainModel(name=m) if isinstance(m, str) else m for m in value)

    _levels = field_validator("crop_strengths")(lambda value: two_levels(value, "crop's dose-response"))


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
    "explanation", "title", "claim", "contrast", "expected", "effect", "ci_low", "ci_high", "se", "p_value", "p_adjusted",
    "p_equivalence_adjusted", "verdict", "level_a", "effect_a", "level_b", "effect_b", "n_runs", "df", "note",
)  # fmt: skip
CELL_COLUMNS = (
    "cell",
    "freeze_depth",
    "model",
    "weights",
    "oversample_to",
    "max_epochs",
    "top1_without",
    "top1_with",
    "bundle_effect",
    "ci_low",
    "ci_high",
    "n_seeds",
)


# configs -------------------------------------------------------------------------------------


def depth_cell(depth: int) -> str:
    return f"depth {depth}"


def explain_configs(
    base: Mapping[str, Any],
    bundle: Mapping[str, float],
    searched: Sequence[str],
    *,
    model: tuple[str, str],
    depths: Sequence[int],
    seeds: Sequence[int],
    scratch_epochs: int | None,
    models: Sequence[tuple[str, str]],
    oversample_to: int,
    crop_strengths: Sequence[float],
    scratch_lr: float | None = None,
) -> list[dict[str, Any]]:
    """The explain study: cells that each change one thing against the base settings, every
    cell trained with the `bundle` of augmentations off and on, once per seed.

    Cells: each freeze depth in `depths` (they must hold 0 and the base's depth); from
    scratch (random init, all layers) at the same budget and, with `scratch_epochs`, at
    that budget; each of `models` (name, weights) with all layers training; every class
    oversampled to `oversample_to` images, all layers. Beside them, crop alone at each of
    `crop_strengths` at the base settings (its reference: the base depth's cell with the
    bundle off). The from-scratch cells train at `scratch_lr` (default: the base's). Every
    config names its cell (`label` in words, `cell` its kind), model, weights, oversampling and
    budget (`SPEC_KEYS`; None: the search's)."""
    settings = run_configs.base_settings(base)
    names = list(dict.fromkeys([*searched, *bundle, "crop"]))
    own = {"model": model[0], "weights": model[1], "oversample_to": None, "max_epochs": None}
    all_layers = {**own, "freeze_depth": 0}
    cells = [(depth_cell(d), DEPTH, {**own, "freeze_depth": d}) for d in depths]
    scratch = {**all_layers, "weights": "none", "lr": scratch_lr or settings["lr"]}
    cells.append((SCRATCH, SCRATCH, scratch))
    if scratch_epochs:
        cells.append((f"{SCRATCH} {scratch_epochs} epochs", SCRATCH_LONG, {**scratch, "max_epochs": scratch_epochs}))
    cells += [(f"model {name}", MODEL, {**all_layers, "model": name, "weights": weights}) for name, weights in models if name != model[0]]
    cells.append((f"oversample {oversample_to}", OVERSAMPLE, {**all_layers, "oversample_to": oversample_to}))
    out = []
    for seed in seeds:
        run = {"study": "explain", "design_row": -1, "seed": seed}
        for label, kind, changes in cells:
            for on in (False, True):
                config = run_configs.with_augmentations({**settings, **changes}, bundle if on else {}, names)
                out.append({**config, **run, "label": label, "cell": kind, BUNDLE: on})
        for level in crop_strengths:
            out.append({**run_configs.with_augmentations({**settings, **own}, {"crop": level}, names), **run, "label": "crop", "cell": CROP, BUNDLE: False})
    return out


# analysis ------------------------------------------------------------------------------------


def cells(runs: pd.DataFrame) -> pd.DataFrame:
    """Per cell, the bundle's effect (on minus off, paired by seed) with a t-interval over
    seeds, and the mean top-1 without and with it."""
    rows = []
    for label, group in runs[runs["cell"] != CROP].groupby("label", sort=False):
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
    """Two cells with the bundle off and on, compared seed by seed: the bundle's mean effect
    in each, the difference between those effects (the interaction), and the second cell's
    shift with the bundle off."""

    effect_a: float
    effect_b: float
    interaction: Estimate
    shift: Estimate
    n_runs: int

    @property
    def df(self) -> float:
        return self.interaction.df


def _by_seed(runs: pd.DataFrame, label: str, response: str) -> pd.DataFrame:
    """One row per seed of cell `label`: its `response` with the bundle off and on."""
    cell = runs[runs["label"] == label]
    return cell.assign(_on=cell[BUNDLE].astype(bool)).pivot_table(index="seed", columns="_on", values=response, aggfunc="mean")


def two_cells(runs: pd.DataFrame, a: str, b: str, response: str = "top1") -> TwoCells | None:
    """Cells `a` and `b` compared seed by seed (`stats.paired_estimate` over the seeds both
    ran off and on): per seed, the bundle's effect in b minus in a (the interaction) and b
    minus a with the bundle off (the shift). Each contrast rests on the spread of its own
    per-seed differences, so a seed that moves a cell's two runs together cancels, and a
    noisy cell widens only the contrasts it is in (the demo's cells differ eightfold in spread,
    so one variance pooled over them all would be too narrow for some and too wide for the
    rest). None when either cell has no seed run off and on."""
    if "cell" in runs:
        runs = runs[runs["cell"] != CROP]
    first, second = _by_seed(runs, a, response), _by_seed(runs, b, response)
    both = first.dropna().index.intersection(second.dropna().index)
    if not len(both) or {False, True} - set(first.columns) or {False, True} - set(second.columns):
        return None
    first, second = first.loc[both], second.loc[both]
    effect_a, effect_b = first[True] - first[False], second[True] - second[False]
    return TwoCells(
        effect_a=float(effect_a.mean()),
        effect_b=float(effect_b.mean()),
        interaction=paired_estimate((effect_b - effect_a).to_numpy(float)),
        shift=paired_estimate((second[False] - first[False]).to_numpy(float)),
        n_runs=4 * len(both),
    )


FIRST_SEEDS = 3  # explain.seeds auto: seeds before the look that sizes the study


def interactions(runs: pd.DataFrame) -> dict[str, TwoCells]:
    """Per other cell, its comparison with the all-layers cell: the contrasts between bundle
    effects the study reports (the widest kind)."""
    labels = [label for label in dict.fromkeys(runs.loc[runs["cell"] != CROP, "label"]) if label != depth_cell(0)]
    return {label: fit for label in labels if (fit := two_cells(runs, depth_cell(0), label)) is not None}


def seeds_for_precision(runs: pd.DataFrame, precision: float, max_seeds: int, alpha: float = ALPHA) -> int:
    """`explain.seeds: auto`'s rule: the fewest seeds in all (at least those run, at most
    `max_seeds`) at which every contrast of the all-layers cell's bundle effect with another
    cell's would have a (1 - alpha) interval of at most ±`precision`, from the spread of
    each contrast's per-seed differences so far. It reads only the spreads, which are
    independent of the contrasts' means for normal errors, never an estimate: choosing the
    count this way does not steer the verdicts (tests simulate the whole procedure)."""
    seeds = int(runs["seed"].nunique())
    fits = [fit for fit in interactions(runs).values() if fit.df > 0 and fit.interaction.se > 0]
    if not fits:
        return max(seeds, max_seeds)
    return max(replicates_for_halfwidth(fit.interaction.se, fit.df, seeds, precision, max_seeds, alpha) for fit in fits)


def next_seed_count(runs: pd.DataFrame, precision: float, max_seeds: int) -> int:
    """How many seeds in all once auto's next batch has run: `seeds_for_precision`'s count,
    but at most twice the seeds run so far (a count read from few seeds is rough; the next
    look reads it again from more); the seeds run when no more are needed."""
    seeds = int(runs["seed"].nunique())
    return min(seeds_for_precision(runs, precision, max_seeds), 2 * seeds)


def _halfwidths(runs: pd.DataFrame) -> str:
    """Each cell's contrast with the all-layers cell, as the half-width of its 95 % interval in points."""
    return ", ".join(f"{label} +-{50 * (fit.interaction.ci_high - fit.interaction.ci_low):.1f}" for label, fit in interactions(runs).items())


def _row(key: str, estimate: Estimate, **rest) -> dict:
    e = EXPLANATIONS[key]
    return {
        "explanation": key, "title": e.title, "claim": e.claim, "contrast": e.contrast,
        "expected": "negative" if e.sign < 0 else "positive", "effect": estimate.effect, "ci_low": estimate.ci_low,
        "ci_high": estimate.ci_high, "se": estimate.se, "p_value": estimate.p_value, "df": estimate.df, **rest,
    }  # fmt: skip


def _interaction_row(key: str, fit: TwoCells | None, a: str, b: str) -> dict | None:
    if fit is None:
        return None
    return _row(key, fit.interaction, level_a=a, effect_a=fit.effect_a, level_b=b, effect_b=fit.effect_b, n_runs=fit.n_runs)


NEAR_CHANCE = 0.05  # top-1 within this of chance: a model that learned too little to compare


def _near_chance(runs: pd.DataFrame, row: dict | None, label: str) -> dict | None:
    """No verdict from a from-scratch cell whose top-1 without the bundle stays near chance:
    a model that learned nothing cannot say whether augmentation helps it."""
    if row is None or "per_class_top1" not in runs:
        return row
    cell = runs[(runs["label"] == label) & ~runs[BUNDLE].astype(bool)]
    chance = 1 / len(runs["per_class_top1"].iloc[0])
    top1 = float(cell["top1"].mean())
    if top1 > chance + NEAR_CHANCE:
        return row
    return row | {"p_value": math.nan, "note": f"no verdict: from scratch top-1 {top1:.3f} stays near chance ({chance:.3f})"}


def recipe_row(screen: pd.DataFrame, names: Sequence[str], in_recipe: Sequence[str], source: str) -> dict | None:
    """(c): the screen's mean main effect of the screened augmentations outside the recipe
    minus inside it, as one linear contrast of the screen's fit; None when either group is
    empty."""
    inside = [n for n in names if n in in_recipe]
    outside = [n for n in names if n not in in_recipe]
    if not inside or not outside:
        return None
    results = screen_fit(screen, names).fit
    weights = np.zeros(len(results.params))
    columns = list(results.model.exog_names)
    for group, weight in ((outside, 2.0), (inside, -2.0)):  # a coefficient is half an effect
        for name in group:
            weights[columns.index(name)] = weight / len(group)
    note = (
        f"these {len(names)} screened augmentations only, not a sample of augmentations;"
        f" in the recipe: {', '.join(inside)}; outside: {', '.join(outside)}; the recipe: {source}"
    )
    return _row("recipe", contrast(results, weights), level_a="in recipe", effect_a=float(2 * results.params[inside].mean()),
                level_b="outside", effect_b=float(2 * results.params[outside].mean()), n_runs=int(results.nobs), note=note)  # fmt: skip


def crop_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Crop's dose runs beside their reference (the base depth's cell with the bundle off),
    labelled as the dose-response's analysis reads them."""
    crop = runs[runs["cell"] == CROP]
    if crop.empty:
        return crop
    depth = int(crop["freeze_depth"].iloc[0])
    reference = runs[(runs["cell"] == DEPTH) & (runs["freeze_depth"] == depth) & ~runs[BUNDLE].astype(bool)]
    return pd.concat([reference.assign(label=CLEAN), crop], ignore_index=True)


def crop_row(runs: pd.DataFrame) -> dict | None:
    """(d): crop's effect at its highest strength minus at its lowest, seed by seed
    (`stats.paired_estimate`); beside it, crop's mean effect at each against the reference
    (the base depth's cell with the bundle off) of the same seed."""
    runs = crop_runs(runs)
    crop = runs[runs["cell"] == CROP]
    levels = sorted(crop[strength_key("crop")].unique())
    if len(levels) < 2:
        return None
    by_seed = crop.pivot_table(index="seed", columns=strength_key("crop"), values="top1", aggfunc="mean")[[levels[0], levels[-1]]].dropna()
    reference = runs[runs["label"] == CLEAN].groupby("seed")["top1"].mean().reindex(by_seed.index)
    low, high = by_seed[levels[0]], by_seed[levels[-1]]
    return _row("crop", paired_estimate((high - low).to_numpy(float)), level_a=f"strength {levels[0]:g}", effect_a=float((low - reference).mean()),
                level_b=f"strength {levels[-1]:g}", effect_b=float((high - reference).mean()), n_runs=3 * len(by_seed))  # fmt: skip


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
    contrast, simultaneous 95 % interval (Bonferroni across the explanations), raw and
    adjusted p-values and verdict.

    `params`: each cell's parameter count, by cell label ("depth 0" is the study's own model
    training all layers, "model NAME" the others), for the capacity contrast."""
    kinds = runs.groupby("label")["cell"].first().to_dict()
    all_layers = depth_cell(0)
    rows = [_interaction_row("freeze", two_cells(runs, all_layers, depth_cell(max_depth)), all_layers, depth_cell(max_depth))]
    rows.append(_near_chance(runs, _interaction_row("scratch", two_cells(runs, all_layers, SCRATCH), all_layers, SCRATCH), SCRATCH))
    longer = sorted(label for label, kind in kinds.items() if kind == SCRATCH_LONG)
    if longer:
        rows.append(_near_chance(runs, _interaction_row("scratch_long", two_cells(runs, all_layers, longer[0]), all_layers, longer[0]), longer[0]))
    if recipe is not None and screen is not None:
        rows.append(recipe_row(screen, screened, *recipe))
    rows.append(crop_row(runs))
    sized = sorted((n, label) for label, n in (params or {}).items() if label == all_layers or kinds.get(label) == MODEL)
    if len(sized) >= 2:
        (small, a), (large, b) = sized[0], sized[-1]
        named = runs.groupby("label")["model"].first().to_dict() if "model" in runs else {}
        row = _interaction_row("capacity", two_cells(runs, a, b), named.get(a) or a, named.get(b) or b)
        rows.append(row | {"note": f"{small / 1e6:.1f} M and {large / 1e6:.1f} M parameters"})
    oversampled = sorted(label for label, kind in kinds.items() if kind == OVERSAMPLE)
    if oversampled and (fit := two_cells(runs, all_layers, oversampled[0])) is not None:
        note = f"the bundle's effect changes by {100 * fit.interaction.effect:+.1f} points when oversampled"
        rows.append(_row("confound", fit.shift, level_a="not oversampled", effect_a=fit.effect_a, level_b=oversampled[0],
                         effect_b=fit.effect_b, n_runs=fit.n_runs, note=note))  # fmt: skip
    table = pd.DataFrame([r for r in rows if r is not None], columns=list(EXPLAIN_COLUMNS))
    return with_verdicts(table, negligible)


def with_verdicts(table: pd.DataFrame, negligible: float, alpha: float = ALPHA) -> pd.DataFrame:
    """Each explanation's verdict and the interval it is read from, at one correction across
    the explanations tested (`stats.support_verdicts`: Bonferroni intervals, so that a
    `supported` interval excludes zero and an `unclear` one does not)."""
    signs = np.where(table["expected"] == "negative", -1, 1)
    judged, said = support_verdicts(table["effect"], table["se"], signs, table["df"], negligible, alpha)
    return table.assign(
        ci_low=judged.ci_low, ci_high=judged.ci_high, p_adjusted=judged.p_adjusted, p_equivalence_adjusted=judged.p_equivalence_adjusted, verdict=said
    )


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
    interval = "" if math.isnan(row["ci_low"]) else f" [{render.points(row['ci_low'])}, {render.points(row['ci_high'])}]"
    detail = e.detail.format(
        a=f"{render.points(row['effect_a'])} points", b=f"{render.points(row['effect_b'])} points", level_a=row["level_a"], level_b=row["level_b"]
    )
    note = f" ({row['note']})" if isinstance(row.get("note"), str) and row["note"] else ""
    return (
        f"**{e.title}: {row['verdict']}.** Claim: {e.claim}. {detail[0].upper()}{detail[1:]}; the difference "
        f"({e.contrast}) is {render.points(row['effect'])}{interval} points, where the claim predicts a {row['expected']} one{note}."
    )


# the study -----------------------------------------------------------------------------------


def scratch_sweep_configs(base: Mapping[str, Any], searched: Sequence[str], model: tuple[str, str], multiples: Sequence[float]) -> list[dict[str, Any]]:
    """From random init, all layers, no augmentation, seed 0: one run per multiple of the
    base lr (a network trained from scratch usually wants a larger one than a fine-tune)."""
    settings = run_configs.base_settings(base)
    own = {"model": model[0], "weights": "none", "oversample_to": None, "max_epochs": None, "freeze_depth": 0}
    return [
        {**run_configs.with_augmentations({**settings, **own, "lr": settings["lr"] * m}, {}, searched), "study": "explain", "design_row": -1,
         "seed": 0, "label": f"scratch lr x{m:g}", "cell": "scratch_lr", BUNDLE: False}
        for m in multiples
    ]  # fmt: skip


def best_lr(sweep: pd.DataFrame) -> float:
    """The sweep's lr with the best top-1."""
    return float(sweep.loc[sweep["top1"].idxmax(), "lr"])


def explain_bundle(folder, cfg: SearchConfigBase, space) -> dict[str, float]:
    """The augmentations the explain study switches together, at their strengths:
    explain.bundle, else the screen's harmful set, else the thread's six."""
    names: list[str] = list(cfg.explain.bundle) if cfg.explain.bundle != "auto" else []
    screen = folder.read("screen")
    if not names and screen is not None:
        names = sorted(harmful(screen, list(space.augmentations), cfg), key=list(space.augmentations).index)
    names = names or list(MOTIVATING)
    strengths = run_configs.screen_strengths(cfg, space)
    return {n: strengths.get(n, space.reference_strength) for n in names}


def oversample_target(cfg: SearchConfigBase, data) -> int:
    """explain.oversample_to, else 4x the mean class size (the thread: 60 a class -> 256)."""
    return cfg.explain.oversample_to or 4 * math.ceil(len(data.train) / max(data.num_classes, 1))


def _cell_params(model: str, models: list[tuple[str, str]]) -> dict[str, int]:
    from tune_search.trainable.models import parameter_count

    sizes = {depth_cell(0): parameter_count(model)}
    return sizes | {f"model {name}": parameter_count(name) for name, _ in models if name != model}


class Explain(Study):
    name = "explain"
    sections = {"explain": ExplainConfig}

    def consistent(self, cfg: SearchConfigBase) -> None:
        known_augmentations("explain.bundle", cfg.explain.bundle, cfg, "auto")

    command = "explain"
    help = "test the motivating thread's explanations of the harm on a finished search (best after its screen)"
    flags = (
        Flag("--seeds", seeds_flag, "explain.seeds"),
        Flag("--scratch-epochs", int, "explain.scratch_epochs"),
        Flag("--models", list, "explain.models", "other models for the capacity contrast (torch hub cache weights)"),
    )
    tables = {
        "explain_runs": Table("the explain study's runs", EXPLAIN_RUNS),
        "explain_lr": Table("the from-scratch lr sweep that picks the scratch cells' lr", EXPLAIN_RUNS),
        "explain": Table(
            "the thread's explanations, one contrast each",
            [
                *columns("explanation, title, claim, contrast, expected", STRING),
                *INTERVAL,
                *columns("se", FLOAT, DIFFERENCE),
                *columns("p_value, p_adjusted, p_equivalence_adjusted", FLOAT, PROBABILITY),
                *columns("verdict, level_a", STRING),
                *columns("effect_a", FLOAT, DIFFERENCE),
                *columns("level_b", STRING),
                *columns("effect_b", FLOAT, DIFFERENCE),
                *columns("n_runs", INT),
                *columns("df", FLOAT),
                *columns("note", STRING),
            ],
        ),
        "explain_cells": Table(
            "the augmentation bundle's effect in each explain cell",
            [
                *columns("cell", STRING),
                *columns("freeze_depth", INT),
                *columns("model, weights", STRING),
                *columns("oversample_to, max_epochs", INT),
                *columns("top1_without, top1_with", FLOAT, FRACTION),
                *columns("bundle_effect, ci_low, ci_high", FLOAT, DIFFERENCE),
                *columns("n_seeds", INT),
            ],
        ),
        "explain_crop": Table("crop's dose-response in the explain study", DOSE),
        "crop_sensitivity": Table(
            "how often crops change the clean model's predictions, per kept area and class",
            [
                *columns("area", FLOAT, "fraction of the image kept"),
                *columns("class", STRING),
                *columns("images", INT),
                *columns("changed, top1", FLOAT, FRACTION),
            ],
        ),
    }

    def enabled(self, cfg: SearchConfigBase) -> bool:
        return cfg.screen.enabled and cfg.explain.enabled

    def check(self, cfg: SearchConfigBase) -> None:
        """Every model explain.models names loads its weights."""
        from tune_search.trainable.models import ModelSpec, WeightsError, pretrained_backbone

        for m in cfg.explain.models:
            try:
                pretrained_backbone(ModelSpec(name=m.name, weights=m.weights))
            except WeightsError as exc:
                raise ConfigError(f"explain.models: {exc}") from None

    def trains(self, cfg: SearchConfigBase) -> list[tuple[str, str, int]]:
        """All layers training (depth 0), its own model and each other one."""
        return [(cfg.model.name, cfg.model.weights, 0)] + [(m.name, m.weights, 0) for m in cfg.explain.models]

    def run(self, ctx: StudyContext) -> None:
        """Train the explain study at the screen's base settings, measure how crops change the
        clean model's predictions, and write explain_runs.parquet and crop_sensitivity.parquet."""
        from tune_search.trainable.probes import crop_sensitivity
        from tune_search.trainable.trial import TrialSettings, spec_for

        folder, cfg, space, spec, data = ctx.folder, ctx.cfg, ctx.space, ctx.spec, ctx.data
        base = run_configs.study_base(folder, cfg.screen.base)
        bundle = explain_bundle(folder, cfg, space)
        depth = int(base["freeze_depth"])
        depths = sorted({0, depth, space.max_depth})
        models = [(m.name, m.weights) for m in cfg.explain.models]
        oversample_to = oversample_target(cfg, data)
        sweep = scratch_sweep_configs(base, list(space.augmentations), (spec.model.name, spec.model.weights), cfg.explain.scratch_lr)
        print(f"explain: from scratch, {len(sweep)} runs to pick its lr (x{', x'.join(f'{m:g}' for m in cfg.explain.scratch_lr)} the base's {base['lr']:.3g})")
        _, swept = training.train(ctx, sweep, "explain-lr")
        scratch_lr = best_lr(swept) if len(swept) else None
        if len(swept):
            folder.write("explain_lr", swept)
        auto = cfg.explain.seeds == "auto"
        first = FIRST_SEEDS if auto else cfg.explain.seeds

        def design(seeds: Sequence[int]) -> list[dict[str, Any]]:
            return explain_configs(
                base, bundle, list(space.augmentations), model=(spec.model.name, spec.model.weights), depths=depths,
                seeds=list(seeds), scratch_epochs=cfg.explain.scratch_epochs, models=models,
                oversample_to=oversample_to, crop_strengths=cfg.explain.crop_strengths, scratch_lr=scratch_lr,
            )  # fmt: skip

        configs = design(range(first))
        epoch_images = len(data.train)
        timed = [
            (
                int(c["freeze_depth"]),
                (c["max_epochs"] or cfg.budget.max_epochs) * (max(oversample_to * data.num_classes, epoch_images) / epoch_images if c["oversample_to"] else 1),
            )
            for c in configs
        ]
        shown = ", ".join(f"{n} {s:.2g}" for n, s in bundle.items())
        seeds = (
            f"{first} seeds, then as many more as bring each contrast's interval to +-{100 * cfg.explain.precision:g} points (at most {cfg.explain.max_seeds})"
            if auto
            else f"{first} seeds"
        )
        print(
            f"explain: {len(configs)} runs ({seeds}): the bundle ({shown}) off and on at freeze depths "
            f"{', '.join(map(str, depths))}, from scratch (lr {scratch_lr or base['lr']:.3g}), "
            + "".join(f"on {n}, " for n, _ in models if n != spec.model.name)
            + f"with every class oversampled to {oversample_to}; crop alone at {', '.join(f'{s:g}' for s in cfg.explain.crop_strengths)}"
            + training.estimate(folder, timed, training.slots(cfg))
            + (" for the first seeds" if auto else "")
        )
        results, runs = training.train(ctx, configs, "explain")
        if runs.empty:
            raise RuntimeError("every explain run failed; see Ray's log above")
        batches = []
        while auto and (total := next_seed_count(runs, cfg.explain.precision, cfg.explain.max_seeds)) > (seeds := int(runs["seed"].nunique())):
            print(f"explain: after {seeds} seeds, each cell's contrast with depth 0 is known to ({_halfwidths(runs)}) points: seeds {seeds + 1}-{total} next")
            batches.append(f"explain-seeds{len(batches) + 1}")
            _, extra = training.train(ctx, design(range(seeds, total)), batches[-1], phase=f"explain, seeds {seeds + 1}-{total}")
            runs = pd.concat([runs, extra], ignore_index=True)
        if auto:
            print(f"explain: {runs['seed'].nunique()} seeds in all, each cell's contrast with depth 0 known to ({_halfwidths(runs)}) points")
        runs["params"] = runs["label"].map(_cell_params(spec.model.name, models)).astype("Int64")
        folder.write("explain_runs", runs)
        reference = training.clean_model(results, depth_cell(depth), where=lambda run: not run[BUNDLE] and run["seed"] == 0)
        if reference is not None:
            config, state = reference
            folder.write("crop_sensitivity", pd.DataFrame(crop_sensitivity(TrialSettings.from_config(config), spec_for(spec, config), data, state)))
        training.prune(ctx, "explain", "explain-lr", *batches)

    def analyse(self, tables: Tables, cfg: SearchConfigBase, classes: Sequence[str]) -> dict[str, pd.DataFrame]:
        """explain.parquet (one row per explanation tested), explain_cells.parquet (the bundle's
        effect per cell) and crop's dose-response beside them."""
        from tune_search.trainable.models import ModelSpec
        from tune_search.trainable.recipes import pretraining_recipe

        runs, screen = tables.get("explain_runs"), tables.get("screen")
        if runs is None:
            return {}
        recipe = pretraining_recipe(ModelSpec(name=cfg.model.name, weights=cfg.model.weights))
        names = run_configs.screened(screen, list(cfg.space.augmentation_names)) if screen is not None else []
        params = runs.dropna(subset=["params"]).groupby("label")["params"].first().astype(int).to_dict() if "params" in runs else {}
        max_depth = int(runs.loc[runs["cell"] == DEPTH, "freeze_depth"].max())
        out = {
            "explain": explain_table(
                runs,
                max_depth=max_depth,
                screen=screen,
                screened=names,
                params=params,
                negligible=cfg.explain.negligible,
                recipe=None if recipe is None else (recipe.augmentations, recipe.source),
            ),  # fmt: skip
            "explain_cells": cells(runs),
        }
        crop = crop_runs(runs)
        if len(crop):
            out["explain_crop"] = dose_table(crop, ["crop"], cfg.dose.threshold)
        return out

    def section(self, tables: Tables, folder: Path) -> list[str]:
        explain, explain_cells, sensitivity, runs = (tables.get(t) for t in ("explain", "explain_cells", "crop_sensitivity", "explain_runs"))
        if explain is None:
            return []
        lines = ["## Why it hurts: the thread's explanations tested", ""]
        bundle = (
            [n for n in names_in(runs.columns) if switch_key(n) in runs and runs.loc[runs[BUNDLE].astype(bool), switch_key(n)].any()]
            if runs is not None
            else []
        )
        lines += [
            f"The bundle: {', '.join(bundle)}, switched off and on in each cell below, {runs['seed'].nunique()} seeds per cell;"
            " each verdict read off its interval, simultaneous 95 % across the explanations (Bonferroni): `supported` / `opposite`"
            " where it excludes zero on the predicted / the other side, `negligible` where it lies within the negligible band,"
            " `unclear` otherwise.",
            "",
        ]
        lines += [f"- {sentence(row)}" for row in explain.to_dict("records")]
        lines.append("")
        if explain_cells is not None and len(explain_cells):
            table = pd.DataFrame(
                {
                    "cell": explain_cells["cell"],
                    "top-1 without": explain_cells["top1_without"].round(3),
                    "with the bundle": explain_cells["top1_with"].round(3),
                    "bundle effect [95 %], points": [
                        render.effect_interval(*v) for v in zip(explain_cells["bundle_effect"], explain_cells["ci_low"], explain_cells["ci_high"])
                    ],
                }
            )
            lines += [render.markdown_table(table), ""]
        if sensitivity is not None and len(sensitivity):
            crop_plot(sensitivity, folder / "crop.png")
            overall = crop_sensitivity_summary(sensitivity).set_index("area")["changed"]
            shown = ", ".join(f"{100 * a:.0f} % kept: {100 * v:.0f} %" for a, v in overall.items() if round(10 * a) % 2 == 1)
            lines += [f"Crops and the clean model: share of validation images whose prediction changes ({shown}).", "", "![crops](crop.png)", ""]
        return lines

    def console(self, tables: Tables) -> str | None:
        explain = tables.get("explain")
        if explain is None:
            return None
        table = pd.DataFrame(
            {
                "explanation": explain["title"],
                "contrast, points [simultaneous 95 %]": [render.row_interval(r) for _, r in explain.iterrows()],
                "predicted": explain["expected"],
                "verdict": explain["verdict"],
            }
        )
        return render.markdown_table(table) + "\n(the contrasts and their sentences: report.md, 'Why it hurts')"


def crop_plot(sensitivity: pd.DataFrame, path: Path) -> None:
    """Share of validation images whose prediction a crop changes, by kept area: all classes
    and the three most sensitive."""
    plt = render.pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    overall = crop_sensitivity_summary(sensitivity)
    ax.plot(100 * overall["area"], 100 * overall["changed"], "o-", color="black", label="all classes")
    worst = sensitivity.groupby("class")["changed"].mean().nlargest(3).index
    for name in worst:
        mine = sensitivity[sensitivity["class"] == name]
        ax.plot(100 * mine["area"], 100 * mine["changed"], ".--", label=str(name))
    render.save(
        fig, ax, path, xlabel="kept area of the image (%)", ylabel="predictions changed (%)", title="Crops: how often the clean model changes its answer"
    )

"""The recipe and its confirmation: pure functions over tables, with planted effects."""

import math

import numpy as np
import pandas as pd
import pytest
import yaml

from tests.test_export import RECORDS
from tune_search.config import SearchConfig, load_config
from tune_search.export import CONFIRMED, SEARCHED, Recommendation, config_from_row, search_tables, with_recommendation
from tune_search.studies.confirm import (
    BEST,
    NONE,
    ORIGINAL,
    PLUS,
    RECIPE,
    arm_table,
    arms,
    comparisons,
    confirm_configs,
    pairwise,
    recipe_space,
)
from tune_search.studies.recipe import RecipeConfig, recipe_config
from tune_search.studies.recipe import decisions as decide

NAMES = ["hflip", "crop", "blur", "contrast", "rotate"]
BASE = {"lr": 2e-3, "freeze_depth": 3, "weight_decay": 0.0, "batch_size": 64, "label_smoothing": 0.0, "aug_rotate": True, "aug_rotate_strength": 0.9}


def effects(verdicts: dict[str, str], harmful_above: dict[str, float] | None = None) -> pd.DataFrame:
    signs = {"hurts": -0.03, "helps": 0.02, "harmless": 0.001, "unclear": -0.006}
    return pd.DataFrame(
        {
            "augmentation": list(verdicts),
            "verdict": list(verdicts.values()),
            "strength": 0.5,
            "effect": [signs[v] for v in verdicts.values()],
            "ci_low": [signs[v] - 0.005 for v in verdicts.values()],
            "ci_high": [signs[v] + 0.005 for v in verdicts.values()],
            "harmful_above_low": [(harmful_above or {}).get(n, math.nan) for n in verdicts],
        }
    )


def decisions(effects, focus=None, sweep=None, **settings):
    return decide(effects, focus, sweep, RecipeConfig(**settings))


def test_the_recipe_drops_what_hurts_keeps_what_helps_or_is_harmless_and_leaves_unclear_out():
    table = decisions(effects({"hflip": "helps", "crop": "hurts", "blur": "harmless", "contrast": "unclear", "rotate": "hurts"})).set_index("augmentation")
    assert table["decision"].to_dict() == {"hflip": "kept", "blur": "kept", "contrast": "left out", "crop": "dropped", "rotate": "dropped"}
    assert table.loc["hflip", "strength"] == 0.5 and math.isnan(table.loc["crop", "strength"])
    recipe = recipe_config(BASE, table.reset_index(), NAMES)
    assert recipe["aug_hflip"] and recipe["aug_blur"] and not recipe["aug_rotate"] and not recipe["aug_contrast"]
    assert (recipe["lr"], recipe["freeze_depth"]) == (2e-3, 3)  # the screen's settings, its augmentations replaced
    kept = decisions(effects({"contrast": "unclear"}), keep_unclear=True)
    assert kept["decision"].tolist() == ["kept"]
    assert decisions(effects({"blur": "harmless"}), keep_harmless=False)["decision"].tolist() == ["left out"]


def test_the_focused_screen_decides_what_the_screen_did_not_call_harmful_at_the_swept_strength():
    screened = effects({"hflip": "unclear", "crop": "hurts", "blur": "unclear", "contrast": "harmless"})
    focus = effects({"hflip": "helps", "blur": "hurts", "contrast": "unclear"}).assign(strength=0.5)
    sweep = pd.DataFrame({"augmentation": ["hflip"] * 3, "strength": [0.25, 0.5, 1.0], "chosen": [False, False, True]})
    table = decisions(screened, focus, sweep).set_index("augmentation")
    assert table["decision"].to_dict() == {"hflip": "kept", "blur": "dropped", "contrast": "left out", "crop": "dropped"}
    assert table["stage"].to_dict() == {"hflip": "focus", "blur": "focus", "contrast": "focus", "crop": "screen"}
    assert table.loc["hflip", "strength"] == 1.0 and table.loc["contrast", "verdict"] == "unclear"


def test_a_kept_augmentation_stays_below_where_dose_response_saw_harm_start():
    table = decisions(effects({"blur": "harmless"}, harmful_above={"blur": 0.3}))
    assert table["strength"].iloc[0] == pytest.approx(0.25)


def test_the_recommended_row_retrains_the_recipe_and_replaces_an_earlier_one(tmp_path):
    best = search_tables(RECORDS, max_epochs=3, top_k=3)["best_configs"]
    assert (best["source"] == SEARCHED).all() and (best["n_seeds"] == 1).all()
    recipe = recipe_config(BASE, decisions(effects({"hflip": "helps", "crop": "hurts"})), NAMES)
    once = with_recommendation(best, Recommendation(recipe, 0.81, 5, 3, "abc_00001"))
    twice = with_recommendation(once, Recommendation(recipe, 0.82, 5, 3, "abc_00002"))
    assert len(once) == len(best) + 1 and len(twice) == len(once) and (twice["source"] == CONFIRMED).sum() == 1
    assert twice.dtypes.to_dict() == best.dtypes.to_dict() and twice["top1"].iloc[-1] == 0.82
    assert (twice["trial_id"].iloc[-1], twice["n_seeds"].iloc[-1], twice["status"].iloc[-1]) == ("abc_00002", 5, "completed")
    assert with_recommendation(twice, None).equals(best)  # the search's rows are kept as they were
    again = config_from_row(twice.iloc[-1])
    assert again["aug_hflip"] and again["aug_hflip_strength"] == 0.5 and not again["aug_crop"] and again["lr"] == 2e-3
    text = recipe_space(SearchConfig(), again, len(twice) - 1)
    (tmp_path / "recipe.yaml").write_text(text)
    cfg = load_config(tmp_path / "recipe.yaml")  # a valid space file
    assert cfg.space.augmentations == ("hflip",) and cfg.space.lr == 2e-3 and cfg.space.freeze_depth == 3
    assert f"--row {len(twice) - 1}" in text and yaml.safe_load(text)["space"]["strength"] == [0.5, 0.5]
    # the commands name the files as the user types them from where they stand
    elsewhere = recipe_space(SearchConfig(), again, 3, "results/my run")
    assert "tune-search --space 'results/my run/recipe.yaml' --config-from 'results/my run/best_configs.parquet' --row 3" in elsewhere


ARM_EFFECT = {RECIPE: 0.0, NONE: -0.03, ORIGINAL: -0.05, BEST: 0.0}  # top-1 of each arm against the recipe
ON = {RECIPE: {"hflip": 0.5}, NONE: {}, ORIGINAL: {"hflip": 0.5, "crop": 0.5, "blur": 0.5}, BEST: {"hflip": 0.8, "contrast": 0.3}}


def simulate(arm_effect=ARM_EFFECT, seeds=3, sd=0.004, rng=None) -> pd.DataFrame:
    rng = rng or np.random.default_rng(0)
    configs = {a: {**BASE, **{f"aug_{n}": n in ON.get(a, {}) for n in NAMES}, **{f"aug_{n}_strength": s for n, s in ON.get(a, {}).items()}} for a in arm_effect}
    rows = []
    for config in confirm_configs(configs, list(range(seeds))):
        rows.append({**config, "top1": 0.8 + 0.02 * config["seed"] + arm_effect[config["label"]] + rng.normal(0, sd)})
    return pd.DataFrame(rows)


def judged(runs, negligible=0.01):
    pairs = pairwise(runs, negligible=negligible)
    summary = arm_table(runs, pairs, negligible)
    return pairs, summary, comparisons(pairs, summary).set_index("arm")


def test_the_confirmation_recovers_each_arm_with_covering_intervals():
    pairs, summary, table = judged(simulate())
    assert len(pairs) == 4 * 3  # every ordered pair
    recommended = summary.loc[summary["recommended"], "arm"].item()
    assert recommended in (RECIPE, BEST) and set(table.index) == set(ARM_EFFECT) - {recommended}
    for arm in table.index:
        truth = ARM_EFFECT[recommended] - ARM_EFFECT[arm]  # the recommended minus the arm
        assert table.loc[arm, "ci_low"] <= truth <= table.loc[arm, "ci_high"]
    assert table.loc[NONE, "verdict"] == "better" and table.loc[ORIGINAL, "verdict"] == "better"
    assert (table["n_seeds"] == 3).all() and (table["df"] == 12 - 4 - 2).all()
    # each verdict is read off its interval, simultaneous over the 6 pairs
    assert ((table["verdict"] == "better") == (table["ci_low"] > 0)).all()


def test_the_recommendation_is_the_best_measured_arm_or_the_simplest_tied_with_it():
    # the best config measured 3 points better than the recipe: it is recommended, with its margin
    _, summary, table = judged(simulate({**ARM_EFFECT, BEST: 0.03}))
    assert summary.loc[summary["recommended"], "arm"].item() == BEST and summary.loc[summary["best_measured"], "arm"].item() == BEST
    assert table.loc[RECIPE, "verdict"] == "better" and table.loc[RECIPE, "comparison"] == "the search's best config vs the recipe"
    # the recipe (one augmentation) and the best config (two) tied: the simpler is recommended
    runs = simulate({**ARM_EFFECT, BEST: 0.0}, sd=0.0005)
    _, summary, table = judged(runs)
    assert summary.loc[summary["recommended"], "arm"].item() == RECIPE
    # no augmentation tied with the best measured: the simplest of all wins
    _, summary, _ = judged(simulate({RECIPE: 0.0, NONE: 0.0, BEST: 0.0}, sd=0.002))
    assert summary.loc[summary["recommended"], "arm"].item() == NONE


def test_the_recommendation_is_never_an_arm_another_arm_measured_better():
    rng = np.random.default_rng(3)
    for _ in range(200):
        effect = dict(zip(ARM_EFFECT, rng.normal(0, 0.01, len(ARM_EFFECT))))
        pairs, summary, table = judged(simulate(effect, sd=0.005, rng=rng))
        chosen = summary.loc[summary["recommended"], "arm"].item()
        assert not (pairs[(pairs["a"] == chosen)]["verdict"] == "worse").any()
        best = summary["top1"].max()
        assert summary.loc[summary["recommended"], "top1"].item() >= best - 0.01


def test_when_no_arm_differs_false_verdicts_stay_at_or_under_5_percent():
    rng = np.random.default_rng(11)
    null = dict.fromkeys(ARM_EFFECT, 0.0)
    false = sum(bool(pairwise(simulate(null, sd=0.01, rng=rng), negligible=1e-6)["verdict"].isin(["better", "worse"]).any()) for _ in range(400))
    assert false / 400 <= 0.05 + 2 * math.sqrt(0.05 * 0.95 / 400)


def test_the_arms_add_each_augmentation_of_the_best_config_that_does_not_hurt_to_the_recipe():
    screened = effects({"hflip": "helps", "crop": "hurts", "contrast": "unclear", "blur": "unclear"})
    recipe = recipe_config(BASE, decisions(screened), NAMES)
    best = {
        **{k: v for k, v in BASE.items() if not k.startswith("aug_")},
        "aug_hflip": True,
        "aug_hflip_strength": 0.8,
        "aug_crop": True,
        "aug_crop_strength": 0.4,
        "aug_contrast": True,
        "aug_contrast_strength": 0.3,
    }
    made = arms(recipe, best, {"hflip": 0.5}, screened, NAMES)
    assert list(made) == [RECIPE, NONE, BEST, PLUS + "contrast"]  # the original set is the recipe here: one arm
    plus = made[PLUS + "contrast"]
    assert plus["aug_hflip"] and plus["aug_hflip_strength"] == 0.5 and plus["aug_contrast_strength"] == 0.3 and not plus["aug_crop"]


def test_the_original_set_is_the_all_aug_baseline_or_the_list_asked_for():
    from tune_search.constants import MOTIVATING
    from tune_search.studies.confirm import original_set

    screened = effects({"hflip": "helps", "crop": "hurts"})
    trials = search_tables(RECORDS, max_epochs=3, top_k=3)["trials"]
    # no baseline ran: those of the six the space searched, at the screen's strengths
    assert original_set(trials, screened, None) == {n: 0.5 for n in MOTIVATING if n in ("hflip", "crop")}
    trials.loc[0, "baseline"] = "all + aug"
    trials.loc[0, ["aug_hflip", "aug_hflip_strength", "aug_blur", "aug_blur_strength"]] = [True, 0.7, True, 0.3]
    ran = original_set(trials, screened, None)
    assert ran == strengths(trials.iloc[0]) and (ran["hflip"], ran["blur"]) == (0.7, 0.3)  # as the baseline ran them
    assert original_set(trials, screened, ("hflip", "blur")) == {"hflip": 0.5, "blur": 0.5}  # the screen's strengths; blur not screened: 0.5


def strengths(row) -> dict:
    from tune_search.trainable.augment import strengths_in

    return strengths_in(config_from_row(row))

import math

import numpy as np
import pandas as pd
import pytest

from tune_search.analysis import at_epoch, common_fidelity, estimate_effects, importance, search_effects
from tune_search.trainable.augment import NAMES

AUGS = ["hflip", "crop", "blur", "color"]
TRUE = {"hflip": -0.10, "crop": 0.05, "blur": 0.0}


def planted_table(n=120, seed=0, noise=0.01):
    """Trials with known effects: hflip hurts, crop helps, blur does nothing, and color helps
    at low strength but hurts above 0.3 (effect 0.06 - 0.2 s); lr has an optimum at 1e-3."""
    rng = np.random.default_rng(seed)
    t = pd.DataFrame({"lr": 10 ** rng.uniform(-4, -2, n), "freeze_depth": rng.integers(0, 10, n)})
    score = 0.8 - 0.05 * (np.log10(t["lr"]) + 3) ** 2 - 0.005 * t["freeze_depth"]
    for name in NAMES:
        on = rng.random(n) < 0.5 if name in AUGS else np.zeros(n, bool)
        strength = np.where(on, rng.uniform(0, 1, n), np.nan)
        t[f"aug_{name}"], t[f"aug_{name}_strength"] = on, strength
        if name == "color":
            score += np.where(on, 0.06 - 0.2 * np.nan_to_num(strength), 0)
        elif name in TRUE:
            score += TRUE[name] * on
    t["score"] = score + rng.normal(0, noise, n)
    return t


def test_planted_effects_are_recovered_with_covering_intervals():
    e = estimate_effects(planted_table(), AUGS, n_boot=300).set_index("augmentation")
    for name, true in TRUE.items():
        assert e.loc[name, "ci_low"] <= true <= e.loc[name, "ci_high"], (name, e.loc[name].to_dict())
        assert e.loc[name, "effect"] == pytest.approx(true, abs=0.01)
    assert e.loc["hflip", "verdict"] == "hurts" and e.loc["crop", "verdict"] == "helps"
    assert e.loc["blur", "verdict"] == "unclear"
    assert e.loc["hflip", "n_on"] + e.loc["hflip", "n_off"] == 120


def test_few_trials_fall_back_to_one_regression_per_augmentation():
    """The demo's case: too few trials for one joint fit; each augmentation gets its own on
    the controls, and the planted effects are still covered."""
    table = planted_table(n=24, seed=3, noise=0.005)
    e = estimate_effects(table, AUGS, n_boot=300).set_index("augmentation")
    assert e["method"].iloc[0].startswith("per-augmentation ridge regression on lr and freeze depth, bootstrap over 24 trials")
    for name, true in TRUE.items():
        assert e.loc[name, "ci_low"] <= true <= e.loc[name, "ci_high"], (name, e.loc[name].to_dict())
    assert e.loc["hflip", "verdict"] == "hurts"
    joint = estimate_effects(planted_table(), AUGS, n_boot=100)["method"].iloc[0]
    assert joint.startswith("joint ridge regression on lr and freeze depth")


def test_strength_where_an_augmentation_turns_harmful():
    e = estimate_effects(planted_table(), AUGS, n_boot=300).set_index("augmentation")
    assert e.loc["color", "slope"] == pytest.approx(-0.2, abs=0.02) and e.loc["color", "slope_ci_high"] < 0
    assert e.loc["color", "harmful_above"] == pytest.approx(0.3, abs=0.05)
    assert math.isnan(e.loc["hflip", "harmful_above"])  # harmful at every strength: no slope


def test_other_hyperparameters_do_not_leak_into_effects():
    """hflip is only ever switched on in trials with a bad lr: a raw on/off comparison blames
    hflip, the regression over all searched values does not."""
    t = planted_table(n=150, seed=1)
    bad_lr = np.log10(t["lr"]) < -3.5
    t["aug_hflip"] = bad_lr & (np.arange(len(t)) % 2 == 0)
    t["aug_hflip_strength"] = np.where(t["aug_hflip"], 0.5, np.nan)
    t["score"] = 0.8 - 0.3 * (np.log10(t["lr"]) + 3) ** 2 + np.random.default_rng(2).normal(0, 0.01, len(t))
    raw = t.loc[t["aug_hflip"], "score"].mean() - t.loc[~t["aug_hflip"], "score"].mean()
    e = estimate_effects(t, ["hflip"], n_boot=300).set_index("augmentation")
    assert raw < -0.03
    assert e.loc["hflip", "ci_low"] <= 0 <= e.loc["hflip", "ci_high"]


def test_importance_ranks_the_planted_switch_first():
    scores = importance(planted_table(), AUGS)
    assert max(scores, key=scores.get) in ("hflip", "color")
    assert scores["blur"] < scores["hflip"]


def test_searched_extras_compete_for_importance():
    """Weight decay searched and driving the score: the augmentations' share must shrink
    (an importance that dropped the extras would hand it all to the switches)."""
    t = planted_table(noise=0.001)
    rng = np.random.default_rng(5)
    t["weight_decay"] = 10 ** rng.uniform(-6, -2, len(t))
    t["batch_size"], t["label_smoothing"] = rng.choice([32, 64, 128], len(t)), 0.0
    t["score"] += 0.5 * (np.log10(t["weight_decay"]) + 4)
    assert sum(importance(planted_table(noise=0.001), AUGS).values()) > 0.5
    assert sum(importance(t, AUGS).values()) < 0.2


def test_effects_use_the_fidelity_every_trial_reached():
    t = planted_table(n=40)
    t["trial_id"] = [f"t{i}" for i in range(40)]
    t["status"] = ["completed" if i % 4 == 0 else "early_stopped" for i in range(40)]
    t["epochs"] = [4 if i % 4 == 0 else 1 for i in range(40)]
    t.loc[39, ["status", "epochs"]] = ["errored", 0]
    history = pd.concat([pd.DataFrame({"trial_id": r.trial_id, "epoch": range(1, r.epochs + 1), "top1": r.score}) for r in t.itertuples()])
    assert common_fidelity(t) == 1 and len(at_epoch(t, history, 1)) == 39
    effects = search_effects(t.drop(columns="score"), history, AUGS)
    assert list(effects["augmentation"]) == AUGS and "epoch 1" in effects["method"].iloc[0]

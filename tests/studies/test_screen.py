import math

import numpy as np
import pandas as pd
import pytest

from tune_search.constants import CLEAN
from tune_search.studies.screen import (
    additivity,
    diversity,
    fit,
    max_alias,
    per_class_effects,
    screen_configs,
    screen_effects,
    screening_design,
)

NAMES = ["hflip", "vflip", "crop", "blur", "sharpen", "contrast", "brightness", "color", "affine", "rotate", "grayscale", "erasing"]
BASE = {"lr": 1e-3, "freeze_depth": 4, "weight_decay": 0.0, "batch_size": 64, "label_smoothing": 0.0}


def simulate(effects: dict[str, float], *, seeds=(0,), sd=0.009, rng=None, interaction=0.0, names=NAMES) -> pd.DataFrame:
    """Screen runs where switching `name` on changes top-1 by effects[name], plus noise and
    an optional hflip x vflip interaction; seeds shift every run alike."""
    rng = rng or np.random.default_rng(0)
    rows = []
    for config in screen_configs(BASE, dict.fromkeys(names, 0.5), seeds):
        on = {n for n in names if config[f"aug_{n}"]}
        top1 = 0.85 + 0.01 * config["seed"] + sum(effects.get(n, 0.0) for n in on) + rng.normal(0, sd)
        if {"hflip", "vflip"} <= on:
            top1 += interaction
        per_class = [top1 + (2 * effects.get("hflip", 0) if "hflip" in on else 0), top1, top1 - 0.05]
        rows.append(
            {**config, "top1": top1, "top5": min(1.0, top1 + 0.1), "train_loss": 0.3 + 0.2 * ("crop" in on) + rng.normal(0, 0.01), "per_class_top1": per_class}
        )
    return pd.DataFrame(rows)


def test_planted_effects_are_recovered_with_intervals_that_cover_them():
    planted = {"hflip": -0.05, "blur": -0.02, "contrast": 0.025}
    table = screen_effects(simulate(planted, seeds=(0, 1)), NAMES).set_index("augmentation")
    assert table["n_runs"].iloc[0] == 64 and table["df"].iloc[0] == 64 - 14
    for name in NAMES:
        truth = planted.get(name, 0.0)
        row = table.loc[name]
        assert row["ci_low"] <= truth <= row["ci_high"], (name, row.to_dict())
        assert row["effect"] == pytest.approx(truth, abs=0.01)
    assert table.loc["hflip", "verdict"] == "hurts" and table.loc["blur", "verdict"] == "hurts"
    assert table.loc["contrast", "verdict"] == "helps"
    rest = table.drop(index=["hflip", "blur", "contrast"])["verdict"]
    assert set(rest) <= {"harmless", "unclear"} and (rest == "harmless").any()  # SD 0.9 points, two replicates
    assert (table["negligible"] == 0.01).all() and table.loc[rest.index[rest == "harmless"], "p_equivalence_adjusted"].lt(0.05).all()
    assert table.loc[rest.index[rest == "unclear"], "settle_replicates"].ge(2).all()
    assert (table["strength"] == 0.5).all()
    # the smallest detectable harm: 80 % power at the Bonferroni level, about 4 standard errors
    assert 0.008 < table["detectable"].iloc[0] < 0.016


def test_exact_effects_without_noise():
    planted = {"crop": -0.03, "erasing": 0.01}
    effects = fit(simulate(planted, sd=1e-9), NAMES)
    assert dict(zip(effects.names, effects.effect.round(6))) == {n: planted.get(n, 0.0) for n in NAMES}


def test_seeds_are_blocks_and_replicates_narrow_the_intervals():
    one = fit(simulate({}, seeds=(0,), rng=np.random.default_rng(1)), NAMES)
    three = fit(simulate({}, seeds=(0, 1, 2), rng=np.random.default_rng(1)), NAMES)
    assert three.df == 3 * 32 - 13 - 2
    assert three.se.mean() < 0.75 * one.se.mean()


def test_per_class_harm_lands_in_the_planted_class():
    table = per_class_effects(simulate({"hflip": -0.04}), NAMES, ["a", "b", "c"])
    hflip = table[table["augmentation"] == "hflip"].set_index("class")
    assert hflip.loc["a", "change"] == pytest.approx(-0.12, abs=0.01)
    assert hflip.loc["b", "change"] == pytest.approx(-0.04, abs=0.01)
    assert hflip.loc["a", "ci_high"] < 0


def test_diversity_is_the_effect_on_final_train_loss():
    table = diversity(simulate({}), NAMES).set_index("augmentation")
    assert table.loc["crop", "diversity"] == pytest.approx(0.2, abs=0.02)
    assert abs(table.loc["blur", "diversity"]) < 0.02
    assert not math.isnan(table.loc["crop", "clean_train_loss"])


def test_additivity_predicts_the_bundle_and_flags_an_interaction():
    six = ["hflip", "crop", "blur", "sharpen", "contrast", "affine"]
    planted = {"hflip": -0.02, "crop": -0.01}
    runs = simulate(planted, seeds=(0, 1))
    truth = 0.85 + 0.005 + sum(planted.values())  # the seeds' mean shift included
    result = additivity(runs, NAMES, six, measured=truth)
    assert result["prediction_low"] <= truth <= result["prediction_high"] and result["adds_up"]
    assert result["predicted"] - result["predicted_none"] == pytest.approx(sum(planted.values()), abs=0.008)
    assert not additivity(runs, NAMES, six, measured=truth - 0.08)["adds_up"]


@pytest.mark.parametrize("factors, runs", [(1, 8), (5, 16), (6, 16), (8, 24), (11, 24), (12, 32)])
def test_screening_design_is_balanced_orthogonal_and_resolution_iv(factors, runs):
    design = screening_design(factors)
    assert design.shape == (runs, factors)
    assert set(np.unique(design)) == {-1, 1}
    assert (design.sum(axis=0) == 0).all()  # balanced: each switch on in half the runs
    assert (design.T @ design == runs * np.eye(factors)).all()  # orthogonal main effects
    assert max_alias(design) == 0  # no main effect aliased with a two-factor interaction
    if 2**factors >= runs:
        assert len({tuple(r) for r in design}) == runs  # no run repeated


def test_a_resolution_iii_design_is_caught():
    # a 2^(3-1) half fraction with C = AB: every main effect is aliased with an interaction
    a, b = np.array([-1, 1, -1, 1]), np.array([-1, -1, 1, 1])
    assert max_alias(np.column_stack([a, b, a * b])) == 1


def test_screen_configs_follow_the_design_at_fixed_other_settings():
    strengths = {"hflip": 0.5, "crop": 0.3, "blur": 0.7}
    best = {**BASE, "aug_blur": True, "aug_blur_strength": 0.9, "baseline": "", "seed": 7}
    configs = screen_configs(best, strengths, seeds=[0, 1])
    design = screening_design(3)
    assert len(configs) == 2 * len(design) + 1
    for config in configs:
        assert config["lr"] == 1e-3 and config["freeze_depth"] == 4 and config["study"] == "screen"
        assert "baseline" not in config
    for config in configs[:-1]:
        levels = design[config["design_row"]]
        for name, level in zip(strengths, levels):
            assert config[f"aug_{name}"] == (level > 0)
            assert config.get(f"aug_{name}_strength") == (strengths[name] if level > 0 else None)
    clean = configs[-1]
    assert clean["label"] == CLEAN and clean["design_row"] == -1 and not any(clean[f"aug_{n}"] for n in strengths)

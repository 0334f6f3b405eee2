import numpy as np
import pandas as pd
import pytest

from tune_search.studies.ablation import ablation_configs, paired_effects

AUGS = ["hflip", "blur", "contrast"]
DESIGN_BASE = {"lr": 1e-3, "freeze_depth": 4, "aug_blur": True, "aug_blur_strength": 0.9, "baseline": "", "seed": 7}
BEST = {"lr": 1e-3, "freeze_depth": 0, "aug_hflip": False, "aug_blur": True, "aug_blur_strength": 0.3, "aug_contrast": False, "baseline": "all layers"}


def runs_with(effects: dict[str, float], seeds=3, noise=0.005, seed=0) -> pd.DataFrame:
    """Ablation runs where switching `name` on changes top-1 by effects[name]."""
    rng = np.random.default_rng(seed)
    rows = []
    for config in ablation_configs(BEST, AUGS, strength=0.7, seeds=seeds):
        top1 = 0.8 + rng.normal(0, noise) + 0.02 * config["seed"]  # seeds differ: pairing removes it
        top1 += sum(effect for name, effect in effects.items() if config.get(f"aug_{name}"))
        rows.append({**config, "top1": top1})
    return pd.DataFrame(rows)


def test_paired_effects_recover_planted_effects_and_compare_with_the_screen():
    runs = runs_with({"hflip": -0.10, "blur": -0.05, "contrast": 0.0}, seeds=5, noise=0.003, seed=1)
    screen = pd.DataFrame({"augmentation": AUGS, "verdict": ["hurts", "unclear", "unclear"]})
    e = paired_effects(runs, AUGS, screen).set_index("augmentation")
    assert e.loc["hflip", "effect"] == pytest.approx(-0.10, abs=0.01) and e.loc["hflip", "verdict"] == "hurts"
    assert e.loc["hflip", "switched"] == "on" and e.loc["blur", "switched"] == "off"
    assert e.loc["blur", "effect"] == pytest.approx(-0.05, abs=0.01) and e.loc["blur", "verdict"] == "hurts"
    # no effect, noise of 0.3 points, 5 seeds: the pooled fit's simultaneous interval lies within ±1 point
    assert e.loc["contrast", "ci_low"] < 0 < e.loc["contrast", "ci_high"] and e.loc["contrast", "verdict"] == "harmless"
    assert (e["df"] == 5 * 4 - 4 - 4).all() and (e["p_adjusted"] >= e["p_value"]).all()
    assert e.loc["hflip", "agrees"] and not e.loc["blur", "agrees"]
    assert (e["n_seeds"] == 5).all()


def test_without_a_screen_nothing_is_compared():
    screen = pd.DataFrame({"augmentation": AUGS, "verdict": ["not screened"] * 3})
    e = paired_effects(runs_with({"hflip": -0.1}), AUGS, screen)
    assert (e["screen_verdict"] == "").all() and e["agrees"].isna().all()


def test_ablation_switches_each_augmentation_the_other_way_for_every_seed():
    configs = ablation_configs(DESIGN_BASE, ["hflip", "blur"], strength=0.7, seeds=3)
    assert len(configs) == 3 * 3
    by = {(c["label"], c["seed"]): c for c in configs}
    assert by[("hflip", 2)]["aug_hflip"] and by[("hflip", 2)]["aug_hflip_strength"] == 0.7
    assert not by[("blur", 0)]["aug_blur"] and "aug_blur_strength" not in by[("blur", 0)]
    assert by[("", 1)]["aug_blur_strength"] == 0.9


@pytest.mark.slow
def test_when_nothing_matters_the_pooled_ablation_keeps_false_verdicts_at_or_under_5_percent():
    import gc
    import math

    gc.freeze()  # statsmodels' Holm runs gc.collect() per call
    false = sum(paired_effects(runs_with({}, noise=0.01, seed=s), AUGS)["verdict"].isin(["hurts", "helps"]).any() for s in range(400))
    gc.unfreeze()
    assert false / 400 <= 0.05 + 2 * math.sqrt(0.05 * 0.95 / 400)

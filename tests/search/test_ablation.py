import math

import numpy as np
import pandas as pd
import pytest

from search.ablation import affinity_diversity, paired_effects, per_class, variants

AUGS = ["hflip", "blur", "contrast"]
BEST = {"lr": 1e-3, "freeze_depth": 0, "aug_hflip": False, "aug_blur": True, "aug_blur_strength": 0.3, "aug_contrast": False, "baseline": "all layers"}


def test_variants_switch_each_augmentation_the_other_way_for_every_seed():
    configs = variants(BEST, AUGS, strength=0.7, seeds=3)
    assert len(configs) == 3 * 4 + 1  # base + 3 flips per seed, + one clean run for affinity
    by = {(c["ablate"], c["seed"]): c for c in configs}
    assert by[("hflip", 2)]["aug_hflip"] and by[("hflip", 2)]["aug_hflip_strength"] == 0.7
    assert not by[("blur", 0)]["aug_blur"] and "aug_blur_strength" not in by[("blur", 0)]
    assert by[("", 1)]["aug_blur_strength"] == 0.3 and by[("", 1)]["baseline"] == ""
    clean = by[("(no augmentation)", 0)]
    assert not any(clean[f"aug_{n}"] for n in AUGS)
    assert clean["affinity"] == {"hflip": 0.7, "blur": 0.3, "contrast": 0.7}


def test_without_augmentation_the_base_run_measures_affinity():
    clean_best = {**BEST, "aug_blur": False}
    configs = variants(clean_best, AUGS, strength=0.5, seeds=2)
    assert len(configs) == 2 * 4 and "affinity" in configs[0] and configs[0]["ablate"] == ""


def runs_with(effects: dict[str, float], seeds=3, noise=0.005, seed=0) -> pd.DataFrame:
    """Ablation runs where switching `name` on changes top-1 by effects[name]."""
    rng = np.random.default_rng(seed)
    rows = []
    for config in variants(BEST, AUGS, strength=0.7, seeds=seeds):
        top1 = 0.8 + rng.normal(0, noise) + 0.02 * config["seed"]  # seeds differ: pairing removes it
        for name, effect in effects.items():
            if config.get(f"aug_{name}"):
                top1 += effect
        per_class_top1 = [top1 + (effects["hflip"] if config.get("aug_hflip") else 0), top1, top1]
        rows.append({**{k: v for k, v in config.items() if k != "affinity"}, "top1": top1, "train_loss": 0.3 + (0.2 if config.get("aug_hflip") else 0), "per_class_top1": per_class_top1, **({"affinity_hflip": -0.4, "affinity_blur": -0.1, "affinity_contrast": 0.0} if "affinity" in config else {})})
    return pd.DataFrame(rows)


def test_paired_effects_recover_planted_effects():
    runs = runs_with({"hflip": -0.10, "blur": -0.05, "contrast": 0.0})
    search = pd.DataFrame({"augmentation": AUGS, "verdict": ["hurts", "unclear", "unclear"]})
    e = paired_effects(runs, AUGS, search).set_index("augmentation")
    assert e.loc["hflip", "effect"] == pytest.approx(-0.10, abs=0.01) and e.loc["hflip", "verdict"] == "hurts"
    assert e.loc["hflip", "switched"] == "on" and e.loc["blur", "switched"] == "off"
    assert e.loc["blur", "effect"] == pytest.approx(-0.05, abs=0.01) and e.loc["blur", "verdict"] == "hurts"
    assert e.loc["contrast", "ci_low"] < 0 < e.loc["contrast", "ci_high"] and e.loc["contrast", "verdict"] == "unclear"
    assert e.loc["hflip", "agrees"] and not e.loc["blur", "agrees"]
    assert (e["n_seeds"] == 3).all()


def test_per_class_and_affinity_tables():
    runs = runs_with({"hflip": -0.10, "blur": 0.0, "contrast": 0.0})
    pc = per_class(runs, AUGS, ["a", "b", "c"])
    hflip = pc[pc["augmentation"] == "hflip"].set_index("class")
    assert hflip.loc["a", "change"] == pytest.approx(-0.2, abs=0.02) and hflip.loc["b", "change"] == pytest.approx(-0.1, abs=0.02)
    ad = affinity_diversity(runs, AUGS).set_index("augmentation")
    assert ad.loc["hflip", "affinity"] == -0.4 and ad.loc["hflip", "diversity"] == pytest.approx(0.5)
    assert ad.loc["blur", "strength"] == 0.3 and ad.loc["contrast", "diversity"] == pytest.approx(0.3)
    assert not math.isnan(ad.loc["blur", "clean_train_loss"])

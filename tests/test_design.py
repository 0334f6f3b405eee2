import numpy as np
import pytest

from tune_search.design import CLEAN, ablation_configs, dose_configs, max_alias, screen_configs, screening_design

BASE = {"lr": 1e-3, "freeze_depth": 4, "weight_decay": 0.0, "batch_size": 64, "label_smoothing": 0.0,
        "aug_blur": True, "aug_blur_strength": 0.9, "baseline": "", "seed": 7}  # fmt: skip


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
    configs = screen_configs(BASE, strengths, seeds=[0, 1])
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


def test_dose_configs_put_one_augmentation_on_at_each_level_beside_a_clean_run():
    configs = dose_configs(BASE, ["blur"], [0.25, 0.5, 1.0], seeds=[0, 1], searched=["blur", "hflip"])
    assert len(configs) == 2 * 4
    blur = [c for c in configs if c["label"] == "blur"]
    assert sorted({c["aug_blur_strength"] for c in blur}) == [0.25, 0.5, 1.0]
    assert all(not c["aug_hflip"] for c in configs)
    assert sum(c["label"] == CLEAN for c in configs) == 2


def test_ablation_switches_each_augmentation_the_other_way_for_every_seed():
    configs = ablation_configs(BASE, ["hflip", "blur"], strength=0.7, seeds=3)
    assert len(configs) == 3 * 3
    by = {(c["label"], c["seed"]): c for c in configs}
    assert by[("hflip", 2)]["aug_hflip"] and by[("hflip", 2)]["aug_hflip_strength"] == 0.7
    assert not by[("blur", 0)]["aug_blur"] and "aug_blur_strength" not in by[("blur", 0)]
    assert by[("", 1)]["aug_blur_strength"] == 0.9

import math

import numpy as np
import pandas as pd

from tune_search.constants import CLEAN
from tune_search.studies.dose import dose_configs, dose_curve, dose_table, harmful_above

BASE = {"lr": 1e-3, "freeze_depth": 4, "weight_decay": 0.0, "batch_size": 64, "label_smoothing": 0.0}


def dose_runs(curve, levels=(0.25, 0.5, 0.75, 1.0), seeds=(0, 1, 2), sd=0.003, rng=None) -> pd.DataFrame:
    rng = rng or np.random.default_rng(0)
    rows = []
    for config in dose_configs(BASE, ["blur"], levels, seeds, searched=["blur", "hflip"]):
        s = config.get("aug_blur_strength", 0.0) if config["aug_blur"] else 0.0
        rows.append({**config, "top1": 0.85 + 0.02 * config["seed"] + curve(s) + rng.normal(0, sd)})
    return pd.DataFrame(rows)


def test_dose_response_finds_where_harm_starts():
    # no harm up to 0.5, then 8 points per unit strength: more than 1 point above 0.625
    curve = lambda s: -0.08 * max(0.0, s - 0.5) * 2 * s  # noqa: E731
    runs = dose_runs(curve)
    table = dose_table(runs, ["blur"], 0.01)
    assert list(table["strength"]) == [0.25, 0.5, 0.75, 1.0] and (table["n_seeds"] == 3).all()
    at_one = table.set_index("strength").loc[1.0]
    assert at_one["ci_low"] <= curve(1.0) <= at_one["ci_high"]
    point, low, high = harmful_above(dose_curve(runs, "blur"), threshold=0.01)
    truth = 0.5 + (0.25 + math.sqrt(0.0625 + 0.0625)) / 2 - 0.25  # solves 0.16 s (s - 0.5) = 0.01
    assert low <= point <= high and abs(point - truth) < 0.15 and low < truth < high


def test_a_harmless_dose_never_turns_harmful():
    runs = dose_runs(lambda s: 0.0)
    assert all(math.isnan(v) for v in harmful_above(dose_curve(runs, "blur"), threshold=0.01)[:2])


def test_dose_configs_put_one_augmentation_on_at_each_level_beside_a_clean_run():
    configs = dose_configs(BASE, ["blur"], [0.25, 0.5, 1.0], seeds=[0, 1], searched=["blur", "hflip"])
    assert len(configs) == 2 * 4
    blur = [c for c in configs if c["label"] == "blur"]
    assert sorted({c["aug_blur_strength"] for c in blur}) == [0.25, 0.5, 1.0]
    assert all(not c["aug_hflip"] for c in configs)
    assert sum(c["label"] == CLEAN for c in configs) == 2


def test_a_harmless_augmentation_rarely_gets_a_start_strength():
    """No harm at any strength, two seeds, 1-point noise: a start strength is named only
    where the whole band passes the threshold, so rarely (it was about half the time)."""
    rng = np.random.default_rng(3)
    named = sum(
        not math.isnan(harmful_above(dose_curve(dose_runs(lambda s: 0.0, levels=(0.1, 0.25, 0.5, 1.0), seeds=(0, 1), sd=0.01, rng=rng), "blur"), 0.005)[0])
        for _ in range(200)
    )
    assert named / 200 <= 0.05


def test_each_strengths_interval_pools_every_run_and_never_has_zero_width():
    # two seeds whose differences at 0.5 are equal: a per-strength paired interval would be [d, d]
    runs = dose_runs(lambda s: 0.0, levels=(0.1, 0.25, 0.5, 1.0), seeds=(0, 1), sd=0.0)
    runs.loc[(runs["label"] == "blur") & (runs["aug_blur_strength"] == 0.5), "top1"] -= 0.015
    runs["top1"] += np.random.default_rng(0).normal(0, 0.005, len(runs)) * (runs["label"] != "blur")
    table = dose_table(runs, ["blur"], 0.005)
    assert ((table["ci_high"] - table["ci_low"]) > 0.001).all()


def test_at_the_demos_noise_each_strengths_interval_is_within_three_points():
    """Seed noise of 1 point per run, the default 3 seeds: the pooled fit's 95 % intervals are
    about +-1.9 points; nearly always within +-3."""
    rng = np.random.default_rng(4)
    widths = [dose_table(dose_runs(lambda s: -0.02 * s, levels=(0.1, 0.25, 0.5, 1.0), seeds=(0, 1, 2), sd=0.01, rng=rng), ["blur"], 0.005) for _ in range(100)]
    half = np.concatenate([(t["ci_high"] - t["ci_low"]).to_numpy() / 2 for t in widths])
    assert np.median(half) < 0.022 and np.mean(half <= 0.03) >= 0.95


def test_no_start_of_harm_below_the_lowest_strength_measured():
    # harm from the very first bit of strength: the start reads as the lowest strength run (0.1)
    runs = dose_runs(lambda s: -0.1 * s - 0.03 * (s > 0), levels=(0.1, 0.25, 0.5, 1.0), seeds=(0, 1, 2), sd=0.002)
    point, low, high = harmful_above(dose_curve(runs, "blur"), threshold=0.005, bottom=0.1)
    assert point >= 0.1 and low >= 0.1 and high >= 0.1

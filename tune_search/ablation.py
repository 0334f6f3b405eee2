"""The confirmation study: the best config re-trained with each augmentation switched the
other way (`tune_search.design.ablation_configs`), over several seeds, compared paired by seed.
A pure function over the study's runs table."""

from __future__ import annotations

import pandas as pd

from tune_search.analysis import verdict
from tune_search.screen import paired_interval
from tune_search.trainable.augment import strength_key, switch_key

ABLATION_COLUMNS = (
    "augmentation", "switched", "strength", "effect", "ci_low", "ci_high", "verdict", "n_seeds",
    "top1_with", "top1_without", "screen_verdict", "agrees",
)  # fmt: skip


def paired_effects(runs: pd.DataFrame, augmentations: list[str], screen: pd.DataFrame | None = None) -> pd.DataFrame:
    """ablation.parquet: per augmentation, top-1 with it minus top-1 without it, paired by
    seed, with a 95 % t-interval over seeds. `runs` has columns label (the switched
    augmentation; empty for the best config), seed, top1 and aug_<name> for every
    augmentation; `screen` is effects.parquet, to compare with the screen's verdicts."""
    base = runs[runs["label"] == ""].set_index("seed")
    screened = screen[screen["verdict"] != "not screened"] if screen is not None else None
    screen_verdicts = dict(zip(screened["augmentation"], screened["verdict"])) if screened is not None else {}
    rows = []
    for name in augmentations:
        flipped = runs[runs["label"] == name].set_index("seed")
        seeds = base.index.intersection(flipped.index)
        if not len(seeds):
            continue
        was_on = bool(base[switch_key(name)].iloc[0])
        with_aug, without = (base, flipped) if was_on else (flipped, base)
        diffs = (with_aug.loc[seeds, "top1"] - without.loc[seeds, "top1"]).to_numpy(float)
        low, high = paired_interval(diffs)
        ours = verdict(low, high)
        theirs = screen_verdicts.get(name, "")
        rows.append(
            {
                "augmentation": name,
                "switched": "off" if was_on else "on",
                "strength": float(with_aug[strength_key(name)].iloc[0]),
                "effect": float(diffs.mean()),
                "ci_low": low,
                "ci_high": high,
                "verdict": ours,
                "n_seeds": len(seeds),
                "top1_with": float(with_aug.loc[seeds, "top1"].mean()),
                "top1_without": float(without.loc[seeds, "top1"].mean()),
                "screen_verdict": theirs,
                "agrees": (theirs == ours) if theirs else None,
            }
        )
    return pd.DataFrame(rows, columns=list(ABLATION_COLUMNS))

"""The confirmation study: re-train the best config with each augmentation switched the
other way, over several seeds, and compare paired by seed.

Pure functions: they build the variants and summarise the runs (`search.tuner.run_ablation`
trains them).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from search.analysis import verdict

ABLATION_COLUMNS = (
    "augmentation", "switched", "strength", "effect", "ci_low", "ci_high", "verdict", "n_seeds",
    "top1_with", "top1_without", "search_verdict", "agrees",
)  # fmt: skip


def variants(best: Mapping[str, Any], augmentations: list[str], *, strength: float, seeds: int) -> list[dict[str, Any]]:
    """Flat trial configs: the best config, and each augmentation switched the other way
    (off if it was on; on at `strength` if it was off), each over `seeds` seeds. The base
    runs of seed 0 also measure affinity when the best config has no augmentation on;
    otherwise one extra run without any augmentation does."""
    on_side = {n: (float(best[f"aug_{n}_strength"]) if best.get(f"aug_{n}") else strength) for n in augmentations}
    base = {k: v for k, v in best.items() if k not in ("baseline", "seed", "ablate", "affinity")}
    out = []
    for seed in range(seeds):
        out.append({**base, "seed": seed, "ablate": "", "baseline": ""})
        for name in augmentations:
            flipped = dict(base)
            if best.get(f"aug_{name}"):
                flipped[f"aug_{name}"] = False
                flipped.pop(f"aug_{name}_strength", None)
            else:
                flipped[f"aug_{name}"], flipped[f"aug_{name}_strength"] = True, strength
            out.append({**flipped, "seed": seed, "ablate": name, "baseline": ""})
    clean = not any(best.get(f"aug_{n}") for n in augmentations)
    if clean:
        out[0]["affinity"] = on_side
    else:
        plain = {k: v for k, v in base.items() if not k.endswith("_strength")}
        plain |= {k: False for k in plain if k.startswith("aug_")}
        out.append({**plain, "seed": 0, "ablate": "(no augmentation)", "baseline": "", "affinity": on_side})
    return out


def _interval(diffs: np.ndarray) -> tuple[float, float]:
    if len(diffs) < 2:
        return math.nan, math.nan
    half = stats.t.ppf(0.975, len(diffs) - 1) * diffs.std(ddof=1) / math.sqrt(len(diffs))
    return float(diffs.mean() - half), float(diffs.mean() + half)


def paired_effects(runs: pd.DataFrame, augmentations: list[str], search: pd.DataFrame | None = None) -> pd.DataFrame:
    """ablation.parquet: per augmentation, top-1 with it minus top-1 without it, paired by
    seed, with a 95 % t-interval over seeds. `runs` has columns ablate, seed, top1 and
    aug_<name> for every augmentation; `search` is effects.parquet, to compare verdicts."""
    base = runs[runs["ablate"] == ""].set_index("seed")
    search_verdicts = dict(zip(search["augmentation"], search["verdict"])) if search is not None else {}
    rows = []
    for name in augmentations:
        flipped = runs[runs["ablate"] == name].set_index("seed")
        seeds = base.index.intersection(flipped.index)
        if not len(seeds):
            continue
        was_on = bool(base[f"aug_{name}"].iloc[0])
        with_aug, without = (base, flipped) if was_on else (flipped, base)
        diffs = (with_aug.loc[seeds, "top1"] - without.loc[seeds, "top1"]).to_numpy(float)
        low, high = _interval(diffs)
        ours = verdict(low, high)
        theirs = search_verdicts.get(name, "")
        rows.append(
            {
                "augmentation": name,
                "switched": "off" if was_on else "on",
                "strength": float(with_aug[f"aug_{name}_strength"].iloc[0]),
                "effect": float(diffs.mean()),
                "ci_low": low,
                "ci_high": high,
                "verdict": ours,
                "n_seeds": len(seeds),
                "top1_with": float(with_aug.loc[seeds, "top1"].mean()),
                "top1_without": float(without.loc[seeds, "top1"].mean()),
                "search_verdict": theirs,
                "agrees": (theirs == ours) if theirs else None,
            }
        )
    return pd.DataFrame(rows, columns=list(ABLATION_COLUMNS))


def per_class(runs: pd.DataFrame, augmentations: list[str], classes: list[str]) -> pd.DataFrame:
    """per_class.parquet: per augmentation and class, mean top-1 with and without it."""
    base = runs[runs["ablate"] == ""]
    rows = []
    for name in augmentations:
        flipped = runs[runs["ablate"] == name]
        if base.empty or flipped.empty:
            continue
        was_on = bool(base[f"aug_{name}"].iloc[0])
        with_aug, without = (base, flipped) if was_on else (flipped, base)
        acc_with = np.mean(np.stack(with_aug["per_class_top1"].to_list()), axis=0)
        acc_without = np.mean(np.stack(without["per_class_top1"].to_list()), axis=0)
        for i, cls in enumerate(classes):
            rows.append(
                {
                    "augmentation": name,
                    "class": cls,
                    "top1_with": float(acc_with[i]),
                    "top1_without": float(acc_without[i]),
                    "change": float(acc_with[i] - acc_without[i]),
                }
            )
    return pd.DataFrame(rows, columns=["augmentation", "class", "top1_with", "top1_without", "change"])


def affinity_diversity(runs: pd.DataFrame, augmentations: list[str]) -> pd.DataFrame:
    """affinity.parquet: affinity from the run trained without augmentation; diversity, the
    final training loss of the runs trained with the augmentation on (mean over seeds)."""
    measured = runs[runs.columns[runs.columns.str.startswith("affinity_")]].dropna(how="all")
    base = runs[runs["ablate"] == ""]
    rows = []
    for name in augmentations:
        flipped = runs[runs["ablate"] == name]
        with_aug = base if (len(base) and bool(base[f"aug_{name}"].iloc[0])) else flipped
        column = f"affinity_{name}"
        rows.append(
            {
                "augmentation": name,
                "strength": float(with_aug[f"aug_{name}_strength"].iloc[0]) if len(with_aug) else math.nan,
                "affinity": float(measured[column].iloc[0]) if column in measured and len(measured) else math.nan,
                "diversity": float(with_aug["train_loss"].mean()) if len(with_aug) else math.nan,
                "clean_train_loss": float(runs.loc[runs["ablate"] == "(no augmentation)", "train_loss"].mean())
                if (runs["ablate"] == "(no augmentation)").any()
                else float(base["train_loss"].mean()),
            }
        )
    return pd.DataFrame(rows, columns=["augmentation", "strength", "affinity", "diversity", "clean_train_loss"])


def runs_table(results) -> pd.DataFrame:
    """One row per finished ablation run from a Ray ResultGrid: its variant and final metrics."""
    rows = []
    for result in results:
        if result.error is not None or not result.metrics:
            continue
        config = result.config["variant"]
        row = {k: v for k, v in config.items() if k != "affinity"}
        row |= {k: v for k, v in result.metrics.items() if k in ("top1", "top5", "train_loss", "per_class_top1") or k.startswith("affinity_")}
        rows.append(row)
    return pd.DataFrame(rows)


"""Designed studies as lists of fixed trial configs: the screen, dose-response, ablation and
explain.

Pure functions: they build the configs (`tune_search.tuner.run_study` trains them) and never read
results. Every config carries `study`, `design_row` (-1 for runs outside a design) and `seed`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import combinations
from typing import Any

import numpy as np
from pyDOE3 import fold, pbdesign

from tune_search.trainable.augment import strength_key, switch_key
from tune_search.trainable.trial import SPEC_KEYS

CLEAN = "(no augmentation)"  # the label of a run with every augmentation off
BUNDLE = "bundle"  # explain: whether the run has the augmentation bundle on
RUN_KEYS = ("baseline", "seed", "study", "design_row", "label", BUNDLE)  # what a run is, not how it trains


def screening_design(factors: int) -> np.ndarray:
    """A two-level design in -1/+1 with one column per factor, at resolution IV: a
    Plackett-Burman design folded over, so that no main effect is aliased with any
    two-factor interaction (12 factors: 32 runs; 6: 16; 5: 16)."""
    if factors < 1:
        raise ValueError("a screen needs at least one augmentation")
    return fold(pbdesign(factors)).astype(int)


def max_alias(design: np.ndarray) -> float:
    """The largest |correlation| between a main-effect column and any two-factor
    interaction column: 0 for a design of resolution IV or better."""
    worst = 0.0
    columns = design.astype(float)
    for i in range(columns.shape[1]):
        for j, k in combinations(range(columns.shape[1]), 2):
            if i in (j, k):
                continue
            worst = max(worst, abs(float(np.mean(columns[:, i] * columns[:, j] * columns[:, k]))))
    return worst


def base_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """A flat trial config's non-augmentation settings, every augmentation off."""
    return {k: v for k, v in config.items() if not k.startswith("aug_") and k not in RUN_KEYS and k not in SPEC_KEYS}


def with_augmentations(base: Mapping[str, Any], on: Mapping[str, float], names: Sequence[str]) -> dict[str, Any]:
    config = dict(base)
    for name in names:
        config[switch_key(name)] = name in on
        if name in on:
            config[strength_key(name)] = float(on[name])
    return config


def screen_configs(
    base: Mapping[str, Any], strengths: Mapping[str, float], seeds: Sequence[int], *, clean_seed: int | None = 0
) -> list[dict[str, Any]]:
    """Every row of the screening design over `strengths`' augmentations (on at that
    strength, or off), at `base`'s other settings, once per seed; plus one run with every
    augmentation off at `clean_seed` (its model is what affinity is measured on)."""
    names = list(strengths)
    design = screening_design(len(names))
    settings = base_settings(base)
    out = []
    for seed in seeds:
        for row, levels in enumerate(design):
            on = {n: strengths[n] for n, level in zip(names, levels) if level > 0}
            out.append({**with_augmentations(settings, on, names), "study": "screen", "design_row": row, "seed": seed, "label": ""})
    if clean_seed is not None:
        out.append({**with_augmentations(settings, {}, names), "study": "screen", "design_row": -1, "seed": clean_seed, "label": CLEAN})
    return out


def dose_configs(base: Mapping[str, Any], names: Sequence[str], levels: Sequence[float], seeds: Sequence[int], searched: Sequence[str]) -> list[dict[str, Any]]:
    """Each augmentation in `names` alone at every strength in `levels`, and the run with
    none on (strength 0), once per seed, at `base`'s other settings."""
    settings = base_settings(base)
    out = []
    for seed in seeds:
        out.append({**with_augmentations(settings, {}, searched), "study": "dose", "design_row": -1, "seed": seed, "label": CLEAN})
        for name in names:
            for level in levels:
                config = with_augmentations(settings, {name: level}, searched)
                out.append({**config, "study": "dose", "design_row": -1, "seed": seed, "label": name})
    return out


def ablation_configs(best: Mapping[str, Any], augmentations: Sequence[str], *, strength: float, seeds: int) -> list[dict[str, Any]]:
    """The best config, and each augmentation switched the other way (off if it was on; on
    at `strength` if it was off), each over `seeds` seeds."""
    base = {k: v for k, v in best.items() if k not in RUN_KEYS}
    out = []
    for seed in range(seeds):
        out.append({**base, "study": "ablation", "design_row": -1, "seed": seed, "label": ""})
        for name in augmentations:
            flipped = dict(base)
            if best.get(switch_key(name)):
                flipped[switch_key(name)] = False
                flipped.pop(strength_key(name), None)
            else:
                flipped[switch_key(name)], flipped[strength_key(name)] = True, strength
            out.append({**flipped, "study": "ablation", "design_row": -1, "seed": seed, "label": name})
    return out


def depth_cell(depth: int) -> str:
    return f"depth {depth}"


SCRATCH = "scratch"


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
) -> list[dict[str, Any]]:
    """The explain study: cells that each change one thing against the base settings, every
    cell trained with the `bundle` of augmentations off and on, once per seed.

    Cells: each freeze depth in `depths` (they must hold 0 and the base's depth); from
    scratch (random init, all layers) at the same budget and, with `scratch_epochs`, at
    that budget; each of `models` (name, weights) with all layers training; every class
    oversampled to `oversample_to` images, all layers. Beside them, crop alone at each of
    `crop_strengths` at the base settings (its reference: the base depth's cell with the
    bundle off). Every config names its model, weights, oversampling and budget
    (`tune_search.trainable.trial.SPEC_KEYS`; None: the search's)."""
    settings = base_settings(base)
    names = list(dict.fromkeys([*searched, *bundle, "crop"]))
    own = {"model": model[0], "weights": model[1], "oversample_to": None, "max_epochs": None}
    all_layers = {**own, "freeze_depth": 0}
    cells = [(depth_cell(d), {**own, "freeze_depth": d}) for d in depths]
    cells.append((SCRATCH, {**all_layers, "weights": "none"}))
    if scratch_epochs:
        cells.append((f"{SCRATCH} {scratch_epochs} epochs", {**all_layers, "weights": "none", "max_epochs": scratch_epochs}))
    cells += [(f"model {name}", {**all_layers, "model": name, "weights": weights}) for name, weights in models if name != model[0]]
    cells.append((f"oversample {oversample_to}", {**all_layers, "oversample_to": oversample_to}))
    out = []
    for seed in seeds:
        run = {"study": "explain", "design_row": -1, "seed": seed}
        for label, changes in cells:
            for on in (False, True):
                config = with_augmentations({**settings, **changes}, bundle if on else {}, names)
                out.append({**config, **run, "label": label, BUNDLE: on})
        for level in crop_strengths:
            out.append({**with_augmentations({**settings, **own}, {"crop": level}, names), **run, "label": "crop", BUNDLE: False})
    return out

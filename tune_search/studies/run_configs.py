"""The trial configs a study builds: a base's settings, augmentations switched on at given
strengths, the base a study runs at, and the screen's strengths."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pandas as pd

from tune_search.constants import BASELINES, FINISHED
from tune_search.export import config_from_row
from tune_search.runs import RUN_KEYS
from tune_search.sections import ConfigError, SearchConfigBase
from tune_search.trainable.augment import NAMES, is_augmentation_key, strength_key, switch_key, unknown_names
from tune_search.trainable.trial import SPEC_KEYS

if TYPE_CHECKING:
    from tune_search.space import Space
    from tune_search.studies._base import Folder


def base_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """A trial config's non-augmentation settings, every augmentation off."""
    return {k: v for k, v in config.items() if not is_augmentation_key(k) and k not in RUN_KEYS and k not in SPEC_KEYS}


def with_augmentations(base: Mapping[str, Any], on: Mapping[str, float], names: Sequence[str]) -> dict[str, Any]:
    config = dict(base)
    for name in names:
        config[switch_key(name)] = name in on
        if name in on:
            config[strength_key(name)] = float(on[name])
    return config


def study_base(folder: Folder, base: str) -> dict[str, Any]:
    """The non-augmentation settings a study runs at: the best config's, or the "all
    layers" baseline's."""
    if base == "best":
        best = folder.read("best_configs")
        if best is None or best.empty:
            raise ConfigError(f"{folder.file('best_configs')} has no successful trial to study")
        return base_settings(config_from_row(best.iloc[0]))
    trials = folder.read("trials")
    match = trials[(trials["baseline"] == BASELINES[1]) & trials["status"].isin(FINISHED)] if trials is not None else []
    if not len(match):
        raise ConfigError(f"screen.base: baseline needs the search's '{BASELINES[1]}' baseline, which {folder.path} lacks")
    return base_settings(config_from_row(match.iloc[0]))


def screen_strengths(cfg: SearchConfigBase, space: Space) -> dict[str, float]:
    """Each searched augmentation's strength in the screen: screen.strength (one value or
    one per augmentation), else the baselines' strength; a declared switch is on at 1."""
    chosen = cfg.screen.strength
    default = chosen if isinstance(chosen, float) else space.reference_strength
    named = chosen if isinstance(chosen, dict) else {}
    return {n: 1.0 if n in space.switches else float(named.get(n, default)) for n in space.augmentations}


def known_augmentations(key: str, names, cfg: SearchConfigBase, default: str | None) -> None:
    """Refuse (ValueError) a list of augmentations `key` holds that names one the run does not
    know (a built-in or an entry its space declares); `default` is the key's word for none."""
    known = (*NAMES, *(d.name for d in cfg.space.declared))
    if names not in (None, default) and (not names or unknown_names(names, known)):
        bad = ", ".join(unknown_names(names, known)) or "none"
        raise ValueError(f"{key}: unknown augmentation(s) {bad}; valid: {default or 'null'}, or a list of {', '.join(known)}")


def screened(runs: pd.DataFrame, names: Sequence[str]) -> list[str]:
    """The augmentations of `names` that a study's runs switched on."""
    return [n for n in names if runs[switch_key(n)].any()]

"""The Optuna define-by-run search space and the fixed baseline points.

Parameter names are the flat keys that reach the trainable and the exports: `lr`,
`freeze_depth`, `aug_<name>` (bool), `aug_<name>_strength` (declared only when the switch
is on), and `weight_decay`, `batch_size`, `label_smoothing` when searched.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import optuna

from tune_search.constants import BASELINES, MOTIVATING
from tune_search.sections import SpaceConfig
from tune_search.trainable.augment import strength_key, switch_key
from tune_search.trainable.hyperparameters import HYPERPARAMETERS


@dataclass(frozen=True)
class Space:
    """`SpaceConfig` with freeze depths resolved against the chosen model."""

    lr: float | tuple[float, float]
    freeze_depth: int | tuple[int, int]
    augmentations: tuple[str, ...]
    strength: tuple[float, float]
    weight_decay: float | tuple[float, float]
    batch_size: int | tuple[int, ...]
    label_smoothing: float | tuple[float, float]
    baseline_strength: float
    baseline_lr: float
    max_depth: int
    switches: tuple[str, ...] = ()  # augmentations without a strength (declared switches): on at 1

    @classmethod
    def resolve(cls, cfg: SpaceConfig, max_depth: int) -> Space:
        def depth(v):
            d = max_depth if v == "max" else int(v)
            if not 0 <= d <= max_depth:
                raise ValueError(f"space.freeze_depth {v} is out of range: this model has depths 0..{max_depth} (or 'max')")
            return d

        fd = tuple(depth(v) for v in cfg.freeze_depth) if isinstance(cfg.freeze_depth, tuple) else depth(cfg.freeze_depth)
        if isinstance(fd, tuple) and fd[0] > fd[1]:
            raise ValueError(f"space.freeze_depth range {list(cfg.freeze_depth)} is reversed: write [low, high]")
        lr = cfg.lr
        baseline_lr = cfg.baseline_lr or (math.sqrt(lr[0] * lr[1]) if isinstance(lr, tuple) else lr)
        return cls(
            lr=lr,
            freeze_depth=fd,
            augmentations=cfg.augmentation_names,
            strength=tuple(cfg.strength),
            weight_decay=cfg.weight_decay,
            batch_size=cfg.batch_size,
            label_smoothing=cfg.label_smoothing,
            baseline_strength=cfg.baseline_strength,
            baseline_lr=baseline_lr,
            max_depth=max_depth,
            switches=tuple(d.name for d in cfg.declared if not d.scalable),
        )

    @property
    def reference_strength(self) -> float:
        """The baselines' strength, within the searched strength range."""
        return min(max(self.baseline_strength, self.strength[0]), self.strength[1])

    def __call__(self, trial: optuna.Trial) -> dict[str, Any]:
        """Declare one trial's parameters; return the fixed values. No work happens here."""
        fixed: dict[str, Any] = {}

        for h in HYPERPARAMETERS:
            value = getattr(self, h.name)
            if not isinstance(value, tuple):
                fixed[h.name] = value
            elif h.choices:
                trial.suggest_categorical(h.name, list(value))
            elif h.integer:
                trial.suggest_int(h.name, *value)
            else:
                trial.suggest_float(h.name, *value, log=h.log)
        for name in self.augmentations:
            if trial.suggest_categorical(switch_key(name), [False, True]):
                if name in self.switches:
                    fixed[strength_key(name)] = 1.0
                elif self.strength[0] == self.strength[1]:
                    fixed[strength_key(name)] = self.strength[0]
                else:
                    trial.suggest_float(strength_key(name), *self.strength)
        fixed["baseline"] = trial.user_attrs.get("baseline", "")
        return fixed

    def baseline_points(self) -> list[tuple[str, dict[str, Any]]]:
        """The three reference configurations, as Optuna parameters to enqueue.

        Searched extras take their value nearest the middle of their range, so that the
        three differ only in freeze depth and augmentation."""
        common: dict[str, Any] = {}
        for h in HYPERPARAMETERS:
            value = getattr(self, h.name)
            if isinstance(value, tuple) and h.name not in ("lr", "freeze_depth"):  # those two below
                common[h.name] = h.middle(value)
        if isinstance(self.lr, tuple):
            common["lr"] = min(max(self.baseline_lr, self.lr[0]), self.lr[1])
        strength = self.reference_strength

        def point(depth: int, augs: tuple[str, ...]) -> dict[str, Any]:
            p = dict(common)
            if isinstance(self.freeze_depth, tuple):
                p["freeze_depth"] = depth
            for name in self.augmentations:
                p[switch_key(name)] = name in augs
                if name in augs and self.strength[0] != self.strength[1] and name not in self.switches:
                    p[strength_key(name)] = strength
            return p

        points = [
            (BASELINES[0], point(self.max_depth, ())),
            (BASELINES[1], point(0, ())),
            (BASELINES[2], point(0, MOTIVATING)),  # the motivating experiment's third
        ]
        left_out = dict(self.baselines_left_out())
        return [(name, p) for name, p in points if name not in left_out]

    def baselines_left_out(self) -> list[tuple[str, str]]:
        """(baseline, why) for each baseline the space cannot run as defined: head only needs
        the classifier-only freeze depth, the other two depth 0 (all layers training)."""
        low, high = self.freeze_depth if isinstance(self.freeze_depth, tuple) else (self.freeze_depth,) * 2
        shown = f"space.freeze_depth {low}" if low == high else f"space.freeze_depth [{low}, {high}]"
        out = []
        if high < self.max_depth:
            out.append((BASELINES[0], f"{shown} excludes {self.max_depth}, the classifier-only depth"))
        if low > 0:
            out += [(name, f"{shown} excludes 0, all layers training") for name in BASELINES[1:]]
        return out

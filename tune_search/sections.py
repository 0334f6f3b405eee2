"""The space file's sections every run has (data, model, space, budget, resources, run), the
base class of every section, and the error a wrong file or flag raises. Each designed study
declares its own section in its module (`Study.sections`); `tune_search.config` assembles them."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tune_search.trainable import declared as declaring
from tune_search.trainable.augment import NAMES, Augmentation, unknown_names
from tune_search.trainable.data import DataSpec
from tune_search.trainable.hyperparameters import BY_NAME, HYPERPARAMETERS
from tune_search.trainable.imagecache import DEFAULT as DEFAULT_CACHE
from tune_search.trainable.models import ModelSpec, available_models
from tune_search.trainable.trial import TrialSpec


class ConfigError(ValueError):
    """A space file or flag is wrong; the message names the key and the allowed values."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


PositiveInt = Annotated[int, Field(ge=1)]
Range = tuple[float, float]


def _ordered(value, key: str):
    if isinstance(value, tuple) and value[0] > value[1]:
        raise ValueError(f"{key} range [{value[0]}, {value[1]}] is reversed: write [low, high]")
    return value


class DataConfig(Section):
    source: str = "fashion-mnist"
    image_size: Annotated[int, Field(ge=16, le=1024)] = 32
    train_size: PositiveInt | None = None
    val_size: PositiveInt | None = None
    val_fraction: Annotated[float, Field(gt=0, lt=1)] = DataSpec.val_fraction
    balance: Literal["none", "oversample", "weighted"] = TrialSpec.balance
    oversample_to: PositiveInt | None = None
    max_pixels: PositiveInt = DataSpec.max_pixels  # a folder's image with more pixels is skipped, never decoded
    cache: str | None = DEFAULT_CACHE  # decoded images on disk, reused by every run of the same data; null: in memory


class ModelConfig(Section):
    name: str = ModelSpec.name
    weights: str = ModelSpec.weights
    precision: Literal["auto", "fp32", "bf16"] = TrialSpec.precision

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        if name not in available_models():
            raise ValueError(f"unknown model {name!r}; valid models: {', '.join(available_models())}")
        return name


class SpaceConfig(Section):
    """Each hyperparameter is a range (searched) or one value (fixed). `augmentations`: all
    built-ins, or a list whose items are built-in names or declared entries `{NAME: {transform:
    CLASS, at_full: {...}, scales: {...}}}` (tune_search.trainable.declared)."""

    augmentations: Literal["all"] | tuple[str | dict[str, Any], ...] = "all"
    strength: Range = (0.0, 1.0)
    lr: Annotated[float, Field(gt=0)] | Range = (1e-4, 1e-2)
    freeze_depth: int | Literal["max"] | tuple[int | Literal["max"], int | Literal["max"]] = (0, "max")
    weight_decay: Annotated[float, Field(ge=0)] | Range = BY_NAME["weight_decay"].default
    batch_size: PositiveInt | tuple[PositiveInt, ...] = BY_NAME["batch_size"].default
    label_smoothing: Annotated[float, Field(ge=0, lt=1)] | Range = BY_NAME["label_smoothing"].default
    baseline_strength: Annotated[float, Field(ge=0, le=1)] = 0.5
    baseline_lr: Annotated[float, Field(gt=0)] | None = None

    @field_validator("augmentations")
    @classmethod
    def _known_augs(cls, value):
        if value == "all":
            return value
        names = []
        for item in value:
            if isinstance(item, str):
                if unknown_names([item]):
                    raise ValueError(
                        f"unknown augmentation {item!r}; valid: all, or a list of {', '.join(NAMES)}"
                        " and entries you declare ({NAME: {transform: CLASS, at_full: {...}, scales: {...}}})"
                    )
                names.append(item)
            elif len(item) != 1:
                raise ValueError(f"a declared entry is one NAME: {{transform: ...}} mapping per list item (got keys {', '.join(map(str, item))})")
            else:
                ((name, entry),) = item.items()
                declaring.declare(name, entry)  # raises naming the entry and the key
                names.append(name)
        if len(set(names)) != len(names):
            raise ValueError(f"augmentations are listed twice: {', '.join(sorted({n for n in names if names.count(n) > 1}))}")
        return value

    @property
    def declared(self) -> tuple[declaring.Declaration, ...]:
        """The entries this space declares, in the order listed."""
        if self.augmentations == "all":
            return ()
        return tuple(declaring.declare(*next(iter(item.items()))) for item in self.augmentations if isinstance(item, dict))

    @model_validator(mode="after")
    def _ranges(self):
        _ordered(self.strength, "strength")
        if not 0 <= self.strength[0] <= self.strength[1] <= 1:
            raise ValueError(f"strength range {list(self.strength)} must lie within [0, 1]")
        for h in HYPERPARAMETERS:
            value = getattr(self, h.name)
            if h.choices or h.integer:  # a set of choices; freeze depths resolve against the model
                continue
            _ordered(value, h.name)
            if h.log and isinstance(value, tuple) and value[0] <= 0:
                fix = "; use 0 to fix it at 0" if h.default == 0 else ""
                raise ValueError(f"{h.name} range must be positive (it is searched on a log scale){fix}")
        return self

    @property
    def augmentation_names(self) -> tuple[str, ...]:
        """The searched augmentations: the built-ins in registry order, then the declared."""
        if self.augmentations == "all":
            return NAMES
        return (*(n for n in NAMES if n in self.augmentations), *(d.name for d in self.declared))


BASELINE_TRIALS = 3  # head only, all layers, all + aug: they always run


class BudgetConfig(Section):
    num_samples: Annotated[int, Field(ge=BASELINE_TRIALS)] = 6
    max_epochs: PositiveInt = 3
    grace_period: PositiveInt = 1
    reduction_factor: Annotated[float, Field(ge=2)] = 2
    top_k: PositiveInt = 3

    @model_validator(mode="after")
    def _grace(self):
        if self.grace_period > self.max_epochs:
            raise ValueError(f"grace_period {self.grace_period} exceeds max_epochs {self.max_epochs}")
        return self


class ResourcesConfig(Section):
    cpus_per_trial: Annotated[float, Field(gt=0)] | Literal["auto"] = "auto"
    gpus_per_trial: Annotated[float, Field(ge=0)] | Literal["auto"] = "auto"
    max_concurrent: PositiveInt | None = None
    fast_path: bool = TrialSpec.fast_path


Strength = Annotated[float, Field(gt=0, le=1)]


def two_levels(value: tuple[float, ...], study: str) -> tuple[float, ...]:
    """Strengths for a dose-response: sorted, at least two different ones."""
    if len(set(value)) < 2:
        raise ValueError(f"{study} needs at least two different strengths")
    return tuple(sorted(set(value)))


class RunSection(Section):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]+$")] = "default"
    storage: Annotated[str, Field(min_length=1)] = "results"
    seed: Annotated[int, Field(ge=0, lt=2**32)] = 0
    verbose: bool = False  # Ray's own trial tables, configuration boxes and worker logs
    keep_checkpoints: bool = False  # false: after each phase only the top_k search trials' checkpoints stay

    @field_validator("name")
    @classmethod
    def _a_folder_name(cls, name: str) -> str:
        if set(name) == {"."}:
            raise ValueError("must name a folder inside the storage: letters, digits, '.', '_', '-', not only dots")
        return name


class SearchConfigBase(Section):
    """What every assembled space file (`tune_search.config.SearchConfig`) offers beside its
    sections: the run's declared augmentations, its catalog and its YAML."""

    @property
    def declared(self) -> tuple[declaring.Declaration, ...]:
        """Every declared entry a trial may train with: the space's, then the policy arms'."""
        own = self.space.declared
        names = {d.name for d in own}
        policies = tuple(declaring.policy(p) for p in self.confirm.policies if p in declaring.POLICIES and declaring.policy(p).name not in names)
        return own + tuple(dict.fromkeys(policies))

    @property
    def policy_names(self) -> tuple[str, ...]:
        """The confirmation's policy arms, as augmentation names."""
        return tuple(declaring.policy(p).name if p in declaring.POLICIES and p not in self.space.augmentation_names else p for p in self.confirm.policies)

    def space_items(self, names) -> list[str | dict[str, Any]]:
        """`space.augmentations` items that search `names`: a built-in's name, a declared
        entry as the space file wrote it (a policy arm's as its class)."""
        written = {next(iter(i)): i for i in self.space.augmentations if isinstance(i, dict)} if self.space.augmentations != "all" else {}
        policies = {d.name: {d.name: {"transform": d.transform}} for d in self.declared}
        return [n if n in NAMES else written.get(n, policies.get(n)) for n in names]

    @property
    def catalog(self) -> dict[str, Augmentation]:
        return declaring.catalog(self.declared)

    def dump(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

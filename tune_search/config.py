"""The space file: typed, frozen, validated once. Precedence: defaults, then the file, then
CLI flags. Unknown keys and bad values are refused with the key and what is allowed."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tune_search.trainable import declared as declaring
from tune_search.trainable.augment import NAMES, Augmentation, unknown_names
from tune_search.trainable.data import DataSpec
from tune_search.trainable.hyperparameters import BY_NAME, HYPERPARAMETERS
from tune_search.trainable.models import ModelSpec, available_models
from tune_search.trainable.trial import TrialSpec


class ConfigError(ValueError):
    """A space file or flag is wrong; the message names the key and the allowed values."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


PositiveInt = Annotated[int, Field(ge=1)]
Range = tuple[float, float]


def _ordered(value, key: str):
    if isinstance(value, tuple) and value[0] > value[1]:
        raise ValueError(f"{key} range [{value[0]}, {value[1]}] is reversed: write [low, high]")
    return value


class DataConfig(_Section):
    source: str = "fashion-mnist"
    image_size: Annotated[int, Field(ge=16, le=1024)] = 32
    train_size: PositiveInt | None = None
    val_size: PositiveInt | None = None
    val_fraction: Annotated[float, Field(gt=0, lt=1)] = DataSpec.val_fraction
    balance: Literal["none", "oversample", "weighted"] = TrialSpec.balance
    oversample_to: PositiveInt | None = None
    max_pixels: PositiveInt = DataSpec.max_pixels  # a folder's image with more pixels is skipped, never decoded


class ModelConfig(_Section):
    name: str = ModelSpec.name
    weights: str = ModelSpec.weights
    precision: Literal["auto", "fp32", "bf16"] = TrialSpec.precision

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        if name not in available_models():
            raise ValueError(f"unknown model {name!r}; valid models: {', '.join(available_models())}")
        return name


class SpaceConfig(_Section):
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


class BudgetConfig(_Section):
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


class ResourcesConfig(_Section):
    cpus_per_trial: Annotated[float, Field(gt=0)] | Literal["auto"] = "auto"
    gpus_per_trial: Annotated[float, Field(ge=0)] | Literal["auto"] = "auto"
    max_concurrent: PositiveInt | None = None
    fast_path: bool = TrialSpec.fast_path


Strength = Annotated[float, Field(gt=0, le=1)]


def _two_levels(value: tuple[float, ...], study: str) -> tuple[float, ...]:
    """Strengths for a dose-response: sorted, at least two different ones."""
    if len(set(value)) < 2:
        raise ValueError(f"{study} needs at least two different strengths")
    return tuple(sorted(set(value)))


class ScreenConfig(_Section):
    """The screening study after the search: a two-level design over the searched
    augmentations at fixed other settings."""

    enabled: bool = True
    base: Literal["best", "baseline"] = "best"  # the best config's settings, or the "all layers" baseline's
    strength: Strength | dict[str, Strength] | None = None  # None: the baselines' strength
    seeds: PositiveInt | Literal["auto"] = "auto"  # auto: replicates added while any verdict is unclear
    negligible: Annotated[float, Field(gt=0, lt=1)] = 0.01  # harmless: an equivalence test puts the effect within +-this
    max_seeds: PositiveInt = 1  # the focused screen decides what the screen leaves unclear


class FocusConfig(_Section):
    """The focused screen: the augmentations the screen did not call harmful, screened again
    with the harmful ones off, at the recipe's settings, in their own two-level design."""

    enabled: bool = True
    seeds: PositiveInt | Literal["auto"] = "auto"  # auto: replicates added while any verdict is unclear
    max_seeds: PositiveInt = 4  # with auto: at most this many replicates


class SweepConfig(_Section):
    """The strength of every augmentation the focused screen calls helpful, from measured runs:
    each at `strengths` and off on top of the rest of the recipe, paired by seed."""

    enabled: bool = True
    strengths: tuple[Strength, ...] = (0.25, 0.5, 1.0)
    seeds: Annotated[int, Field(ge=2)] = 2

    _levels = field_validator("strengths")(lambda value: _two_levels(value, "the strength sweep"))


class DoseConfig(_Section):
    """Dose-response of each augmentation the screen calls harmful."""

    enabled: bool = True
    strengths: tuple[Strength, ...] = (0.1, 0.25, 0.5, 1.0)  # 0.1: a run near where harm may start
    seeds: Annotated[int, Field(ge=2)] = 3  # with one pooled fit, +-2 points per strength at 1 point of seed noise
    max_augmentations: PositiveInt = 1  # the most harmful ones first
    threshold: Annotated[float, Field(gt=0, lt=1)] = 0.005  # harmful above: where it costs more than this

    _levels = field_validator("strengths")(lambda value: _two_levels(value, "dose-response"))


class RecipeConfig(_Section):
    """The recipe the verdicts recommend (the focused screen's where it ran, else the
    screen's): hurts dropped, helps kept, harmless kept unless `keep_harmless: false`."""

    keep_harmless: bool = True
    keep_unclear: bool = False  # also keep augmentations whose verdict is unclear


class ConfirmConfig(_Section):
    """The confirmation study: the recipe against no augmentation, the original set and the
    search's best config, at full budget, paired by seed."""

    enabled: bool = True
    # 5: with 3 seeds and 3 arms the fit has 4 residual degrees of freedom, and an interval
    # simultaneous over the pairs at the confirmation's share needs t = 7.2 (4.0 with 5 seeds)
    seeds: Annotated[int, Field(ge=2)] = 5
    compare: tuple[str, ...] | None = None  # the original set; None: the all + aug baseline's
    # automatic-policy arms: v2 policy classes (declaring.POLICIES) or entries the space declares
    policies: tuple[str, ...] = ("TrivialAugmentWide",)


class AblationConfig(_Section):
    seeds: Annotated[int, Field(ge=2)] = 3
    strength: Annotated[float, Field(gt=0, le=1)] = 0.5  # for augmentations the best config has off


class ExplainModel(_Section):
    name: str
    weights: str = ModelSpec.weights

    _known = field_validator("name")(ModelConfig._known.__func__)


class ExplainConfig(_Section):
    """The explain study: the motivating thread's explanations, each tested by a contrast."""

    enabled: bool = False
    bundle: Literal["auto"] | tuple[str, ...] = "auto"  # auto: the screen's harmful set, else constants.MOTIVATING
    seeds: Annotated[int, Field(ge=2)] | Literal["auto"] = "auto"  # auto: 3 seeds, then as many as reach +-precision
    precision: Annotated[float, Field(gt=0, lt=1)] = 0.02  # auto: the half-width a contrast's 95 % interval should reach
    max_seeds: Annotated[int, Field(ge=3)] = 32  # auto: at most this many seeds
    scratch_epochs: PositiveInt | None = None  # also a longer from-scratch run, at this budget
    scratch_lr: tuple[Annotated[float, Field(gt=0)], ...] = (1.0, 3.0, 10.0)  # the from-scratch lr sweep: multiples of the base lr
    models: tuple[str | ExplainModel, ...] = ()  # capacity: other models, all layers training
    oversample_to: PositiveInt | None = None  # None: 4x the mean class size (the thread: 60 -> 256)
    crop_strengths: tuple[Strength, ...] = (0.25, 0.5, 1.0)
    negligible: Annotated[float, Field(gt=0, lt=1)] = 0.01  # negligible: an equivalence test puts the contrast within +-this

    @field_validator("models")
    @classmethod
    def _known_models(cls, value):
        return tuple(ExplainModel(name=m) if isinstance(m, str) else m for m in value)

    _levels = field_validator("crop_strengths")(lambda value: _two_levels(value, "crop's dose-response"))


class RunSection(_Section):
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


class SearchConfig(_Section):
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    space: SpaceConfig = SpaceConfig()
    budget: BudgetConfig = BudgetConfig()
    resources: ResourcesConfig = ResourcesConfig()
    screen: ScreenConfig = ScreenConfig()
    focus: FocusConfig = FocusConfig()
    sweep: SweepConfig = SweepConfig()
    dose: DoseConfig = DoseConfig()
    recipe: RecipeConfig = RecipeConfig()
    confirm: ConfirmConfig = ConfirmConfig()
    ablation: AblationConfig = AblationConfig()
    explain: ExplainConfig = ExplainConfig()
    run: RunSection = RunSection()

    @model_validator(mode="after")
    def _screened(self):
        strength = self.screen.strength
        searched = self.space.augmentation_names
        if isinstance(strength, dict):
            stray = [n for n in strength if n not in searched]
            if stray:
                raise ValueError(f"screen.strength names {', '.join(stray)}, which the space does not search; searched: {', '.join(searched)}")
        for declaration in self.space.declared:  # each declared transform runs on probe images of the run's size
            declaring.check_on_images(declaration, self.data.image_size)
        known = (*NAMES, *(d.name for d in self.space.declared))
        for key, names, default in (("confirm.compare", self.confirm.compare, None), ("explain.bundle", self.explain.bundle, "auto")):
            if names not in (None, default) and (not names or unknown_names(names, known)):
                bad = ", ".join(unknown_names(names, known)) or "none"
                raise ValueError(f"{key}: unknown augmentation(s) {bad}; valid: {default or 'null'}, or a list of {', '.join(known)}")
        for name in self.confirm.policies:
            if name not in declaring.POLICIES and name not in searched:
                raise ValueError(
                    f"confirm.policies: {name!r} is neither an automatic policy ({', '.join(declaring.POLICIES)}) nor an entry the space declares; [] for none"
                )
        return self

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


def _valid_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return []
        model = field.annotation
    return list(model.model_fields)


def _not_finite(value: Any) -> bool:
    values = value if isinstance(value, (list, tuple)) else [value]
    return any(isinstance(v, float) and not math.isfinite(v) for v in values)


def _explain(error: ValidationError, origin: str) -> ConfigError:
    lines = []
    seen = set()
    for e in error.errors():
        # pydantic reports each member of a union separately: keep the first per key
        loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and ("[" in p or p.startswith("constrained-") or p in ("tuple", "literal"))))
        key = ".".join(str(p) for p in loc if not isinstance(p, int)) or "(top level)"
        if key in seen:
            continue
        seen.add(key)
        if not loc:  # a check across sections: its message names its keys
            lines.append(e["msg"].removeprefix("Value error, "))
        elif e["type"] == "extra_forbidden":
            lines.append(f"unknown key {key!r}; valid keys here: {', '.join(_valid_keys(SearchConfig, loc))}")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            if _not_finite(e.get("input")):
                msg = "numbers must be finite (no .nan or .inf)"
            lines.append(f"{key}: {msg} (got {e.get('input')!r})")
    return ConfigError(f"{origin}: " + "; ".join(lines))


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key written twice (YAML keeps the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, (str, int, float, bool)):
                continue  # the safe loader refuses unhashable keys itself
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} is written twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


MAX_DEPTH = 32  # a space file nests 3 deep; a results folder's config.yaml 4
MAX_VALUES = 100_000  # values once aliases are expanded; a full space file has a few hundred


def _bounded(text: str, origin: str) -> None:
    """Refuse, before anything is built, YAML nested deeper than MAX_DEPTH or whose aliases
    expand to more than MAX_VALUES values (ten nested aliases of ten make 10^10 from 1 KB).
    The nesting is counted on the parser's events (no recursion), the expansion on the
    composed node graph, each shared node once."""
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
            depth += 1
            if depth > MAX_DEPTH:
                line = f" (line {event.start_mark.line + 1})" if event.start_mark else ""
                raise ConfigError(f"{origin} nests deeper than {MAX_DEPTH} levels{line}; a space file has 3 (section: key: [values])")
        elif isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
            depth -= 1
    sizes: dict[int, int] = {}

    def size(node: yaml.Node) -> int:
        if id(node) not in sizes:
            if isinstance(node, yaml.SequenceNode):
                sizes[id(node)] = 1 + sum(size(n) for n in node.value)
            elif isinstance(node, yaml.MappingNode):
                sizes[id(node)] = 1 + sum(size(k) + size(v) for k, v in node.value)
            else:
                sizes[id(node)] = 1
        return sizes[id(node)]

    root = yaml.compose(text, Loader=yaml.SafeLoader)
    if root is not None and (total := size(root)) > MAX_VALUES:
        raise ConfigError(f"{origin} expands to {total:.3g} values once its aliases (*name) are expanded; at most {MAX_VALUES:,} are read")


def set_dotted(tree: dict, key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    for part in parents:
        if tree.get(part) is None:  # a section left empty reads as None
            tree[part] = {}
        tree = tree[part]
    tree[leaf] = value


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> SearchConfig:
    """Defaults, then the YAML space file at `path`, then `overrides` (dotted keys)."""
    tree: dict = {}
    origin = "defaults"
    if path is not None:
        origin = f"space file {path}"
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read space file {path}: {exc.strerror or exc}") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{origin} is not UTF-8 text (byte {exc.start}): write it as UTF-8 YAML") from None
        try:
            _bounded(text, origin)
            tree = yaml.load(text, Loader=_UniqueKeyLoader)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ConfigError(f"{origin} is not valid YAML: {problem}{where}") from None
        tree = {} if tree is None else tree
        sections = ", ".join(SearchConfig.model_fields)
        if not isinstance(tree, dict):
            raise ConfigError(f"{origin} must be a mapping of sections ({sections})")
        for key, value in tree.items():
            if value is not None and not isinstance(value, dict) and key in SearchConfig.model_fields:
                raise ConfigError(f"{origin}: section {key!r} must be a mapping of keys, got {value!r}")
        tree = {key: {} if value is None else value for key, value in tree.items()}
    for key, value in (overrides or {}).items():
        if value is not None:
            set_dotted(tree, key, value)
            origin = f"{origin} with command-line flags" if "flags" not in origin else origin
    try:
        return SearchConfig.model_validate(tree)
    except ValidationError as exc:
        raise _explain(exc, origin) from None

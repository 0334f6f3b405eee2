"""The space file: typed, frozen, validated once. Precedence: defaults, then the file, then
CLI flags. Unknown keys and bad values are refused with the key and what is allowed.

`SearchConfig` is assembled from the sections every run has (`tune_search.sections`) and the
section(s) each designed study declares (`Study.sections`, in `STUDIES` order)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError, create_model, model_validator

from tune_search.sections import (
    BudgetConfig,
    ConfigError,
    DataConfig,
    ModelConfig,
    ResourcesConfig,
    RunSection,
    SearchConfigBase,
    SpaceConfig,
)
from tune_search.studies import STUDIES
from tune_search.trainable import declared as declaring

__all__ = ["ConfigError", "SearchConfig", "load_config", "set_dotted"]


def _consistent(config):
    for declaration in config.space.declared:  # each declared transform runs on probe images of the run's size
        declaring.check_on_images(declaration, config.data.image_size)
    for study in STUDIES:  # each study's section against the rest (ValueError naming the key)
        study.consistent(config)
    return config


def _sections() -> dict[str, Any]:
    """Every section, as (model, default): the run's own, then each study's in `STUDIES` order."""
    own = {"data": DataConfig, "model": ModelConfig, "space": SpaceConfig, "budget": BudgetConfig, "resources": ResourcesConfig}
    studies = {key: model for study in STUDIES for key, model in study.sections.items()}
    return {key: (model, model()) for key, model in (own | studies | {"run": RunSection}).items()}


SearchConfig = create_model(
    "SearchConfig",
    __base__=SearchConfigBase,
    __module__=__name__,
    __validators__={"consistent": model_validator(mode="after")(_consistent)},
    **_sections(),
)


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

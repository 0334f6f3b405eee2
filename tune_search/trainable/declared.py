"""Augmentations a space file declares by torchvision transforms v2 class name.

An entry names a class of `torchvision.transforms.v2`, its parameters at strength 1
(`at_full`) and which of them scale with the strength from which identity value (`scales`).
At strength s a scaled parameter is `identity + s * (at_full - identity)` (element by element
for a list; rounded where both ends are whole numbers); the others keep their `at_full` value.
An entry with nothing in `scales` is a switch: on means the transform as written (the
automatic policies, TrivialAugmentWide and its kin, are such switches).

Nothing here runs code from the file: the class is looked up by name among v2's public
transform classes, the values are YAML scalars or lists of them, and an entry is accepted only
after its transform ran on probe images: at strength 1 it must give back uint8 images of the
same size, and with every scaled parameter at its identity value the images unchanged.
"""

from __future__ import annotations

import difflib
import inspect
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torchvision.transforms import v2

from tune_search.trainable.augment import REGISTRY, Augmentation

Value = Any  # a YAML scalar (bool, int, float, str, None) or a tuple of them
POLICIES = ("TrivialAugmentWide", "RandAugment", "AutoAugment", "AugMix")  # automatic policies: switches
# v2 classes that are not one image's augmentation: containers of other transforms (they take
# callables), batch mixers that need labels, conversions, and box / key-point / video helpers
NOT_AUGMENTATIONS = frozenset(
    {
        "Transform", "Compose", "RandomApply", "RandomChoice", "RandomOrder", "Lambda", "CutMix", "MixUp", "LinearTransformation",
        "ToImage", "ToPILImage", "ToTensor", "PILToTensor", "ToPureTensor", "ToDtype", "ConvertImageDtype", "Normalize", "RGB",
        "ClampBoundingBoxes", "ClampKeyPoints", "ConvertBoundingBoxFormat", "SanitizeBoundingBoxes", "SanitizeKeyPoints",
        "SetClampingMode", "UniformTemporalSubsample", "FiveCrop", "TenCrop", "Identity",
    }
)  # fmt: skip
NAME_PATTERN = "lower-case letters, digits and '_', starting with a letter, not ending in '_strength'"
IDENTITY_TOLERANCE = 1  # grey levels: a resampling at the identity may round a pixel by one
PROBES = 8  # probe images an entry's transform is checked on


class DeclarationError(ValueError):
    """A declared entry is wrong; the message names the entry and the key."""


@dataclass(frozen=True)
class Declaration:
    """One declared augmentation, as plain data (it travels to every trial)."""

    name: str
    transform: str  # a class of torchvision.transforms.v2
    at_full: tuple[tuple[str, Value], ...] = ()  # its parameters at strength 1
    scales: tuple[tuple[str, Value], ...] = ()  # the parameters that scale, and their identity values

    @property
    def scalable(self) -> bool:
        return bool(self.scales)

    def parameters(self, strength: float) -> dict[str, Any]:
        """The class's keyword arguments at `strength` in (0, 1]."""
        identity = dict(self.scales)
        return {key: _between(identity[key], value, strength) if key in identity else _plain(value) for key, value in self.at_full}

    def build(self, strength: float) -> v2.Transform:
        return getattr(v2, self.transform)(**self.parameters(strength))


def _plain(value: Value) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _between(identity: Value, full: Value, s: float) -> Any:
    if isinstance(full, tuple):
        return [_between(i, f, s) for i, f in zip(identity, full)]
    value = identity + s * (full - identity)
    whole = all(isinstance(v, int) and not isinstance(v, bool) for v in (identity, full))
    return round(value) if whole else float(value)


def augmentation_classes() -> tuple[str, ...]:
    """The v2 classes an entry may name."""
    return tuple(
        n
        for n in dir(v2)
        if not n.startswith("_") and n not in NOT_AUGMENTATIONS and isinstance(getattr(v2, n), type) and issubclass(getattr(v2, n), v2.Transform)
    )


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, str)) or (isinstance(value, float) and math.isfinite(value))


def _frozen(value: Any, where: str) -> Value:
    """A YAML value as plain hashable data: a scalar or a flat list of scalars."""
    if _scalar(value):
        return value
    if isinstance(value, (list, tuple)) and all(_scalar(v) for v in value):
        return tuple(value)
    raise DeclarationError(f"{where}: values are numbers, booleans, strings, null or a flat list of them (got {value!r})")


def _numeric(value: Value) -> bool:
    values = value if isinstance(value, tuple) else (value,)
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def declare(name: str, entry: Any) -> Declaration:
    """A checked Declaration from a space file's entry `{transform, at_full, scales}`; raises
    DeclarationError naming the entry and the key. The probe check needs the image size and is
    `check_on_images`."""
    where = f"augmentation {name!r}"
    if not (isinstance(name, str) and name[:1].isalpha() and name.islower() and name.replace("_", "").isalnum() and name.isascii()) or name.endswith(
        "_strength"
    ):
        raise DeclarationError(f"{where}: a declared name is {NAME_PATTERN}")
    if name in REGISTRY:
        raise DeclarationError(f"{where}: the name is a built-in augmentation's; choose another (built-ins: {', '.join(REGISTRY)})")
    if not isinstance(entry, Mapping):
        raise DeclarationError(f"{where}: an entry is a mapping {{transform: CLASS, at_full: {{...}}, scales: {{...}}}} (got {entry!r})")
    stray = [k for k in entry if k not in ("transform", "at_full", "scales")]
    if stray:
        raise DeclarationError(f"{where}: unknown key {stray[0]!r}; valid keys: transform, at_full, scales")
    cls_name = entry.get("transform")
    classes = augmentation_classes()
    if not isinstance(cls_name, str) or cls_name not in classes:
        if isinstance(cls_name, str) and cls_name in NOT_AUGMENTATIONS:
            raise DeclarationError(
                f"{where}, transform: {cls_name} is not an augmentation of one image (it converts, combines other transforms, or needs labels or boxes)"
            )
        close = difflib.get_close_matches(str(cls_name), classes, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; the classes: {', '.join(classes)}"
        raise DeclarationError(f"{where}, transform: {cls_name!r} is not a torchvision.transforms.v2 image transform{hint}")
    params = _parameters(getattr(v2, cls_name))
    sections = {}
    for key in ("at_full", "scales"):
        raw = entry.get(key) or {}
        if not isinstance(raw, Mapping):
            raise DeclarationError(f"{where}, {key}: a mapping of {cls_name}'s parameters (got {raw!r})")
        for param in raw:
            if param not in params:
                raise DeclarationError(f"{where}, {key}.{param}: {cls_name} takes no parameter {param!r}; it takes {', '.join(params) or 'none'}")
        sections[key] = tuple((str(p), _frozen(v, f"{where}, {key}.{p}")) for p, v in raw.items())
    at_full = dict(sections["at_full"])
    missing = [p for p, required in params.items() if required and p not in at_full]
    if missing:
        raise DeclarationError(f"{where}, at_full: {cls_name} needs {', '.join(missing)}")
    for param, identity in sections["scales"]:
        key = f"{where}, scales.{param}"
        if param not in at_full:
            raise DeclarationError(f"{key}: give its value at strength 1 under at_full too")
        full = at_full[param]
        if not (_numeric(identity) and _numeric(full)):
            raise DeclarationError(f"{key}: a scaled parameter is a number or a list of numbers at both ends (at_full {full!r}, identity {identity!r})")
        if isinstance(identity, tuple) != isinstance(full, tuple) or (isinstance(full, tuple) and len(full) != len(identity)):
            raise DeclarationError(
                f"{key}: the identity value {list(identity) if isinstance(identity, tuple) else identity!r} must have at_full's shape ({full!r})"
            )
    declaration = Declaration(name=name, transform=cls_name, at_full=sections["at_full"], scales=sections["scales"])
    for strength in (1.0, 0.5):
        try:
            declaration.build(strength)
        except (TypeError, ValueError) as exc:
            raise DeclarationError(f"{where}, at_full: {cls_name} refuses these values at strength {strength:g}: {exc}") from None
    return declaration


def _parameters(cls: type) -> dict[str, bool]:
    """A class's keyword parameters, each with whether it is required."""
    out = {}
    for p in list(inspect.signature(cls.__init__).parameters.values())[1:]:
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            out[p.name] = p.default is inspect.Parameter.empty
    return out


def policy(cls_name: str) -> Declaration:
    """An automatic policy's switch, at torchvision's defaults, named after its class."""
    return Declaration(name=cls_name.lower(), transform=cls_name)


def check_on_images(declaration: Declaration, side: int) -> None:
    """Run the entry's transform on probe images of this side: at strength 1 and 0.5 uint8
    images of the same size come back, and with its scaled parameters at their identity
    values the images come back unchanged (within IDENTITY_TOLERANCE). DeclarationError otherwise."""
    where = f"augmentation {declaration.name!r} ({declaration.transform})"
    generator = torch.Generator().manual_seed(0)
    coarse = torch.rand(PROBES, 3, 8, 8, generator=generator)
    images = (torch.nn.functional.interpolate(coarse, size=side, mode="bilinear") * 255).round().to(torch.uint8)
    state = torch.get_rng_state()
    try:
        torch.manual_seed(0)
        for strength in (1.0, 0.5):
            out = _apply(declaration.build(strength), images, where)
            if not (isinstance(out, torch.Tensor) and out.dtype == torch.uint8 and out.shape == images.shape):
                got = f"{tuple(out.shape)} {out.dtype}" if isinstance(out, torch.Tensor) else type(out).__name__
                raise DeclarationError(f"{where}: must give back uint8 images of {side} px ({tuple(images.shape[1:])}); it gave {got} at strength {strength:g}")
        if declaration.scalable:
            at_identity = declaration.build(0.0)
            changed = (_apply(at_identity, images, where).int() - images.int()).abs().max().item()
            if changed > IDENTITY_TOLERANCE:
                values = ", ".join(f"{p} {list(v) if isinstance(v, tuple) else v}" for p, v in declaration.scales)
                raise DeclarationError(
                    f"{where}, scales: at the identity values ({values}) the transform still changes the images"
                    f" (by up to {changed} grey levels): strength 0 must be no change; declare it without scales to use it as a switch"
                )
    finally:
        torch.set_rng_state(state)


def _apply(transform: v2.Transform, images: torch.Tensor, where: str) -> Any:
    try:
        return torch.stack([transform(image) for image in images])
    except Exception as exc:  # any error of the transform on a plain image is the entry's fault
        raise DeclarationError(f"{where}: does not run on uint8 RGB images: {type(exc).__name__}: {exc}") from None


def entry(declaration: Declaration) -> Augmentation:
    """The registry entry of a declared augmentation: its v2 transform, per image (no batch form)."""
    scaled = ", ".join(p for p, _ in declaration.scales)
    return Augmentation(
        name=declaration.name,
        summary=f"declared: v2.{declaration.transform}" + (f" (strength scales {scaled})" if scaled else " (a switch)"),
        ranges=lambda s, side: declaration.parameters(s),
        transform=lambda r, side: getattr(v2, declaration.transform)(**r),
        scalable=declaration.scalable,
    )


def catalog(declared: tuple[Declaration, ...] = ()) -> dict[str, Augmentation]:
    """The built-in entries in their order, then the declared ones in theirs."""
    return {**REGISTRY, **{d.name: entry(d) for d in declared}}

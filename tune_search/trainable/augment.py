"""The augmentation registry: the single truth that the search space, the transform
builder, the CLI listing and the exports all read.

Every entry maps a strength in [0, 1] to a real parameter range. Strength 0 (and "off")
is the identity: such a step is simply not added to the pipeline. Entries are listed in
the order they are applied: geometry first, then photometry, erasing last.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torchvision.transforms import v2

from tune_search.trainable import batched as B

Params = dict[str, torch.Tensor]  # one entry per image in every tensor


@dataclass(frozen=True, kw_only=True)
class Augmentation:
    name: str
    summary: str
    # (strength in (0, 1], image side) -> the real parameter ranges, by name: the one place
    # each entry's arithmetic is written; the v2 transform, the batch form's draws and the
    # --list-augmentations table all read it
    ranges: Callable[[float, int], dict[str, Any]]
    transform: Callable[[dict[str, Any], int], v2.Transform]  # (ranges, image side) -> v2 transform
    # The batch form. `draw`: (n images, height, width, ranges, **absorbed entries' ranges) ->
    # each image's random parameters. `apply`: (float batch of pixel values in [0, PIXEL_MAX],
    # parameters) -> batch, on the batch's device; may overwrite its input. None for both:
    # no batch form, the v2 transform runs image by image (a declared entry)
    draw: Callable[..., Params] | None = None
    apply: Callable[[torch.Tensor, Params], torch.Tensor] | None = None
    # entries that, switched on right after this one, its batch form applies in the same pass
    absorbs: tuple[str, ...] = ()
    scalable: bool = True  # False: a switch, the same transform at every strength above 0

    @property
    def batched(self) -> bool:
        return self.apply is not None

    def v2(self, strength: float, side: int) -> v2.Transform:
        """The v2 transform at this strength, for images of this side."""
        return self.transform(self.ranges(strength, side), side)

    def batch(self, x: torch.Tensor, strength: float) -> torch.Tensor:
        """Draw each image's parameters at this strength and apply them."""
        return self.apply(x, self.draw(len(x), x.shape[-2], x.shape[-1], self.ranges(strength, x.shape[-1])))


# the batch form works on the uint8 scale, in float: no pass to rescale at either end
PIXEL_MAX = 255.0
LISTED_SIDE = 64  # the image side the --list-augmentations table states size-dependent ranges at


# Ranges: one small function per entry, strength -> real range.


def _crop(s: float, side: int) -> dict:
    return {"area": (1 - 0.92 * s, 1.0), "aspect": ((3 / 4) ** s, (4 / 3) ** s)}


def _flip(s: float, side: int) -> dict:
    return {"p": 0.5 * s}


def _affine(s: float, side: int) -> dict:
    return {"degrees": 15 * s, "shift": 0.15 * s, "scale": (1 - 0.2 * s, 1 + 0.2 * s), "shear_degrees": 10 * s}


def _rotate(s: float, side: int) -> dict:
    return {"degrees": 90 * s}


def _blur(s: float, side: int) -> dict:
    # sigma uniform in [1.5 s, 3 s] px at 64 px, scaled with the image side: the strength sets
    # the radius of every draw (a range reaching down to ~0 would leave many images sharp)
    high = 3.0 * s * side / 64
    kernel = 2 * math.ceil(3 * high) + 1
    return {"sigma_px": (high / 2, high), "kernel_px": min(kernel, side if side % 2 else side - 1)}


def _sharpen(s: float, side: int) -> dict:
    return {"p": 0.5, "factor": 1 + 4 * s}


def _jitter(s: float, side: int) -> dict:
    return {"factor": (max(0.0, 1 - 0.8 * s), 1 + 0.8 * s)}


def _color(s: float, side: int) -> dict:
    return {"saturation": (max(0.0, 1 - s), 1 + s), "hue_turns": (-0.3 * s, 0.3 * s)}


def _grayscale(s: float, side: int) -> dict:
    return {"p": s}


def _erasing(s: float, side: int) -> dict:
    return {"p": 0.5, "area": (0.02 * s, 0.33 * s)}


# Batch draws: each image's own parameters from those ranges.


def _draw_crop(n: int, height: int, width: int, r: dict, hflip: dict | None = None, vflip: dict | None = None) -> Params:
    top, left, h, w = B.crop_boxes(n, height, width, r["area"], r["aspect"])
    flips = {name: B.chance(n, absorbed["p"] if absorbed else 0.0) for name, absorbed in (("hflip", hflip), ("vflip", vflip))}
    return {"top": top, "left": left, "h": h, "w": w, **flips}


def _draw_chance(n: int, height: int, width: int, r: dict) -> Params:
    return {"on": B.chance(n, r["p"])}


def _draw_affine(n: int, height: int, width: int, r: dict) -> Params:
    angle = B.uniform(n, -r["degrees"], r["degrees"])
    # v2 rounds the shift to whole pixels
    tx = B.uniform(n, -r["shift"] * width, r["shift"] * width).round()
    ty = B.uniform(n, -r["shift"] * height, r["shift"] * height).round()
    scale = B.uniform(n, *r["scale"])
    shear = B.uniform(n, -r["shear_degrees"], r["shear_degrees"])
    return {"grid": B.grid_matrices(B.inverse_affine(angle, tx, ty, scale, shear), height, width)}


def _draw_rotate(n: int, height: int, width: int, r: dict) -> Params:
    angle = B.uniform(n, -r["degrees"], r["degrees"])
    zero = torch.zeros(n)
    # v2's rotate turns counter-clockwise: the inverse matrix of -angle
    return {"grid": B.grid_matrices(B.inverse_affine(-angle, zero, zero, torch.ones(n), zero), height, width)}


def _draw_blur(n: int, height: int, width: int, r: dict) -> Params:
    return {"kernels": B.gaussian_kernels(B.uniform(n, *r["sigma_px"]), r["kernel_px"])}


def _draw_sharpen(n: int, height: int, width: int, r: dict) -> Params:
    return {"on": B.chance(n, r["p"]), "factor": torch.full((n,), r["factor"])}


def _draw_factor(n: int, height: int, width: int, r: dict) -> Params:
    return {"factor": B.uniform(n, *r["factor"])}


def _draw_color(n: int, height: int, width: int, r: dict) -> Params:
    sat, shift = B.uniform(n, *r["saturation"]), B.uniform(n, *r["hue_turns"])
    # ColorJitter applies its adjustments in a random order per call: per image here
    return {"saturation": sat, "hue": shift, "hue_first": B.chance(n, 0.5)}


def _draw_erasing(n: int, height: int, width: int, r: dict) -> Params:
    top, left, h, w, found = B.erase_boxes(n, height, width, r["area"])
    return {"top": top, "left": left, "h": h, "w": w, "on": found & B.chance(n, r["p"])}


def _apply_color(x: torch.Tensor, p: Params) -> torch.Tensor:
    sat, shift, hue_first = p["saturation"], p["hue"], p["hue_first"]
    x = B.only(x, hue_first, lambda im, i: B.saturation(B.hue(im, shift[i]), sat[i], PIXEL_MAX))
    return B.only(x, ~hue_first, lambda im, i: B.hue(B.saturation(im, sat[i], PIXEL_MAX), shift[i]))


def _apply_sharpen(x: torch.Tensor, p: Params) -> torch.Tensor:
    return B.only(x, p["on"], lambda im, _: B.sharpen(im, float(p["factor"][0]), PIXEL_MAX))


def _apply_gray(x: torch.Tensor, p: Params) -> torch.Tensor:
    return B.only(x, p["on"], lambda im, _: B.gray(im).expand_as(im))


def _flip_entry(name: str, axis: str, transform: type[v2.Transform], dim: int) -> Augmentation:
    return Augmentation(
        name=name,
        summary=f"{axis} flip: chance",
        ranges=_flip,
        transform=lambda r, side: transform(r["p"]),
        draw=_draw_chance,
        apply=lambda x, p: B.flip(x, p["on"], dim),
    )


def _jitter_entry(name: str, adjust: Callable[..., torch.Tensor]) -> Augmentation:
    """ColorJitter's `name` factor alone; `adjust` is its batch form."""
    return Augmentation(
        name=name,
        summary=f"{name} jitter",
        ranges=_jitter,
        transform=lambda r, side: v2.ColorJitter(**{name: r["factor"]}),
        draw=_draw_factor,
        apply=lambda x, p: adjust(x, p["factor"], PIXEL_MAX),
    )


_ENTRIES = (
    Augmentation(
        name="crop",
        summary="random resized crop: area fraction kept, aspect ratio",
        ranges=_crop,
        transform=lambda r, side: v2.RandomResizedCrop(side, scale=r["area"], ratio=r["aspect"], antialias=True),
        draw=_draw_crop,
        apply=lambda x, p: B.resized_crop(x, p["top"], p["left"], p["h"], p["w"], p["hflip"], p["vflip"]),
        absorbs=("hflip", "vflip"),
    ),
    _flip_entry("hflip", "horizontal", v2.RandomHorizontalFlip, dim=-1),
    _flip_entry("vflip", "vertical", v2.RandomVerticalFlip, dim=-2),
    Augmentation(
        name="affine",
        summary="random affine: ± degrees, ± shift (of the side), scale, ± shear",
        ranges=_affine,
        transform=lambda r, side: v2.RandomAffine(r["degrees"], (r["shift"],) * 2, r["scale"], r["shear_degrees"]),
        draw=_draw_affine,
        apply=lambda x, p: B.warp(x, p["grid"]),
    ),
    Augmentation(
        name="rotate",
        summary="random rotation: ± degrees",
        ranges=_rotate,
        transform=lambda r, side: v2.RandomRotation(r["degrees"]),
        draw=_draw_rotate,
        apply=lambda x, p: B.warp(x, p["grid"]),
    ),
    Augmentation(
        name="blur",
        summary="gaussian blur (sigma scales with the side)",
        ranges=_blur,
        transform=lambda r, side: v2.GaussianBlur(r["kernel_px"], sigma=r["sigma_px"]),
        draw=_draw_blur,
        apply=lambda x, p: B.blur(x, p["kernels"]),
    ),
    Augmentation(
        name="sharpen",
        summary="sharpness boost: chance, factor",
        ranges=_sharpen,
        transform=lambda r, side: v2.RandomAdjustSharpness(r["factor"], p=r["p"]),
        draw=_draw_sharpen,
        apply=_apply_sharpen,
    ),
    _jitter_entry("contrast", B.contrast),
    _jitter_entry("brightness", B.brightness),
    Augmentation(
        name="color",
        summary="saturation and hue jitter, in random order",
        ranges=_color,
        transform=lambda r, side: v2.ColorJitter(saturation=r["saturation"], hue=r["hue_turns"]),
        draw=_draw_color,
        apply=_apply_color,
    ),
    Augmentation(
        name="grayscale",
        summary="convert to grayscale: chance",
        ranges=_grayscale,
        transform=lambda r, side: v2.RandomGrayscale(p=r["p"]),
        draw=_draw_chance,
        apply=_apply_gray,
    ),
    Augmentation(
        name="erasing",
        summary="erase a random rectangle to black: chance, area fraction",
        ranges=_erasing,
        transform=lambda r, side: v2.RandomErasing(p=r["p"], scale=r["area"], value=0),
        draw=_draw_erasing,
        apply=lambda x, p: B.erase(x, p["top"], p["left"], p["h"], p["w"], p["on"]),
    ),
)

REGISTRY: dict[str, Augmentation] = {a.name: a for a in _ENTRIES}
NAMES: tuple[str, ...] = tuple(REGISTRY)


def switch_key(name: str) -> str:
    """A trial config's on/off key for an augmentation, and its column in the tables."""
    return f"aug_{name}"


def strength_key(name: str) -> str:
    """A trial config's strength key for an augmentation (present only when it is on)."""
    return f"aug_{name}_strength"


def is_augmentation_key(key: str) -> bool:
    """Whether a config key or table column is an augmentation's switch or strength."""
    return key.startswith(switch_key(""))


def names_in(keys) -> tuple[str, ...]:
    """The augmentations a flat config's keys or a table's columns name: the built-ins in
    registry order, then any declared ones in the order they come."""
    named = [k.removeprefix(switch_key("")) for k in keys if isinstance(k, str) and is_augmentation_key(k) and not k.endswith("_strength")]
    return (*NAMES, *(n for n in named if n not in REGISTRY))


def switched_on(value) -> bool:
    """A switch's value from a config or a table cell: a missing one (None, NaN, NA) is off."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    try:
        return bool(value)
    except TypeError:  # pandas' NA refuses to be a bool
        return False


def strengths_in(config: Mapping) -> dict[str, float]:
    """The switched-on augmentations of a flat trial config or a table row: built-ins in
    registry order, then declared ones."""
    return {n: float(config[strength_key(n)]) for n in names_in(config.keys()) if switched_on(config.get(switch_key(n)))}


def unknown_names(names, known=REGISTRY) -> list[str]:
    return [n for n in names if n not in known]


def _switched_on(strengths: Mapping[str, float], entries: Mapping[str, Augmentation]) -> list[tuple[Augmentation, float]]:
    unknown = [name for name, s in strengths.items() if s > 0.0 and name not in entries]
    if unknown:  # a declared entry's run re-trained without its declaration: never silently skipped
        raise ValueError(f"augmentation(s) {', '.join(unknown)} switched on but not declared: give the space file that declares them")
    return [(entry, min(float(strengths[name]), 1.0)) for name, entry in entries.items() if strengths.get(name, 0.0) > 0.0]


class BatchPipeline:
    """The switched-on augmentations in registry order, each applied to the whole batch at
    once with per-image parameters, in torch operations on the batch's device. An entry that
    another absorbs (a flip right after the crop) runs inside that one's pass."""

    def __init__(self, steps: list[tuple[Augmentation, float]], image_size: int):
        self.steps: list[tuple[Augmentation, float, dict[str, float]]] = []
        self.per_image: dict[str, v2.Transform] = {}  # entries without a batch form: their v2 transform, built once
        for entry, strength in steps:
            if self.steps and entry.name in self.steps[-1][0].absorbs:
                self.steps[-1][2][entry.name] = strength
            else:
                self.steps.append((entry, strength, {}))
            if not entry.batched:
                self.per_image[entry.name] = entry.v2(strength, image_size)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images in, float pixel values (0-255, channels-last: the model's input) out.
        Not rounded back to uint8: the model takes floats anyway, and the round trip cost a
        tenth of the pipeline's time (v2 rounds after every step; here nothing rounds)."""
        n, _, height, width = images.shape
        x = images.float()
        for entry, strength, absorbed in self.steps:
            if not entry.batched:
                x = _image_by_image(x, self.per_image[entry.name])
                continue
            inner = {name: REGISTRY[name].ranges(s, width) for name, s in absorbed.items()}
            x = entry.apply(x, entry.draw(n, height, width, entry.ranges(strength, width), **inner))
        return x.contiguous(memory_format=torch.channels_last)


def _image_by_image(x: torch.Tensor, transform: v2.Transform) -> torch.Tensor:
    """A v2 transform on each image of a float batch, as uint8 images (what v2's augmentations
    take), on the batch's device."""
    images = x.round_().clamp_(0, PIXEL_MAX).to(torch.uint8)
    return torch.stack([transform(image) for image in images]).float()


class PerImagePipeline:
    """The same augmentations as v2 transforms, called once per image: the reference form."""

    def __init__(self, steps: list[tuple[Augmentation, float]], image_size: int):
        self.compose = v2.Compose([entry.v2(strength, image_size) for entry, strength in steps])

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.compose(image) for image in images])


Pipeline = BatchPipeline | PerImagePipeline


def build_pipeline(strengths: Mapping[str, float], image_size: int, batched: bool = True, entries: Mapping[str, Augmentation] = REGISTRY) -> Pipeline | None:
    """The switched-on augmentations in `entries`' order (the built-ins, or a run's catalog with
    its declared entries); None when nothing is on.

    `strengths` maps names to strengths; names absent, or at strength 0, add no step.
    Both forms draw each image's own parameters from the same ranges; `batched` picks the
    batch form, which runs every step for the whole batch at once (a declared entry, which has
    none, image by image inside it).
    """
    steps = _switched_on(strengths, entries)
    if not steps:
        return None
    return BatchPipeline(steps, image_size) if batched else PerImagePipeline(steps, image_size)


def _number(v: float) -> str:
    return f"{v:.3g}"


def full_strength(entry: Augmentation, side: int = LISTED_SIDE) -> str:
    """An entry's ranges at strength 1, in words: `name low to high` or `name value`."""
    parts = []
    for key, value in entry.ranges(1.0, side).items():
        if isinstance(value, tuple):
            shown = f"{_number(value[0])} to {_number(value[1])}"
        elif isinstance(value, list):
            shown = "[" + ", ".join(_number(v) if isinstance(v, (int, float)) else str(v) for v in value) + "]"
        else:
            shown = _number(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)
        parts.append(f"{key.replace('_', ' ')} {shown}")
    return ", ".join(parts)


def describe(entries: Mapping[str, Augmentation] = REGISTRY) -> str:
    """The registry (or a run's catalog) as a plain-text table, for `tune-search --list-augmentations`."""
    rows = [("name", "what it does", f"strength 1 means (at {LISTED_SIDE} px)")]
    rows += [(a.name, a.summary, full_strength(a)) for a in entries.values()]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)

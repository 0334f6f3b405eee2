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

import torch
from torchvision.transforms import v2

from trainable import batched as B
from trainable import native


Params = dict[str, torch.Tensor]  # one entry per image in every tensor


@dataclass(frozen=True)
class Augmentation:
    name: str
    summary: str
    at_full_strength: str  # the real range that strength 1 maps to; it scales linearly
    build: Callable[[float, int], v2.Transform]  # (strength in (0, 1], image side) -> v2 transform
    # The batch form, in three parts. `draw`: (n images, height, width, strength, **absorbed
    # strengths) -> each image's random parameters. `apply`: (float batch of pixel values in
    # [0, PIXEL_MAX], parameters) -> batch, in torch operations, on the batch's device; may
    # overwrite its input. `pack`: the parameters as (n, k) float rows for the C kernel's step
    # `kernel_op`.
    draw: Callable[..., Params]
    apply: Callable[[torch.Tensor, Params], torch.Tensor]
    kernel_op: native.Op
    pack: Callable[[Params], torch.Tensor]
    # entries that, switched on right after this one, its batch form applies in the same pass
    absorbs: tuple[str, ...] = ()

    def batch(self, x: torch.Tensor, strength: float, **absorbed: float) -> torch.Tensor:
        """Draw each image's parameters and apply them in torch operations."""
        return self.apply(x, self.draw(len(x), x.shape[-2], x.shape[-1], strength, **absorbed))


# the batch form works on the uint8 scale, in float: no pass to rescale at either end
PIXEL_MAX = 255.0


def _odd_kernel(sigma: float, side: int) -> int:
    k = 2 * math.ceil(3 * sigma) + 1
    return min(k, side if side % 2 else side - 1)


def _rows(*columns: torch.Tensor) -> torch.Tensor:
    return torch.stack([c.to(torch.float32) for c in columns], dim=1)


# Each entry's ranges are written once and read by both forms: the v2 transform and the batch form.


def _crop_ranges(s: float) -> dict:
    # area fraction in [1 - 0.92 s, 1]; aspect ratio in [(3/4)^s, (4/3)^s]
    return {"scale": (1 - 0.92 * s, 1.0), "ratio": ((3 / 4) ** s, (4 / 3) ** s)}


def _flip_chance(n: int, s: float) -> torch.Tensor:
    return B.chance(n, 0.5 * s)


def _draw_crop(n: int, height: int, width: int, s: float, hflip: float = 0.0, vflip: float = 0.0) -> Params:
    top, left, h, w = B.crop_boxes(n, height, width, **_crop_ranges(s))
    return {"top": top, "left": left, "h": h, "w": w, "hflip": _flip_chance(n, hflip), "vflip": _flip_chance(n, vflip)}


def _blur_sigma(s: float, side: int) -> tuple[float, float, int]:
    # sigma uniform in [1.5 s, 3 s] px at 64 px, scaled with the image side: the strength sets
    # the radius of every draw (a range reaching down to ~0 would leave many images sharp)
    hi = 3.0 * s * side / 64
    return hi / 2, hi, _odd_kernel(hi, side)


def _blur(s: float, side: int) -> v2.Transform:
    lo, hi, k = _blur_sigma(s, side)
    return v2.GaussianBlur(k, sigma=(lo, hi))


def _draw_blur(n: int, height: int, width: int, s: float) -> Params:
    lo, hi, k = _blur_sigma(s, width)
    return {"kernels": B.gaussian_kernels(B.uniform(n, lo, hi), k)}


def _affine_ranges(s: float) -> dict:
    return {"degrees": 15 * s, "translate": 0.15 * s, "scale": (1 - 0.2 * s, 1 + 0.2 * s), "shear": 10 * s}


def _affine(s: float, side: int) -> v2.Transform:
    r = _affine_ranges(s)
    return v2.RandomAffine(r["degrees"], (r["translate"],) * 2, r["scale"], r["shear"])


def _draw_affine(n: int, height: int, width: int, s: float) -> Params:
    r = _affine_ranges(s)
    angle = B.uniform(n, -r["degrees"], r["degrees"])
    # v2 rounds the shift to whole pixels
    tx = B.uniform(n, -r["translate"] * width, r["translate"] * width).round()
    ty = B.uniform(n, -r["translate"] * height, r["translate"] * height).round()
    scale = B.uniform(n, *r["scale"])
    shear = B.uniform(n, -r["shear"], r["shear"])
    return {"grid": B.grid_matrices(B.inverse_affine(angle, tx, ty, scale, shear), height, width)}


def _draw_rotate(n: int, height: int, width: int, s: float) -> Params:
    angle = B.uniform(n, -90 * s, 90 * s)
    zero = torch.zeros(n)
    # v2's rotate turns counter-clockwise: the inverse matrix of -angle
    return {"grid": B.grid_matrices(B.inverse_affine(-angle, zero, zero, torch.ones(n), zero), height, width)}


def _jitter(spread: float) -> tuple[float, float]:
    return max(0.0, 1 - spread), 1 + spread


def _draw_color(n: int, height: int, width: int, s: float) -> Params:
    sat, shift = B.uniform(n, *_jitter(s)), B.uniform(n, -0.3 * s, 0.3 * s)
    # ColorJitter applies its adjustments in a random order per call: per image here
    return {"saturation": sat, "hue": shift, "hue_first": B.chance(n, 0.5)}


def _color(x: torch.Tensor, p: Params) -> torch.Tensor:
    sat, shift, hue_first = p["saturation"], p["hue"], p["hue_first"]
    x = B.only(x, hue_first, lambda im, i: B.saturation(B.hue(im, shift[i]), sat[i], PIXEL_MAX))
    return B.only(x, ~hue_first, lambda im, i: B.hue(B.saturation(im, sat[i], PIXEL_MAX), shift[i]))


def _erasing(s: float, side: int) -> v2.Transform:
    return v2.RandomErasing(p=0.5, scale=(0.02 * s, 0.33 * s), value=0)


def _draw_erasing(n: int, height: int, width: int, s: float) -> Params:
    top, left, h, w, found = B.erase_boxes(n, height, width, (0.02 * s, 0.33 * s))
    return {"top": top, "left": left, "h": h, "w": w, "on": found & B.chance(n, 0.5)}


def _draw_chance(p: Callable[[float], float]) -> Callable[..., Params]:
    return lambda n, height, width, s: {"on": B.chance(n, p(s))}


def _draw_factor(spread: Callable[[float], float]) -> Callable[..., Params]:
    return lambda n, height, width, s: {"factor": B.uniform(n, *_jitter(spread(s)))}


def _on(p: Params) -> torch.Tensor:
    return _rows(p["on"])


def _factor(p: Params) -> torch.Tensor:
    return _rows(p["factor"])


def _grid(p: Params) -> torch.Tensor:
    return p["grid"].reshape(-1, 6)


def _box(p: Params) -> torch.Tensor:
    return _rows(p["top"], p["left"], p["h"], p["w"])


_ENTRIES = (
    Augmentation(
        "crop",
        "random resized crop",
        "area 8-100 %, aspect 3/4-4/3",
        lambda s, side: v2.RandomResizedCrop(side, antialias=True, **_crop_ranges(s)),
        _draw_crop,
        lambda x, p: B.resized_crop(x, p["top"], p["left"], p["h"], p["w"], p["hflip"], p["vflip"]),
        native.Op.CROP,
        lambda p: torch.cat((_box(p), _rows(p["hflip"], p["vflip"])), dim=1),
        absorbs=("hflip", "vflip"),
    ),
    Augmentation(
        "hflip",
        "horizontal flip",
        "p = 0.5",
        lambda s, side: v2.RandomHorizontalFlip(0.5 * s),
        _draw_chance(lambda s: 0.5 * s),
        lambda x, p: B.flip(x, p["on"], -1),
        native.Op.HFLIP,
        _on,
    ),
    Augmentation(
        "vflip",
        "vertical flip",
        "p = 0.5",
        lambda s, side: v2.RandomVerticalFlip(0.5 * s),
        _draw_chance(lambda s: 0.5 * s),
        lambda x, p: B.flip(x, p["on"], -2),
        native.Op.VFLIP,
        _on,
    ),
    Augmentation(
        "affine",
        "rotate, translate, scale, shear",
        "±15°, ±15 % shift, 0.8-1.2x, ±10° shear",
        _affine,
        _draw_affine,
        lambda x, p: B.warp(x, p["grid"]),
        native.Op.WARP,
        _grid,
    ),
    Augmentation(
        "rotate",
        "rotation",
        "±90°",
        lambda s, side: v2.RandomRotation(90 * s),
        _draw_rotate,
        lambda x, p: B.warp(x, p["grid"]),
        native.Op.WARP,
        _grid,
    ),
    Augmentation(
        "blur",
        "gaussian blur",
        "sigma 1.5-3 px at 64 px (scales with size)",
        _blur,
        _draw_blur,
        lambda x, p: B.blur(x, p["kernels"]),
        native.Op.BLUR,
        lambda p: p["kernels"],
    ),
    Augmentation(
        "sharpen",
        "sharpness boost (half the images)",
        "sharpness factor 5",
        lambda s, side: v2.RandomAdjustSharpness(1 + 4 * s, p=0.5),
        lambda n, height, width, s: {"on": B.chance(n, 0.5), "factor": torch.full((n,), 1 + 4 * s)},
        lambda x, p: B.only(x, p["on"], lambda im, i: B.sharpen(im, float(p["factor"][0]), PIXEL_MAX)),
        native.Op.SHARPEN,
        lambda p: _rows(p["on"], p["factor"]),
    ),
    Augmentation(
        "contrast",
        "contrast jitter",
        "factor 0.2-1.8",
        lambda s, side: v2.ColorJitter(contrast=0.8 * s),
        _draw_factor(lambda s: 0.8 * s),
        lambda x, p: B.contrast(x, p["factor"], PIXEL_MAX),
        native.Op.CONTRAST,
        _factor,
    ),
    Augmentation(
        "brightness",
        "brightness jitter",
        "factor 0.2-1.8",
        lambda s, side: v2.ColorJitter(brightness=0.8 * s),
        _draw_factor(lambda s: 0.8 * s),
        lambda x, p: B.brightness(x, p["factor"], PIXEL_MAX),
        native.Op.BRIGHTNESS,
        _factor,
    ),
    Augmentation(
        "color",
        "hue and saturation jitter",
        "hue ±0.3 turn, saturation 0-2x",
        lambda s, side: v2.ColorJitter(saturation=s, hue=0.3 * s),
        _draw_color,
        _color,
        native.Op.COLOR,
        lambda p: _rows(p["saturation"], p["hue"], p["hue_first"]),
    ),
    Augmentation(
        "grayscale",
        "convert to grayscale",
        "p = 1",
        lambda s, side: v2.RandomGrayscale(p=s),
        _draw_chance(lambda s: s),
        lambda x, p: B.only(x, p["on"], lambda im, _: B.gray(im).expand_as(im)),
        native.Op.GRAY,
        _on,
    ),
    Augmentation(
        "erasing",
        "erase a random rectangle (half the images)",
        "0.02-33 % of the area",
        _erasing,
        _draw_erasing,
        lambda x, p: B.erase(x, p["top"], p["left"], p["h"], p["w"], p["on"]),
        native.Op.ERASE,
        lambda p: torch.cat((_box(p), _rows(p["on"])), dim=1),
    ),
)

REGISTRY: dict[str, Augmentation] = {a.name: a for a in _ENTRIES}
NAMES: tuple[str, ...] = tuple(REGISTRY)


def unknown_names(names) -> list[str]:
    return [n for n in names if n not in REGISTRY]


def _switched_on(strengths: Mapping[str, float]) -> list[tuple[Augmentation, float]]:
    return [(entry, min(float(strengths[name]), 1.0)) for name, entry in REGISTRY.items() if strengths.get(name, 0.0) > 0.0]


class BatchPipeline:
    """The switched-on augmentations in registry order, each applied to the whole batch at
    once with per-image parameters, on the batch's device. An entry that another absorbs
    (a flip right after the crop) runs inside that one's pass. On the CPU the steps run in
    the C kernel (`trainable.native`) when `kernel` is set and it could be built, else (and
    on GPUs) as torch operations; both apply the same draws."""

    def __init__(self, steps: list[tuple[Augmentation, float]], kernel: bool = True):
        self.kernel = kernel
        self.steps: list[tuple[Augmentation, float, dict[str, float]]] = []
        for entry, strength in steps:
            if self.steps and entry.name in self.steps[-1][0].absorbs:
                self.steps[-1][2][entry.name] = strength
            else:
                self.steps.append((entry, strength, {}))

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images in, float pixel values (0-255, channels-last: the model's input) out.
        Not rounded back to uint8: the model takes floats anyway, and the round trip cost a
        tenth of the pipeline's time (v2 rounds after every step; here nothing rounds)."""
        n, channels, height, width = images.shape
        drawn = [(entry, entry.draw(n, height, width, s, **absorbed)) for entry, s, absorbed in self.steps]
        if self.kernel and images.device.type == "cpu" and channels == 3 and native.available():
            return native.augment(images, [(entry.kernel_op, entry.pack(params)) for entry, params in drawn])
        x = images.float()
        for entry, params in drawn:
            x = entry.apply(x, params)
        return x.contiguous(memory_format=torch.channels_last)


class PerImagePipeline:
    """The same augmentations as v2 transforms, called once per image: the reference form."""

    def __init__(self, steps: list[tuple[Augmentation, float]], image_size: int):
        self.compose = v2.Compose([entry.build(strength, image_size) for entry, strength in steps])

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.compose(image) for image in images])


Pipeline = BatchPipeline | PerImagePipeline


def build_pipeline(
    strengths: Mapping[str, float], image_size: int, batched: bool = True, kernel: bool = True
) -> Pipeline | None:
    """The switched-on augmentations in registry order; None when nothing is on.

    `strengths` maps names to strengths; names absent, or at strength 0, add no step.
    Both forms draw each image's own parameters from the same ranges; `batched` picks the
    batch form, which runs every step for the whole batch at once, and `kernel` lets it run
    them in the C kernel on CPUs.
    """
    steps = _switched_on(strengths)
    if not steps:
        return None
    return BatchPipeline(steps, kernel) if batched else PerImagePipeline(steps, image_size)


def augment_batch(images: torch.Tensor, pipeline: Pipeline | None) -> torch.Tensor:
    """Augment a uint8 batch (B, C, H, W), each image with its own random parameters. Pixel
    values stay on the 0-255 scale: uint8 from the per-image form, float from the batch form."""
    return images if pipeline is None else pipeline(images)


def describe() -> str:
    """The registry as a plain-text table, for `tune-search --list-augmentations`."""
    rows = [("name", "what it does", "strength 1 means (0 = identity, linear between)")]
    rows += [(a.name, a.summary, a.at_full_strength) for a in _ENTRIES]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)

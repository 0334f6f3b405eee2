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


@dataclass(frozen=True)
class Augmentation:
    name: str
    summary: str
    at_full_strength: str  # the real range that strength 1 maps to; it scales linearly
    build: Callable[[float, int], v2.Transform]  # (strength in (0, 1], image side) -> v2 transform
    # (float batch of pixel values in [0, PIXEL_MAX], strength, **absorbed strengths) -> batch;
    # may overwrite its input
    batch: Callable[..., torch.Tensor]
    # entries that, switched on right after this one, its batch form applies in the same pass
    absorbs: tuple[str, ...] = ()


# the batch form works on the uint8 scale, in float: no pass to rescale at either end
PIXEL_MAX = 255.0


def _odd_kernel(sigma: float, side: int) -> int:
    k = 2 * math.ceil(3 * sigma) + 1
    return min(k, side if side % 2 else side - 1)


# Each entry's ranges are written once and read by both forms: the v2 transform and the batch form.


def _crop_ranges(s: float) -> dict:
    # area fraction in [1 - 0.92 s, 1]; aspect ratio in [(3/4)^s, (4/3)^s]
    return {"scale": (1 - 0.92 * s, 1.0), "ratio": ((3 / 4) ** s, (4 / 3) ** s)}


def _flip_chance(n: int, s: float) -> torch.Tensor:
    return B.chance(n, 0.5 * s)


def _crop_batch(x: torch.Tensor, s: float, hflip: float = 0.0, vflip: float = 0.0) -> torch.Tensor:
    boxes = B.crop_boxes(len(x), x.shape[-2], x.shape[-1], **_crop_ranges(s))
    return B.resized_crop(x, *boxes, _flip_chance(len(x), hflip), _flip_chance(len(x), vflip))


def _blur_sigma(s: float, side: int) -> tuple[float, float, int]:
    # sigma uniform in [1.5 s, 3 s] px at 64 px, scaled with the image side: the strength sets
    # the radius of every draw (a range reaching down to ~0 would leave many images sharp)
    hi = 3.0 * s * side / 64
    return hi / 2, hi, _odd_kernel(hi, side)


def _blur(s: float, side: int) -> v2.Transform:
    lo, hi, k = _blur_sigma(s, side)
    return v2.GaussianBlur(k, sigma=(lo, hi))


def _blur_batch(x: torch.Tensor, s: float) -> torch.Tensor:
    lo, hi, k = _blur_sigma(s, x.shape[-1])
    return B.blur(x, B.gaussian_kernels(B.uniform(len(x), lo, hi), k))


def _affine_ranges(s: float) -> dict:
    return {"degrees": 15 * s, "translate": 0.15 * s, "scale": (1 - 0.2 * s, 1 + 0.2 * s), "shear": 10 * s}


def _affine(s: float, side: int) -> v2.Transform:
    r = _affine_ranges(s)
    return v2.RandomAffine(r["degrees"], (r["translate"],) * 2, r["scale"], r["shear"])


def _affine_batch(x: torch.Tensor, s: float) -> torch.Tensor:
    n, (height, width), r = len(x), x.shape[-2:], _affine_ranges(s)
    angle = B.uniform(n, -r["degrees"], r["degrees"])
    # v2 rounds the shift to whole pixels
    tx = B.uniform(n, -r["translate"] * width, r["translate"] * width).round()
    ty = B.uniform(n, -r["translate"] * height, r["translate"] * height).round()
    scale = B.uniform(n, *r["scale"])
    shear = B.uniform(n, -r["shear"], r["shear"])
    return B.warp(x, B.inverse_affine(angle, tx, ty, scale, shear))


def _rotate_batch(x: torch.Tensor, s: float) -> torch.Tensor:
    n = len(x)
    angle = B.uniform(n, -90 * s, 90 * s)
    zero = torch.zeros(n)
    # v2's rotate turns counter-clockwise: the inverse matrix of -angle
    return B.warp(x, B.inverse_affine(-angle, zero, zero, torch.ones(n), zero))


def _jitter(spread: float) -> tuple[float, float]:
    return max(0.0, 1 - spread), 1 + spread


def _color_batch(x: torch.Tensor, s: float) -> torch.Tensor:
    n = len(x)
    sat, shift = B.uniform(n, *_jitter(s)), B.uniform(n, -0.3 * s, 0.3 * s)
    # ColorJitter applies its adjustments in a random order per call: per image here
    hue_first = B.chance(n, 0.5)
    x = B.only(x, hue_first, lambda im, i: B.saturation(B.hue(im, shift[i]), sat[i], PIXEL_MAX))
    return B.only(x, ~hue_first, lambda im, i: B.hue(B.saturation(im, sat[i], PIXEL_MAX), shift[i]))


def _sharpen_batch(x: torch.Tensor, s: float) -> torch.Tensor:
    return B.only(x, B.chance(len(x), 0.5), lambda im, i: B.sharpen(im, 1 + 4 * s, PIXEL_MAX))


def _erasing(s: float, side: int) -> v2.Transform:
    return v2.RandomErasing(p=0.5, scale=(0.02 * s, 0.33 * s), value=0)


def _erasing_batch(x: torch.Tensor, s: float) -> torch.Tensor:
    *box, found = B.erase_boxes(len(x), x.shape[-2], x.shape[-1], (0.02 * s, 0.33 * s))
    return B.erase(x, *box, found & B.chance(len(x), 0.5))


_ENTRIES = (
    Augmentation(
        "crop",
        "random resized crop",
        "area 8-100 %, aspect 3/4-4/3",
        lambda s, side: v2.RandomResizedCrop(side, antialias=True, **_crop_ranges(s)),
        _crop_batch,
        absorbs=("hflip", "vflip"),
    ),
    Augmentation(
        "hflip",
        "horizontal flip",
        "p = 0.5",
        lambda s, side: v2.RandomHorizontalFlip(0.5 * s),
        lambda x, s: B.flip(x, _flip_chance(len(x), s), -1),
    ),
    Augmentation(
        "vflip",
        "vertical flip",
        "p = 0.5",
        lambda s, side: v2.RandomVerticalFlip(0.5 * s),
        lambda x, s: B.flip(x, _flip_chance(len(x), s), -2),
    ),
    Augmentation(
        "affine", "rotate, translate, scale, shear", "±15°, ±15 % shift, 0.8-1.2x, ±10° shear", _affine, _affine_batch
    ),
    Augmentation("rotate", "rotation", "±90°", lambda s, side: v2.RandomRotation(90 * s), _rotate_batch),
    Augmentation("blur", "gaussian blur", "sigma 1.5-3 px at 64 px (scales with size)", _blur, _blur_batch),
    Augmentation(
        "sharpen",
        "sharpness boost (half the images)",
        "sharpness factor 5",
        lambda s, side: v2.RandomAdjustSharpness(1 + 4 * s, p=0.5),
        _sharpen_batch,
    ),
    Augmentation(
        "contrast",
        "contrast jitter",
        "factor 0.2-1.8",
        lambda s, side: v2.ColorJitter(contrast=0.8 * s),
        lambda x, s: B.contrast(x, B.uniform(len(x), *_jitter(0.8 * s)), PIXEL_MAX),
    ),
    Augmentation(
        "brightness",
        "brightness jitter",
        "factor 0.2-1.8",
        lambda s, side: v2.ColorJitter(brightness=0.8 * s),
        lambda x, s: B.brightness(x, B.uniform(len(x), *_jitter(0.8 * s)), PIXEL_MAX),
    ),
    Augmentation(
        "color",
        "hue and saturation jitter",
        "hue ±0.3 turn, saturation 0-2x",
        lambda s, side: v2.ColorJitter(saturation=s, hue=0.3 * s),
        _color_batch,
    ),
    Augmentation(
        "grayscale",
        "convert to grayscale",
        "p = 1",
        lambda s, side: v2.RandomGrayscale(p=s),
        lambda x, s: B.only(x, B.chance(len(x), s), lambda im, _: B.gray(im).expand_as(im)),
    ),
    Augmentation(
        "erasing", "erase a random rectangle (half the images)", "0.02-33 % of the area", _erasing, _erasing_batch
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
    (a flip right after the crop) runs inside that one's pass."""

    def __init__(self, steps: list[tuple[Augmentation, float]]):
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
        x = images.float()
        for entry, strength, absorbed in self.steps:
            x = entry.batch(x, strength, **absorbed)
        return x.contiguous(memory_format=torch.channels_last)


class PerImagePipeline:
    """The same augmentations as v2 transforms, called once per image: the reference form."""

    def __init__(self, steps: list[tuple[Augmentation, float]], image_size: int):
        self.compose = v2.Compose([entry.build(strength, image_size) for entry, strength in steps])

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.compose(image) for image in images])


Pipeline = BatchPipeline | PerImagePipeline


def build_pipeline(strengths: Mapping[str, float], image_size: int, batched: bool = True) -> Pipeline | None:
    """The switched-on augmentations in registry order; None when nothing is on.

    `strengths` maps names to strengths; names absent, or at strength 0, add no step.
    Both forms draw each image's own parameters from the same ranges; `batched` picks the
    batch form, which runs one tensor operation per step for the whole batch.
    """
    steps = _switched_on(strengths)
    if not steps:
        return None
    return BatchPipeline(steps) if batched else PerImagePipeline(steps, image_size)


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

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


@dataclass(frozen=True)
class Augmentation:
    name: str
    summary: str
    at_full_strength: str  # the real range that strength 1 maps to; it scales linearly
    build: Callable[[float, int], v2.Transform]  # (strength in (0, 1], image side) -> transform


def _odd_kernel(sigma: float, side: int) -> int:
    k = 2 * math.ceil(3 * sigma) + 1
    return min(k, side if side % 2 else side - 1)


def _crop(s: float, side: int) -> v2.Transform:
    # area fraction in [1 - 0.92 s, 1]; aspect ratio in [(3/4)^s, (4/3)^s]
    return v2.RandomResizedCrop(
        side, scale=(1 - 0.92 * s, 1.0), ratio=((3 / 4) ** s, (4 / 3) ** s), antialias=True
    )


def _blur(s: float, side: int) -> v2.Transform:
    # sigma uniform in [1.5 s, 3 s] px at 64 px, scaled with the image side: the strength sets
    # the radius of every draw (a range reaching down to ~0 would leave many images sharp)
    hi = 3.0 * s * side / 64
    return v2.GaussianBlur(_odd_kernel(hi, side), sigma=(hi / 2, hi))


def _affine(s: float, side: int) -> v2.Transform:
    return v2.RandomAffine(
        degrees=15 * s, translate=(0.15 * s, 0.15 * s), scale=(1 - 0.2 * s, 1 + 0.2 * s), shear=10 * s
    )


def _erasing(s: float, side: int) -> v2.Transform:
    return v2.RandomErasing(p=0.5, scale=(0.02 * s, 0.33 * s), value=0)


_ENTRIES = (
    Augmentation("crop", "random resized crop", "area 8-100 %, aspect 3/4-4/3", _crop),
    Augmentation("hflip", "horizontal flip", "p = 0.5", lambda s, side: v2.RandomHorizontalFlip(0.5 * s)),
    Augmentation("vflip", "vertical flip", "p = 0.5", lambda s, side: v2.RandomVerticalFlip(0.5 * s)),
    Augmentation(
        "affine", "rotate, translate, scale, shear", "±15°, ±15 % shift, 0.8-1.2x, ±10° shear", _affine
    ),
    Augmentation("rotate", "rotation", "±90°", lambda s, side: v2.RandomRotation(90 * s)),
    Augmentation("blur", "gaussian blur", "sigma 1.5-3 px at 64 px (scales with size)", _blur),
    Augmentation(
        "sharpen",
        "sharpness boost (half the images)",
        "sharpness factor 5",
        lambda s, side: v2.RandomAdjustSharpness(1 + 4 * s, p=0.5),
    ),
    Augmentation("contrast", "contrast jitter", "factor 0.2-1.8", lambda s, side: v2.ColorJitter(contrast=0.8 * s)),
    Augmentation(
        "brightness", "brightness jitter", "factor 0.2-1.8", lambda s, side: v2.ColorJitter(brightness=0.8 * s)
    ),
    Augmentation(
        "color",
        "hue and saturation jitter",
        "hue ±0.3 turn, saturation 0-2x",
        lambda s, side: v2.ColorJitter(saturation=s, hue=0.3 * s),
    ),
    Augmentation("grayscale", "convert to grayscale", "p = 1", lambda s, side: v2.RandomGrayscale(p=s)),
    Augmentation("erasing", "erase a random rectangle (half the images)", "0.02-33 % of the area", _erasing),
)

REGISTRY: dict[str, Augmentation] = {a.name: a for a in _ENTRIES}
NAMES: tuple[str, ...] = tuple(REGISTRY)


def unknown_names(names) -> list[str]:
    return [n for n in names if n not in REGISTRY]


def build_pipeline(strengths: Mapping[str, float], image_size: int) -> v2.Transform | None:
    """One Compose of the switched-on augmentations in registry order; None when nothing is on.

    `strengths` maps names to strengths; names absent, or at strength 0, add no step.
    """
    steps = [
        entry.build(min(float(strengths[name]), 1.0), image_size)
        for name, entry in REGISTRY.items()
        if strengths.get(name, 0.0) > 0.0
    ]
    return v2.Compose(steps) if steps else None


def augment_batch(images: torch.Tensor, pipeline: v2.Transform | None) -> torch.Tensor:
    """Augment a uint8 batch (B, C, H, W), each image with its own random parameters."""
    if pipeline is None:
        return images
    return torch.stack([pipeline(image) for image in images])


def describe() -> str:
    """The registry as a plain-text table, for `tune-search --list-augmentations`."""
    rows = [("name", "what it does", "strength 1 means (0 = identity, linear between)")]
    rows += [(a.name, a.summary, a.at_full_strength) for a in _ENTRIES]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)

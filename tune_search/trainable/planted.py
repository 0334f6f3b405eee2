"""A synthetic data set with planted augmentation harms (`--data planted`).

Six classes in three pairs, each pair told apart by one factor that some augmentations
destroy:

- `L` / `J`: a glyph and its mirror image (any colour, upright or upside down): hflip turns one
  into the other, and so does vflip (a mirror image turned half round).
- `red` / `orange`: the same disk in two hues 40 degrees apart: hue jitter (`color`) moves one
  onto the other, `grayscale` removes hue altogether.
- `checker` / `flat`: a square with a one-pixel checkerboard or filled with its mean colour:
  `blur` erases the difference.

Every image also varies in the ways `brightness` and `contrast` imitate (a brightness and a
contrast factor of 0.2-1.8, what they draw at full strength), and in position and background noise, so those two are
harmless here.

A second set plants help instead (`--data planted-helps`, `generate_helps`): four glyphs told
apart by shape, none the mirror image of another; the training images show each glyph as drawn
and at one brightness, the validation images mirror every glyph left-right (a camera that
mirrors) and scale its brightness by 0.3-1.7. hflip and brightness cover what the training
images lack. Every glyph, not half of them: half gave hflip 6-8 points, about the width of a
5-seed confirmation's interval at this noise, so the planted help was found in some runs only.

A third tells classes apart by polarity (`--data planted-polarity`, `generate_polarity`): a
ring or a cross, drawn light on a dark ground or dark on a light one, four classes. Inverting
an image (v2's RandomInvert, declared in a space file) turns each class into its twin, so it
hurts; a mild perspective warp keeps both shape and polarity.
"""

from __future__ import annotations

import colorsys

import numpy as np

CLASSES = ("L", "J", "red", "orange", "checker", "flat")
PLANTED_HARMS = ("hflip", "vflip", "color", "grayscale", "blur")
HARMLESS = ("brightness", "contrast")
SIDE = 32

_GLYPH = np.array(
    [
        [1, 0, 0, 0],
        [1, 0, 0, 0],
        [1, 0, 0, 0],
        [1, 1, 1, 0],
    ],
    dtype=bool,
)


def _rgb(hue: float, saturation: float = 0.9, value: float = 0.95) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(hue % 1.0, saturation, value)) * 255


def _draw(label: int, rng: np.random.Generator) -> np.ndarray:
    image = rng.normal(60, 12, (SIDE, SIDE, 3))
    top, left = rng.integers(2, SIDE - 18, 2)
    pair = label // 2
    if pair == 0:
        glyph = _GLYPH if label == 0 else _GLYPH[:, ::-1]
        glyph = np.rot90(glyph, 2 * rng.integers(2)).repeat(4, 0).repeat(4, 1)  # a half turn keeps chirality
        h, w = glyph.shape
        image[top : top + h, left : left + w][glyph] = _rgb(rng.random())
    elif pair == 1:
        yy, xx = np.mgrid[:SIDE, :SIDE]
        disk = (yy - top - 6) ** 2 + (xx - left - 6) ** 2 <= 36
        image[disk] = _rgb((0.0 if label == 2 else 40 / 360) + rng.normal(0, 0.01))
    else:
        a, b = _rgb(rng.random()), _rgb(rng.random(), value=0.35)
        patch = np.where((np.add.outer(np.arange(12), np.arange(12)) % 2 == 0)[..., None], a, b)
        image[top : top + 12, left : left + 12] = patch if label == 4 else (a + b) / 2
    mean = image.mean()
    image = (image - mean) * rng.uniform(0.2, 1.8) + mean  # contrast
    image = image * rng.uniform(0.2, 1.8)  # brightness
    return np.clip(image, 0, 255).astype(np.uint8).transpose(2, 0, 1)


def generate(per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (N, 3, 32, 32) and labels, `per_class` of each class, shuffled."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.repeat(np.arange(len(CLASSES)), per_class))
    return np.stack([_draw(int(y), rng) for y in labels]), labels


HELPS_CLASSES = ("L", "F", "P", "seven")
PLANTED_HELPS = ("hflip", "brightness")
_SHAPES = {
    "L": ["1000", "1000", "1000", "1110"],
    "F": ["1111", "1000", "1110", "1000"],
    "P": ["1110", "1010", "1110", "1000"],
    "seven": ["1111", "0001", "0010", "0100"],
}


def _draw_helps(label: int, rng: np.random.Generator, validation: bool) -> np.ndarray:
    image = rng.normal(60, 12, (SIDE, SIDE, 3))
    glyph = np.array([[c == "1" for c in row] for row in _SHAPES[HELPS_CLASSES[label]]])
    if validation:
        glyph = glyph[:, ::-1]
    glyph = glyph.repeat(4, 0).repeat(4, 1)
    top, left = rng.integers(2, SIDE - 18, 2)
    image[top : top + 16, left : left + 16][glyph] = _rgb(rng.random())
    if validation:
        image = image * rng.uniform(0.3, 1.7)
    return np.clip(image, 0, 255).astype(np.uint8).transpose(2, 0, 1)


def generate_helps(per_class: int, seed: int, *, validation: bool) -> tuple[np.ndarray, np.ndarray]:
    """The planted-help set: uint8 images (N, 3, 32, 32) and labels, `per_class` of each of the
    four glyphs, shuffled; `validation` mirrors every one and varies their brightness."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.repeat(np.arange(len(HELPS_CLASSES)), per_class))
    return np.stack([_draw_helps(int(y), rng, validation) for y in labels]), labels


POLARITY_CLASSES = ("ring-light", "ring-dark", "cross-light", "cross-dark")


def _draw_polarity(label: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[:SIDE, :SIDE]
    cy, cx = rng.integers(11, SIDE - 11, 2)
    radius = np.hypot(yy - cy, xx - cx)
    shape = (np.abs(radius - 6) <= 1.5) if label < 2 else (((np.abs(yy - cy) <= 1.5) | (np.abs(xx - cx) <= 1.5)) & (radius <= 8))
    dark, light = rng.uniform(40, 90), rng.uniform(165, 215)
    ground, ink = (dark, light) if label % 2 == 0 else (light, dark)
    tint = rng.uniform(0.85, 1.15, 3)
    image = np.where(shape[..., None], ink, ground) * tint + rng.normal(0, 8, (SIDE, SIDE, 3))
    return np.clip(image, 0, 255).astype(np.uint8).transpose(2, 0, 1)


def generate_polarity(per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The polarity set: uint8 images (N, 3, 32, 32) and labels, `per_class` of each of the
    four classes, shuffled."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.repeat(np.arange(len(POLARITY_CLASSES)), per_class))
    return np.stack([_draw_polarity(int(y), rng) for y in labels]), labels

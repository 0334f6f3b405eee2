"""Batch forms of torchvision v2's random transforms: every image its own random parameters,
one tensor operation for the whole batch, on whatever device the batch lives on.

torchvision's v2 transforms draw one set of parameters per call, so a batch passed through
them shares one crop, one angle, one blur. Calling them image by image gives each image its
own draw but costs a Python round trip and a small kernel per image. Here the parameters
are drawn the way v2's `make_params` draws them, vectorised over the batch (from torch's
default generator, so `torch.manual_seed` makes them repeatable), and applied by the same
arithmetic as v2's kernels with per-image factors broadcast over the batch. Images are
float in [0, 1], shape (B, C, H, W); tests compare each kernel with v2's per image.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F
from torchvision.transforms.v2 import functional as TF


def uniform(n: int, low: float, high: float) -> torch.Tensor:
    return torch.empty(n).uniform_(low, high)


def chance(n: int, p: float) -> torch.Tensor:
    """Which of n images a transform with probability p acts on (v2: rand < p)."""
    return torch.rand(n) < p


def _box_tries(n: int, height: int, width: int, scale, ratio) -> tuple[torch.Tensor, torch.Tensor]:
    """v2's ten tries per image of a box: area uniform in `scale` of the image, log-aspect
    uniform in log `ratio`; returns the sides sqrt(area * aspect) and sqrt(area / aspect), (n, 10)."""
    area = uniform(n * 10, *scale).view(n, 10) * height * width
    aspect = torch.exp(uniform(n * 10, math.log(ratio[0]), math.log(ratio[1])).view(n, 10))
    return torch.sqrt(area * aspect).round().long(), torch.sqrt(area / aspect).round().long()


def _first_valid(valid: torch.Tensor, *sides: torch.Tensor):
    """Per image, the sides of the first valid try, and whether any try was valid."""
    pick = valid.int().argmax(dim=1)[:, None]
    return (*(side.gather(1, pick)[:, 0] for side in sides), valid.any(dim=1))


def crop_boxes(n: int, height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float]):
    """RandomResizedCrop's boxes (top, left, h, w): ten tries of area and log-aspect, the first
    that fits, else the centre crop with the aspect clamped into `ratio`."""
    w, h = _box_tries(n, height, width, scale, ratio)
    w, h, found = _first_valid((w > 0) & (w <= width) & (h > 0) & (h <= height), w, h)
    in_ratio = width / height
    if in_ratio < min(ratio):
        fw, fh = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        fw, fh = int(round(height * max(ratio))), height
    else:
        fw, fh = width, height
    w = torch.where(found, w, fw)
    h = torch.where(found, h, fh)
    top = (torch.rand(n) * (height - h + 1)).floor().long()
    left = (torch.rand(n) * (width - w + 1)).floor().long()
    top = torch.where(found, top, (height - h) // 2)
    left = torch.where(found, left, (width - w) // 2)
    return top, left, h, w


def resized_crop(x: torch.Tensor, top, left, h, w) -> torch.Tensor:
    """Each image's box resized back to the full size, bilinear, as v2's resize of the crop:
    source coordinates clamp at the box edges (boxes never exceed the image, so no antialias)."""
    b, _, height, width = x.shape
    dev = x.device

    def axis(start, length, size):
        out = (torch.arange(size, device=dev) + 0.5)[None] * (length[:, None] / size) - 0.5
        out = torch.minimum(out.clamp(min=0), (length - 1)[:, None].float()) + start[:, None]
        return (2 * out + 1) / size - 1  # grid_sample's normalised coordinates, align_corners=False

    gx = axis(left.to(dev), w.to(dev), width)[:, None, :].expand(b, height, width)
    gy = axis(top.to(dev), h.to(dev), height)[:, :, None].expand(b, height, width)
    return F.grid_sample(x, torch.stack((gx, gy), dim=-1), mode="bilinear", align_corners=False)


def flip(x: torch.Tensor, on: torch.Tensor, dim: int) -> torch.Tensor:
    return select(x, on, x.flip(dim))


def inverse_affine(angle, tx, ty, scale, shear_x) -> torch.Tensor:
    """(B, 2, 3) inverse affine matrices about the image centre, as torchvision's
    `_get_inverse_affine_matrix` computes them (degrees, pixels), in float64."""
    rot, sx = torch.deg2rad(angle.double()), torch.deg2rad(shear_x.double())
    a, c = torch.cos(rot), torch.sin(rot)
    b = -torch.cos(rot) * torch.tan(sx) - torch.sin(rot)
    d = -torch.sin(rot) * torch.tan(sx) + torch.cos(rot)
    scale = scale.double()
    m0, m1, m3, m4 = d / scale, -b / scale, -c / scale, a / scale
    m2 = m0 * -tx.double() + m1 * -ty.double()
    m5 = m3 * -tx.double() + m4 * -ty.double()
    return torch.stack((m0, m1, m2, m3, m4, m5), dim=1).view(-1, 2, 3)


def warp(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Nearest-neighbour affine warp with zero fill, one matrix per image (v2's affine grid)."""
    b, _, height, width = x.shape
    dev = x.device
    theta = theta.to(device=dev, dtype=torch.float32)
    base = torch.empty(1, height, width, 3, device=dev)
    base[..., 0] = torch.linspace((1.0 - width) * 0.5, (width - 1.0) * 0.5, width, device=dev)
    base[..., 1] = torch.linspace((1.0 - height) * 0.5, (height - 1.0) * 0.5, height, device=dev)[:, None]
    base[..., 2] = 1
    rescaled = theta.transpose(1, 2) / torch.tensor([0.5 * width, 0.5 * height], device=dev)
    grid = base.view(1, -1, 3).expand(b, -1, -1).bmm(rescaled).view(b, height, width, 2)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def gaussian_kernels(sigma: torch.Tensor, size: int) -> torch.Tensor:
    """(B, size) 1-D Gaussian kernels, v2's formula with one sigma per image."""
    lim = (size - 1) / (2.0 * math.sqrt(2.0))
    x = torch.linspace(-lim, lim, size)
    return torch.softmax(-((x[None] / sigma[:, None]) ** 2), dim=1)


def blur(x: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur with reflect padding, each image its own kernel."""
    b, c, height, width = x.shape
    size = kernels.shape[1]
    weight = kernels.to(x.device).repeat_interleave(c, dim=0)[:, None, None, :]  # (B*C, 1, 1, k)
    out = F.pad(x.reshape(1, b * c, height, width), [size // 2] * 4, mode="reflect")
    # depthwise convolutions run 2-3x faster on channels-last data on CPUs
    out = F.conv2d(out.contiguous(memory_format=torch.channels_last), weight, groups=b * c)
    out = F.conv2d(out, weight.transpose(2, 3), groups=b * c)
    return out.reshape(b, c, height, width)


def _per_image(factor: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return factor.to(device=x.device, dtype=x.dtype)[:, None, None, None]


def blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return torch.lerp(other, x, _per_image(factor, x)).clamp_(0, 1)


def gray(x: torch.Tensor) -> torch.Tensor:
    return TF.rgb_to_grayscale(x, num_output_channels=1)


def brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (x * _per_image(factor, x)).clamp_(0, 1)


def contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return blend(x, gray(x).mean(dim=(-3, -2, -1), keepdim=True), factor)


def saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return blend(x, gray(x), factor)


def hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """v2's adjust_hue (RGB to HSV, shift H, back), each image its own shift. HSV's V and
    S * V are the channel max and max - min, which a hue shift keeps, so the way back is
    the closed form v - (max - min) * clamp(min(k, 4 - k), 0, 1) per channel."""
    r, g, b = x.unbind(dim=1)
    maxc, minc = x.amax(dim=1), x.amin(dim=1)
    span = maxc - minc
    safe = torch.where(span > 0, span, torch.ones_like(span))
    rc, gc, bc = (maxc - r) / safe, (maxc - g) / safe, (maxc - b) / safe
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = (h / 6.0 + shift.to(x.device)[:, None, None]).remainder(1.0)
    k = (torch.tensor([5.0, 3.0, 1.0], device=x.device)[None, :, None, None] + 6 * h[:, None]).remainder(6.0)
    return maxc[:, None] - span[:, None] * torch.minimum(k, 4 - k).clamp(0, 1)


def sharpen(x: torch.Tensor, factor: float) -> torch.Tensor:
    """v2's adjust_sharpness: blend with a 3x3 smoothed copy (weights 1, centre 5, over 13),
    one-pixel border left as is. The 3x3 sum is four shifted adds: a one-channel conv2d
    or an average pool is several times slower on CPUs."""
    centre = x[..., 1:-1, 1:-1]
    rows = x[..., :-2, :] + x[..., 1:-1, :] + x[..., 2:, :]
    smooth = (rows[..., :-2] + rows[..., 1:-1] + rows[..., 2:] + 4 * centre) / 13
    degenerate = x.clone()
    degenerate[..., 1:-1, 1:-1] = smooth
    return blend(x, degenerate, torch.full((len(x),), factor))


def select(x: torch.Tensor, on: torch.Tensor, changed: torch.Tensor) -> torch.Tensor:
    return torch.where(on.to(x.device)[:, None, None, None], changed, x)


def only(x: torch.Tensor, on: torch.Tensor, fn) -> torch.Tensor:
    """`fn(images, index)` applied to the selected images only, the rest passed through:
    for transforms that act on some images and cost too much to compute for all."""
    index = on.nonzero()[:, 0]
    if not len(index):
        return x
    out = x.clone()
    out[index.to(x.device)] = fn(x[index.to(x.device)], index)
    return out


def erase_boxes(n: int, height: int, width: int, scale: tuple[float, float], ratio=(0.3, 3.3)):
    """RandomErasing's boxes (top, left, h, w, found): ten tries, the first strictly inside."""
    h, w = _box_tries(n, height, width, scale, ratio)
    h, w, found = _first_valid((h < height) & (w < width), h, w)
    top = (torch.rand(n) * (height - h + 1)).floor().long()
    left = (torch.rand(n) * (width - w + 1)).floor().long()
    return top, left, h, w, found


def erase(x: torch.Tensor, top, left, h, w, on) -> torch.Tensor:
    """Zero each selected image's box."""
    _, _, height, width = x.shape
    dev = x.device
    rows = torch.arange(height, device=dev)[None, :]
    cols = torch.arange(width, device=dev)[None, :]
    top, left, h, w, on = (t.to(dev) for t in (top, left, h, w, on))
    in_rows = (rows >= top[:, None]) & (rows < (top + h)[:, None])
    in_cols = (cols >= left[:, None]) & (cols < (left + w)[:, None])
    box = (in_rows[:, :, None] & in_cols[:, None, :]) & on[:, None, None]
    return x.masked_fill(box[:, None], 0.0)

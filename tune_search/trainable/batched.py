"""Batch forms of torchvision v2's random transforms: every image its own random parameters,
one tensor operation for the whole batch, on whatever device the batch lives on.

torchvision's v2 transforms draw one set of parameters per call, so a batch passed through
them shares one crop, one angle, one blur. Calling them image by image gives each image its
own draw but costs a Python round trip and a small kernel per image. Here the parameters
are drawn the way v2's `make_params` draws them, vectorised over the batch (from torch's
default generator, so `torch.manual_seed` makes them repeatable), and applied by the same
arithmetic as v2's kernels with per-image factors broadcast over the batch. Images are
float, shape (B, C, H, W), pixel values in [0, bound]: the pipeline keeps the uint8 scale
(bound 255), so neither end of it spends a pass rescaling; tests compare each kernel with
v2's per image on [0, 1] (bound 1, v2's float range).

At the sizes a trial augments, every pass over a batch costs about as much as the memory it
streams, so the pixel-wise kernels work in place (they may overwrite their input) and fold
v2's steps into as few passes as the arithmetic allows.
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


def resized_crop(x: torch.Tensor, top, left, h, w, hflip=None, vflip=None) -> torch.Tensor:
    """Each image's box resized back to the full size, bilinear, as v2's resize of the crop:
    source coordinates clamp at the box edges (boxes never exceed the image, so no antialias).
    `hflip` / `vflip` (bool per image) mirror the result in the same pass: reversing a row or
    column of the sampling grid picks exactly the pixels a flip of the output would."""
    b, _, height, width = x.shape
    dev = x.device

    def axis(start, length, size, mirror):
        out = (torch.arange(size, device=dev) + 0.5)[None] * (length[:, None] / size) - 0.5
        out = torch.minimum(out.clamp(min=0), (length - 1)[:, None].float()) + start[:, None]
        out = (2 * out + 1) / size - 1  # grid_sample's normalised coordinates, align_corners=False
        return out if mirror is None else torch.where(mirror.to(dev)[:, None], out.flip(1), out)

    gx = axis(left.to(dev), w.to(dev), width, hflip)[:, None, :].expand(b, height, width)
    gy = axis(top.to(dev), h.to(dev), height, vflip)[:, :, None].expand(b, height, width)
    return F.grid_sample(x, torch.stack((gx, gy), dim=-1), mode="bilinear", align_corners=False)


def flip(x: torch.Tensor, on: torch.Tensor, dim: int) -> torch.Tensor:
    return only(x, on, lambda im, _: im.flip(dim))


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


def grid_matrices(theta: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, 2, 3) float32: v2's affine grid is [x, y, 1] @ m^T at pixel centres (x, y measured
    from the image centre), in grid_sample's normalised coordinates."""
    return theta.to(torch.float32) / torch.tensor([0.5 * width, 0.5 * height], device=theta.device)[None, :, None]


def warp(x: torch.Tensor, matrices: torch.Tensor) -> torch.Tensor:
    """Nearest-neighbour affine warp with zero fill, one (2, 3) grid matrix per image
    (`grid_matrices`)."""
    b, _, height, width = x.shape
    dev = x.device
    # Each of the grid's two planes is a column term plus a row term, summed by broadcasting
    # straight into the grid: a (B, H*W, 3) @ (B, 3, 2) product costs more, and so does
    # broadcasting over the last axis of length 2 (no vector loop) or stacking two planes
    # (one more pass)
    m = matrices.to(dev)
    xs = torch.linspace((1.0 - width) * 0.5, (width - 1.0) * 0.5, width, device=dev)[None]
    ys = torch.linspace((1.0 - height) * 0.5, (height - 1.0) * 0.5, height, device=dev)[None]
    grid = torch.empty(b, height, width, 2, device=dev)
    for i in range(2):
        torch.add((xs * m[:, i, 0:1])[:, None, :], (ys * m[:, i, 1:2] + m[:, i, 2:3])[:, :, None], out=grid[..., i])
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def gaussian_kernels(sigma: torch.Tensor, size: int) -> torch.Tensor:
    """(B, size) 1-D Gaussian kernels, v2's formula with one sigma per image."""
    lim = (size - 1) / (2.0 * math.sqrt(2.0))
    x = torch.linspace(-lim, lim, size)
    return torch.softmax(-((x[None] / sigma[:, None]) ** 2), dim=1)


def reflect_matrices(kernels: torch.Tensor, size: int) -> torch.Tensor:
    """(B, size, size) matrices M with M @ v = v convolved with each image's kernel, the
    border reflect-padded as v2's blur pads it."""
    b, k = kernels.shape
    source = (torch.arange(size, device=kernels.device)[:, None] + torch.arange(k, device=kernels.device) - k // 2).abs()
    source = torch.minimum(source, 2 * (size - 1) - source)
    out = torch.zeros(b, size, size, device=kernels.device, dtype=kernels.dtype)
    return out.scatter_add_(2, source.expand(b, -1, -1), kernels[:, None, :].expand(b, size, k))


def blur(x: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur with reflect padding, each image its own kernel, as two batched
    matrix products (rows, then columns): on CPUs as fast as a depthwise convolution at small
    kernels and faster at large ones, and no padded or channels-last copies."""
    b, c, height, width = x.shape
    kernels = kernels.to(device=x.device, dtype=x.dtype)
    rows = reflect_matrices(kernels, width)
    out = torch.bmm(x.reshape(b, c * height, width), rows.transpose(1, 2)).view(b, c, height, width)
    columns = rows if height == width else reflect_matrices(kernels, height)
    return torch.matmul(columns[:, None], out)


def _per_image(factor: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return factor.to(device=x.device, dtype=x.dtype)[:, None, None, None]


def blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor, bound: float = 1.0) -> torch.Tensor:
    """v2's blend, x * factor + other * (1 - factor), clamped to [0, bound]; `other` may
    broadcast."""
    f = _per_image(factor, x)
    if other.shape[-2:] == (1, 1):
        # one value per image: multiply and add each run a vector loop; a one-pass lerp or
        # addcmul over such a broadcast does not, and is slower
        x.mul_(f).add_(other * (1 - f))
    else:
        torch.lerp(other, x, f, out=x)  # other + f * (x - other), one pass
    return x.clamp_(0, bound)


def gray(x: torch.Tensor) -> torch.Tensor:
    return TF.rgb_to_grayscale(x, num_output_channels=1)


def brightness(x: torch.Tensor, factor: torch.Tensor, bound: float = 1.0) -> torch.Tensor:
    return x.mul_(_per_image(factor, x)).clamp_(0, bound)


def contrast(x: torch.Tensor, factor: torch.Tensor, bound: float = 1.0) -> torch.Tensor:
    # the mean of the grayscale image, from the channel means: one pass instead of three
    luma = torch.tensor([0.2989, 0.587, 0.114], device=x.device, dtype=x.dtype)
    return blend(x, (x.mean(dim=(-2, -1)) @ luma)[:, None, None, None], factor, bound)


def saturation(x: torch.Tensor, factor: torch.Tensor, bound: float = 1.0) -> torch.Tensor:
    return blend(x, gray(x), factor, bound)


def hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """v2's adjust_hue (RGB to HSV, shift H, back), each image its own shift. HSV's V and
    S * V are the channel max and max - min, which a hue shift keeps, so the way back is
    the closed form v - (max - min) * clamp(min(k, 4 - k), 0, 1) per channel.
    Written in float arithmetic only: bool masks, `where` and `remainder` run several
    times slower than arithmetic on CPUs."""
    r, g, b = x.unbind(dim=1)
    maxc = torch.maximum(torch.maximum(r, g), b)
    span = maxc - torch.minimum(torch.minimum(r, g), b)
    # 1 where the channel is the max (red first, then green), else 0
    is_r = torch.sign(r - maxc).add_(1)
    is_g = torch.sign(g - maxc).add_(1).mul_(1 - is_r)
    is_b = 1 - is_r - is_g
    # H in sixths of a turn: (g - b) / span where red is the max, 2 + (b - r) / span where
    # green is, 4 + (r - g) / span where blue is (0 for grays: span 0, numerator 0)
    h6 = (g - b).mul_(is_r).add_((b - r).mul_(is_g)).add_((r - g).mul_(is_b)).div_(span.clamp(min=1e-12))
    h6.add_(is_g, alpha=2).add_(is_b, alpha=4).add_(6 * shift.to(x.device)[:, None, None])
    k = h6[:, None] + torch.tensor([5.0, 3.0, 1.0], device=x.device)[None, :, None, None]
    k.sub_(k.mul(1 / 6).floor_().mul_(6))  # mod 6
    # min(k, 4 - k) on [0, 6) is 2 - |k - 2|: in place, one allocation fewer
    k.sub_(2).abs_().neg_().add_(2).clamp_(0, 1).mul_(span[:, None])
    return torch.sub(maxc[:, None], k, out=k)


def sharpen(x: torch.Tensor, factor: float, bound: float = 1.0) -> torch.Tensor:
    """v2's adjust_sharpness: blend with a 3x3 smoothed copy (weights 1, centre 5, over 13),
    one-pixel border left as is. The blend of centre c and 3x3 sum s folds into one weighted
    sum, factor * c + (1 - factor) * (s + 4 c) / 13; the 3x3 sum is four shifted adds (a
    one-channel conv2d or an average pool is several times slower on CPUs)."""
    centre = x[..., 1:-1, 1:-1]
    rows = x[..., :-2, :] + x[..., 2:, :]
    rows += x[..., 1:-1, :]
    box = rows[..., :-2] + rows[..., 2:]
    box += rows[..., 1:-1]
    box.mul_((1 - factor) / 13).add_(centre, alpha=factor + 4 * (1 - factor) / 13)
    torch.clamp(box, 0, bound, out=centre)
    return x


def only(x: torch.Tensor, on: torch.Tensor, fn) -> torch.Tensor:
    """`fn(images, index)` applied to the selected images only, written back into `x`; the
    rest pass through untouched and cost nothing."""
    index = on.nonzero()[:, 0]
    if not len(index):
        return x
    rows = index.to(x.device)
    return x.index_copy_(0, rows, fn(x.index_select(0, rows), index))


def erase_boxes(n: int, height: int, width: int, scale: tuple[float, float], ratio=(0.3, 3.3)):
    """RandomErasing's boxes (top, left, h, w, found): ten tries, the first strictly inside."""
    h, w = _box_tries(n, height, width, scale, ratio)
    h, w, found = _first_valid((h < height) & (w < width), h, w)
    top = (torch.rand(n) * (height - h + 1)).floor().long()
    left = (torch.rand(n) * (width - w + 1)).floor().long()
    return top, left, h, w, found


def erase(x: torch.Tensor, top, left, h, w, on) -> torch.Tensor:
    """Zero each selected image's box (by a 0/1 float mask: faster than a boolean fill)."""
    _, _, height, width = x.shape
    dev = x.device
    rows = torch.arange(height, device=dev)[None, :]
    cols = torch.arange(width, device=dev)[None, :]
    top, left, h, w, on = (t.to(dev) for t in (top, left, h, w, on))
    in_rows = ((rows >= top[:, None]) & (rows < (top + h)[:, None]) & on[:, None]).to(x.dtype)
    in_cols = ((cols >= left[:, None]) & (cols < (left + w)[:, None])).to(x.dtype)
    return x.mul_(1 - in_rows[:, None, :, None] * in_cols[:, None, None, :])

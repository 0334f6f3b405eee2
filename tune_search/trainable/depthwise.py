"""Depthwise convolutions with a fast weight gradient where the kernel outgrows the image.

oneDNN computes the weight gradient of a depthwise convolution whose kernel is larger than its
input (EfficientNet's 5x5 kernels on the 4x4 and 2x2 maps of a small image) 30 to 150 times
slower than where it fits: most of an EfficientNet-Lite training step at 32-64 px
(BENCHMARKS.md). There this gradient is computed as what it is: for each of the k x k kernel
taps, the sum over images and positions of the output gradient times the input shifted by that
tap. The forward pass and the input gradient stay oneDNN's. Everywhere else (the kernel fits,
a GPU, no gradient) the layer is the convolution it replaces, parameters and names unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import Conv2dSame
from timm.layers.padding import pad_same
from torch import nn


def weight_grad(x: torch.Tensor, grad: torch.Tensor, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int]) -> torch.Tensor:
    """d loss / d weight of a depthwise convolution (C, 1, kh, kw) from its input and output gradient."""
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    padded = F.pad(x, (pw, pw, ph, ph)) if ph or pw else x
    height, width = grad.shape[-2:]
    out = grad.new_empty(grad.shape[1], 1, kh, kw)
    for i in range(kh):
        for j in range(kw):
            tap = padded[:, :, i : i + sh * (height - 1) + 1 : sh, j : j + sw * (width - 1) + 1 : sw]
            out[:, 0, i, j] = (tap * grad).sum(dim=(0, 2, 3))
    return out


class _DepthwiseConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding):
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.padding, ctx.has_bias = stride, padding, bias is not None
        return F.conv2d(x, weight, bias, stride, padding, 1, weight.shape[0])

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad_input = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_input = torch.ops.aten.convolution_backward(
                grad, x, weight, None, ctx.stride, ctx.padding, (1, 1), False, (0, 0), weight.shape[0], (True, False, False)
            )[0]
        if ctx.needs_input_grad[1]:
            grad_weight = weight_grad(x, grad, tuple(weight.shape[-2:]), ctx.stride, ctx.padding)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad.sum(dim=(0, 2, 3))
        return grad_input, grad_weight, grad_bias, None, None


class DepthwiseConv2d(nn.Conv2d):
    """A depthwise nn.Conv2d (or timm's Conv2dSame, `same`) whose CPU weight gradient is
    `weight_grad` where the kernel is larger than the input."""

    same = False

    @classmethod
    def replacing(cls, conv: nn.Conv2d) -> DepthwiseConv2d:
        layer = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                    groups=conv.groups, bias=conv.bias is not None, device="meta")  # fmt: skip
        layer.weight, layer.bias = conv.weight, conv.bias
        layer.same = isinstance(conv, Conv2dSame)
        return layer.train(conv.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fits = x.shape[-2] >= self.kernel_size[0] and x.shape[-1] >= self.kernel_size[1]
        padding = self.padding
        if self.same:
            x, padding = pad_same(x, self.kernel_size, self.stride, self.dilation), (0, 0)
        if fits or x.device.type != "cpu" or not (torch.is_grad_enabled() and self.weight.requires_grad):
            return F.conv2d(x, self.weight, self.bias, self.stride, padding, self.dilation, self.groups)
        return _DepthwiseConv.apply(x, self.weight, self.bias, self.stride, padding)


def is_depthwise(module: nn.Module) -> bool:
    return (
        isinstance(module, nn.Conv2d)
        and not isinstance(module, DepthwiseConv2d)
        and module.groups > 1
        and module.groups == module.in_channels == module.out_channels
        and module.dilation == (1, 1)
        and module.padding_mode == "zeros"
        and not isinstance(module.padding, str)
    )


def use_fast_depthwise(model: nn.Module) -> int:
    """Replace every depthwise convolution in `model` by a `DepthwiseConv2d` sharing its
    parameters; how many were replaced."""
    found = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children() if is_depthwise(child)]
    for parent, name, child in found:
        setattr(parent, name, DepthwiseConv2d.replacing(child))
    return len(found)

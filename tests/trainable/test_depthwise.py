import copy

import pytest
import torch
from timm.layers import Conv2dSame
from torch import nn

from tune_search.trainable.depthwise import DepthwiseConv2d, use_fast_depthwise
from tune_search.trainable.models import ModelSpec, build_model


def gradients(layer, x):
    x = x.clone().requires_grad_()
    out = layer(x)
    out.backward(torch.linspace(-1, 1, out.numel()).reshape(out.shape))
    return out.detach(), x.grad, layer.weight.grad, None if layer.bias is None else layer.bias.grad


@pytest.mark.parametrize(
    "conv, side",
    [
        (nn.Conv2d(8, 8, 5, padding=2, groups=8, bias=False), 4),  # kernel larger than the map: the fast path
        (nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=True), 2),
        (Conv2dSame(8, 8, 5, stride=2, groups=8, bias=False), 3),  # timm's dynamic same padding
        (Conv2dSame(8, 8, 3, stride=2, groups=8, bias=False), 9),  # the kernel fits: oneDNN's own
        (nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), 16),
    ],
    ids=["5x5-on-4", "3x3-on-2-bias", "same-5x5-s2-on-3", "same-3x3-s2-on-9", "3x3-on-16"],
)
@pytest.mark.parametrize("channels_last", [True, False], ids=["channels-last", "contiguous"])
def test_the_replacement_computes_what_the_convolution_does(conv, side, channels_last):
    torch.manual_seed(0)
    conv = copy.deepcopy(conv)  # the parametrised layer is shared between cases: its gradients accumulate
    fast = DepthwiseConv2d.replacing(copy.deepcopy(conv))
    x = torch.randn(4, 8, side, side)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    for want, got in zip(gradients(conv, x), gradients(fast, x)):
        assert (want is None) == (got is None)
        if want is not None:
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_every_depthwise_layer_of_a_model_is_replaced_with_its_parameters_and_names():
    model = build_model(ModelSpec("efficientnet_lite0", "none"), 10)
    layers = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert layers and all(isinstance(m, DepthwiseConv2d) for m in layers)
    assert use_fast_depthwise(model) == 0  # replaced once; a second pass finds none
    plain = build_model(ModelSpec("efficientnet_lite0", "none"), 10)
    assert list(plain.state_dict()) == list(model.state_dict())

"""Each batch kernel against torchvision v2's own kernel, image by image, with the same
parameters; and the batch draws against v2's `make_params` distributions."""

import math

import pytest
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from tune_search.trainable import batched as B
from tune_search.trainable.augment import NAMES, REGISTRY, build_pipeline


@pytest.fixture
def x(images):
    return images.float() / 255


def per_image(x, fn):
    return torch.stack([fn(img, i) for i, img in enumerate(x)])


def test_resized_crop_matches_v2(x):
    torch.manual_seed(0)
    top, left, h, w = B.crop_boxes(len(x), 32, 32, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3))
    ours = B.resized_crop(x, top, left, h, w)
    ref = per_image(x, lambda img, i: TF.resized_crop(img, int(top[i]), int(left[i]), int(h[i]), int(w[i]), [32, 32]))
    assert (ours - ref).abs().max() < 1e-4
    flips = torch.arange(len(x)) % 2 == 0, torch.arange(len(x)) % 3 == 0
    mirrored = B.resized_crop(x, top, left, h, w, *flips)
    ref[flips[0]] = ref[flips[0]].flip(-1)
    ref[flips[1]] = ref[flips[1]].flip(-2)
    assert (mirrored - ref).abs().max() < 1e-4


@pytest.mark.parametrize("seed", [0, 1])
def test_affine_warp_matches_v2(x, seed):
    torch.manual_seed(seed)
    n = len(x)
    angle, tx, ty = B.uniform(n, -30, 30), B.uniform(n, -5, 5).round(), B.uniform(n, -5, 5).round()
    scale, shear = B.uniform(n, 0.7, 1.3), B.uniform(n, -15, 15)
    ours = B.warp(x, B.grid_matrices(B.inverse_affine(angle, tx, ty, scale, shear), *x.shape[-2:]))
    ref = per_image(
        x,
        lambda img, i: TF.affine(
            img, float(angle[i]), [float(tx[i]), float(ty[i])], float(scale[i]), [float(shear[i]), 0.0],
            interpolation=v2.InterpolationMode.NEAREST,
        ),
    )  # fmt: skip
    # nearest neighbour: a coordinate exactly between two pixels may round either way
    assert (ours != ref).float().mean() < 0.002


def test_rotation_direction_matches_v2(x):
    n = len(x)
    angle = torch.full((n,), 30.0)
    zero = torch.zeros(n)
    ours = B.warp(x, B.grid_matrices(B.inverse_affine(-angle, zero, zero, torch.ones(n), zero), *x.shape[-2:]))
    ref = per_image(x, lambda img, i: TF.rotate(img, 30.0))
    assert (ours != ref).float().mean() < 0.002


def test_blur_matches_v2_with_one_sigma_per_image(x):
    sigma = torch.linspace(0.5, 3.0, len(x))
    ours = B.blur(x, B.gaussian_kernels(sigma, 9))
    ref = per_image(x, lambda img, i: TF.gaussian_blur(img, [9, 9], [float(sigma[i])] * 2))
    assert (ours - ref).abs().max() < 1e-5


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        (B.brightness, TF.adjust_brightness),
        (B.contrast, TF.adjust_contrast),
        (B.saturation, TF.adjust_saturation),
    ],
)
def test_photometric_factors_per_image_match_v2(x, ours, theirs):
    factor = torch.linspace(0.2, 1.8, len(x))
    ref = per_image(x, lambda img, i: theirs(img, float(factor[i])))
    assert (ours(x.clone(), factor) - ref).abs().max() < 1e-5
    # the pipeline's scale: the same result in uint8 units, clamped at 255 rather than 1
    assert (ours(x * 255, factor, 255.0) - ref * 255).abs().max() < 1e-3


def test_hue_sharpen_gray_and_erase_match_v2(x):
    n = len(x)
    shift = torch.linspace(-0.3, 0.3, n)
    # the kernels work in place: each gets its own copy
    assert (B.hue(x.clone(), shift) - per_image(x, lambda img, i: TF.adjust_hue(img, float(shift[i])))).abs().max() < 1e-5
    assert (B.sharpen(x.clone(), 3.0) - TF.adjust_sharpness(x, 3.0)).abs().max() < 1e-5
    assert (B.sharpen(x * 255, 3.0, 255.0) - TF.adjust_sharpness(x, 3.0) * 255).abs().max() < 1e-3
    assert (B.hue(x * 255, shift) - B.hue(x.clone(), shift) * 255).abs().max() < 1e-3
    assert torch.allclose(B.gray(x), TF.rgb_to_grayscale(x))
    top, left, h, w = (torch.randint(0, 16, (n,)) for _ in range(4))
    on = torch.arange(n) % 2 == 0
    ref = per_image(x, lambda img, i: TF.erase(img, int(top[i]), int(left[i]), int(h[i]), int(w[i]), torch.tensor(0.0)) if on[i] else img)
    assert torch.equal(B.erase(x.clone(), top, left, h, w, on), ref)


def test_crop_boxes_follow_v2_distribution():
    n, scale, ratio = 4000, (0.3, 1.0), (3 / 4, 4 / 3)
    torch.manual_seed(0)
    top, left, h, w = B.crop_boxes(n, 64, 48, scale, ratio)
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 64).all() and (left + w <= 48).all()
    ref = v2.RandomResizedCrop(32, scale=scale, ratio=ratio)
    image = torch.zeros(3, 64, 48)
    areas = torch.tensor([(lambda p: p["height"] * p["width"])(ref.make_params([image])) for _ in range(n)])
    ours = (h * w).float()
    assert ours.mean().item() == pytest.approx(areas.float().mean().item(), rel=0.03)
    assert (top + h / 2).float().mean().item() == pytest.approx(32, abs=1.0)  # centred on average


def test_erase_boxes_stay_inside_and_grow_with_scale():
    torch.manual_seed(0)
    small = B.erase_boxes(2000, 32, 32, (0.02, 0.1))
    large = B.erase_boxes(2000, 32, 32, (0.1, 0.33))
    for top, left, h, w, found in (small, large):
        assert found.all() and (top + h <= 32).all() and (left + w <= 32).all()
    assert (small[2] * small[3]).float().mean() < (large[2] * large[3]).float().mean()


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.slow
def test_batch_form_changes_images_as_much_as_per_image_v2(images, name):
    """Same strength, same kind of change: the mean pixel change of both forms agrees."""
    big = images.repeat(16, 1, 1, 1)  # 1,024 images: enough draws to average
    change = {}
    for batched in (True, False):
        torch.manual_seed(0)
        out = build_pipeline({name: 0.7}, 32, batched=batched)(big)
        change[batched] = (out.float() - big.float()).abs().mean().item()
    assert change[True] == pytest.approx(change[False], rel=0.15), change


def test_batch_form_runs_on_the_batch_device_and_hands_the_model_its_input(images):
    out = build_pipeline({n: 0.5 for n in NAMES}, 32)(images)
    assert out.dtype == torch.float32 and out.shape == images.shape and out.device == images.device
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert 0 <= out.min() and out.max() <= 255  # the uint8 scale, not rounded
    assert not math.isclose((out - images.float()).abs().mean().item(), 0.0)


@pytest.mark.parametrize("name", NAMES)
def test_every_step_keeps_pixels_in_range(images, name):
    """Each step must leave pixel values in [0, 255] for the next one (and the pipeline
    clamps none)."""
    torch.manual_seed(0)
    x = torch.cat([images.float(), torch.full((8, 3, 32, 32), 255.0), torch.zeros(8, 3, 32, 32)])
    out = REGISTRY[name].batch(x, 1.0)
    assert out.min() >= -1e-4 and out.max() <= 255 + 1e-4
    # bright images must still reach the top: a step that clamped at 1 would flatten them
    assert out.max() > 128

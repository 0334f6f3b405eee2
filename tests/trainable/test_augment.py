from pathlib import Path

import pytest
import torch

from tune_search.trainable.augment import NAMES, REGISTRY, build_pipeline, describe, full_strength


def mean_change(images, name, strength, seed=0, batched=True):
    torch.manual_seed(seed)
    out = build_pipeline({name: strength}, images.shape[-1], batched)(images)
    assert out.shape == images.shape and out.dtype == (torch.float32 if batched else torch.uint8)
    return (out.float() - images.float()).abs().mean().item()


FULL_STRENGTH = {  # the documented ranges at strength 1, 64 px (README's table): one row per entry
    "crop": {"area": (0.08, 1.0), "aspect": (0.75, 4 / 3)},
    "hflip": {"p": 0.5},
    "vflip": {"p": 0.5},
    "affine": {"degrees": 15, "shift": 0.15, "scale": (0.8, 1.2), "shear_degrees": 10},
    "rotate": {"degrees": 90},
    "blur": {"sigma_px": (1.5, 3.0), "kernel_px": 19},
    "sharpen": {"p": 0.5, "factor": 5},
    "contrast": {"factor": (0.2, 1.8)},
    "brightness": {"factor": (0.2, 1.8)},
    "color": {"saturation": (0.0, 2.0), "hue_turns": (-0.3, 0.3)},
    "grayscale": {"p": 1.0},
    "erasing": {"p": 0.5, "area": (0.02, 0.33)},
}


def test_every_entry_has_its_documented_ranges():
    assert set(NAMES) == FULL_STRENGTH.keys()
    assert all(name in describe() for name in NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_each_entry_reaches_its_documented_ranges_at_full_strength(name):
    ranges = REGISTRY[name].ranges(1.0, 64)
    assert ranges.keys() == FULL_STRENGTH[name].keys()
    assert all(ranges[k] == pytest.approx(v) for k, v in FULL_STRENGTH[name].items())


def test_the_readme_table_is_the_registry():
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    assert "\n".join("    " + line for line in describe().splitlines()) in readme
    assert all(full_strength(REGISTRY[n]) in describe() for n in NAMES)


def test_blur_scales_with_the_image_side():
    assert REGISTRY["blur"].ranges(1.0, 32)["sigma_px"] == pytest.approx((0.75, 1.5))
    assert REGISTRY["blur"].ranges(1.0, 8)["kernel_px"] == 5 and REGISTRY["blur"].ranges(1.0, 2)["kernel_px"] == 1  # odd, within the image


@pytest.mark.parametrize("name", NAMES)
def test_off_and_zero_strength_are_the_identity(images, name):
    assert build_pipeline({}, 32) is None
    assert build_pipeline({name: 0.0}, 32) is None


@pytest.mark.parametrize("batched", [True, False], ids=["batch", "per-image"])
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.slow
def test_change_grows_with_strength(images, name, batched):
    changes = [mean_change(images, name, s, batched=batched) for s in (0.25, 0.5, 1.0)]
    assert 0 < changes[0] < changes[1] < changes[2], changes


@pytest.mark.parametrize("batched", [True, False], ids=["batch", "per-image"])
@pytest.mark.parametrize("name", NAMES)
def test_each_image_draws_its_own_parameters(name, batched):
    same = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8).expand(32, -1, -1, -1).contiguous()
    torch.manual_seed(1)
    out = build_pipeline({name: 0.5}, 32, batched)(same)
    distinct = {tuple(o.flatten()[:256].tolist()) for o in out}
    assert len(distinct) > 1  # one draw for the batch would give one


def test_pipeline_follows_registry_order_whatever_the_mapping_order():
    strengths = {"erasing": 0.5, "hflip": 0.5, "crop": 0.5}
    # the flip runs inside the crop's pass
    steps = build_pipeline(strengths, 32).steps
    assert [(entry.name, absorbed) for entry, _, absorbed in steps] == [("crop", {"hflip": 0.5}), ("erasing", {})]
    kinds = [type(t).__name__ for t in build_pipeline(strengths, 32, batched=False).compose.transforms]
    assert kinds == ["RandomResizedCrop", "RandomHorizontalFlip", "RandomErasing"]
    assert list(REGISTRY).index("crop") < list(REGISTRY).index("erasing")


def test_strength_above_one_is_clamped(images):
    assert mean_change(images, "rotate", 5.0) == pytest.approx(mean_change(images, "rotate", 1.0))


@pytest.mark.parametrize("crop", [0.0, 1e-9])
def test_flips_mirror_whole_images_alone_or_inside_the_crop(images, crop):
    """Strength 1: each image mirrored or left alone, half of them mirrored; a crop of the
    whole image (strength ~0) folds the flip into its pass with the same effect."""
    big = images.repeat(4, 1, 1, 1)
    torch.manual_seed(0)
    out = build_pipeline({"crop": crop, "hflip": 1.0, "vflip": 1.0}, 32)(big)
    kinds = [(out == turned).flatten(1).all(1) for turned in (big, big.flip(-1), big.flip(-2), big.flip(-2, -1))]
    assert torch.stack(kinds).sum(0).eq(1).all()  # exactly one of the four for every image
    assert all(0.1 < k.float().mean() < 0.4 for k in kinds)

import shutil

import pytest
import torch

from trainable import native
from trainable.augment import NAMES, build_pipeline

needs_compiler = pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None, reason="no C compiler")

SIX = ("crop", "hflip", "affine", "blur", "sharpen", "contrast")


def both_forms(images, strengths, seed=0):
    """The same draws through the C kernel and through torch operations."""
    out = []
    for kernel in (True, False):
        torch.manual_seed(seed)
        out.append(build_pipeline(strengths, images.shape[-1], kernel=kernel)(images))
    return out


def odd_sized(images):
    # 27 px: no multiple of the kernel's 8- and 32-column blocks, an odd centre for the warps
    return torch.nn.functional.interpolate(images.float(), size=27, mode="bilinear").round().to(torch.uint8)


@needs_compiler
@pytest.mark.parametrize("size", ["32", "27"])
@pytest.mark.parametrize("steps", [(n,) for n in NAMES] + [("crop", "hflip", "vflip")], ids=lambda s: "+".join(s))
def test_kernel_matches_the_torch_form_step_by_step(images, steps, size):
    assert native.available()
    batch = images if size == "32" else odd_sized(images)
    for strength in (0.4, 1.0):
        kernel, torch_form = both_forms(batch, {n: strength for n in steps})
        # the same arithmetic up to float rounding (summation order, fused multiply-adds)
        assert (kernel - torch_form).abs().max() < 0.01, (steps, strength)


@needs_compiler
@pytest.mark.parametrize("steps", [SIX, NAMES], ids=["six", "all"])
def test_whole_pipelines_agree(images, steps):
    kernel, torch_form = both_forms(images, {n: 0.7 for n in steps}, seed=3)
    diff = (kernel - torch_form).abs()
    # a nearest-neighbour warp may pick the other pixel where rounding moves a coordinate
    # across a half: rare, and only after steps that leave fractional values
    assert (diff > 0.5).float().mean() < 1e-3 and diff.mean() < 0.01


@needs_compiler
def test_kernel_output_is_the_models_input(images):
    out = build_pipeline({n: 1.0 for n in NAMES}, 32)(images)
    assert out.shape == images.shape and out.dtype == torch.float32
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert 0 <= out.min() and out.max() <= 255 and out.max() > 128


@needs_compiler
def test_threads_split_the_batch_without_changing_it(images):
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, 3):
            torch.set_num_threads(n)
            torch.manual_seed(5)
            results.append(build_pipeline({n: 0.8 for n in NAMES}, 32)(images[:37]))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(results[0], results[1])


@needs_compiler
def test_the_build_is_cached_for_this_cpu(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    native.library.cache_clear()
    try:
        assert native.available()
        (built,) = (tmp_path / "tune-search").glob("augment-*.so")
        stamp = built.stat().st_mtime_ns
        native.library.cache_clear()
        assert native.available() and built.stat().st_mtime_ns == stamp  # loaded, not rebuilt
    finally:
        native.library.cache_clear()


def test_without_a_compiler_the_batch_form_runs_in_torch(images, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    native.library.cache_clear()
    try:
        assert not native.available()
        assert "torch operations" in caplog.text
        torch.manual_seed(0)
        out = build_pipeline({"crop": 0.5, "color": 0.5}, 32)(images)
        torch.manual_seed(0)
        reference = build_pipeline({"crop": 0.5, "color": 0.5}, 32, kernel=False)(images)
        assert torch.equal(out, reference)
    finally:
        native.library.cache_clear()

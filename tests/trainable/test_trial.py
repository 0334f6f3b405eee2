from dataclasses import replace

import pytest
import torch

from trainable.augment import NAMES
from trainable.data import Dataset, Split
from trainable.models import ModelSpec
from trainable.loop import cpu_has_bf16
from trainable.trial import CHECKPOINT_FILE, RunSpec, TrialSettings, affinity, amp_dtype, fine_tune, keep_weights_only, load_checkpoint


def planted(n: int, seed: int) -> Split:
    """Class 0 is bright on the left half, class 1 on the right: learnable in a few steps."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    images = torch.randint(0, 60, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
    images[labels == 0, :, :, :16] += 150
    images[labels == 1, :, :, 16:] += 150
    return Split(images, labels)


@pytest.fixture(scope="module")
def halves():
    return Dataset(planted(192, 0), planted(96, 1), ("left", "right"), "test")


SPEC = RunSpec(ModelSpec("resnet18", "none"), max_epochs=3)


def test_settings_read_only_switched_on_augmentations():
    s = TrialSettings.from_config(
        {"lr": 0.01, "freeze_depth": 2, "aug_hflip": True, "aug_hflip_strength": 0.3, "aug_blur": False, "batch_size": 32}
    )
    assert s.augmentations == (("hflip", 0.3),) and s.batch_size == 32 and s.freeze_depth == 2


def test_fine_tune_learns_a_planted_rule_and_reports_fractions(halves):
    history = [m for m, _ in fine_tune(TrialSettings(lr=3e-3, freeze_depth=0, batch_size=32), SPEC, halves)]
    assert [m["epoch"] for m in history] == [1, 2, 3]
    for m in history:
        assert 0 <= m["top1"] <= 1 and m["top5"] == 1.0  # two classes: top-5 is top-2
        assert m["val_loss"] > 0 and m["train_loss"] > 0
    assert history[-1]["top1"] >= 0.9


@pytest.mark.parametrize("fast_path", [True, False], ids=["batch-form", "per-image-v2"])
def test_hflip_hurts_when_the_class_is_which_half(halves, fast_path):
    spec = replace(SPEC, fast_path=fast_path)
    plain = list(fine_tune(TrialSettings(lr=3e-3, freeze_depth=0, batch_size=32), spec, halves))[-1][0]
    flipped = TrialSettings(lr=3e-3, freeze_depth=0, batch_size=32, augmentations=(("hflip", 1.0),))
    hurt = list(fine_tune(flipped, spec, halves))[-1][0]
    assert hurt["top1"] < plain["top1"] - 0.2


def test_auto_precision_is_bf16_only_where_it_is_faster():
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    resnet, lite0 = RunSpec(ModelSpec("resnet18", "none"), 1), RunSpec(ModelSpec("efficientnet_lite0", "none"), 1)
    assert amp_dtype(resnet, cpu) == (torch.bfloat16 if cpu_has_bf16() else None)
    assert amp_dtype(lite0, cpu) is None  # depthwise convolutions: slower in bf16 on CPUs
    assert amp_dtype(replace(lite0, precision="bf16"), cpu) == torch.bfloat16
    assert amp_dtype(replace(resnet, precision="fp32"), cpu) is None
    if torch.cuda.is_available():
        assert amp_dtype(lite0, gpu) == (torch.bfloat16 if torch.cuda.is_bf16_supported() else None)


def test_resume_continues_after_the_checkpointed_epoch(halves):
    settings = TrialSettings(lr=3e-3, freeze_depth=2, batch_size=32)
    run = fine_tune(settings, SPEC, halves)
    first, state = next(run)
    saved = state()
    assert not any(k.startswith(("stages.0.", "stages.1.")) for k in saved["model"])  # frozen: not saved
    rest = [m for m, _ in fine_tune(settings, SPEC, halves, resume=saved)]
    assert [m["epoch"] for m in rest] == [2, 3]
    straight = [m for m, _ in fine_tune(settings, SPEC, halves)]
    assert rest[-1]["top1"] == pytest.approx(straight[-1]["top1"], abs=0.02)


def test_a_finished_checkpoint_keeps_exactly_its_weights(halves, tmp_path):
    settings = TrialSettings(lr=3e-3, freeze_depth=3, batch_size=32)
    *_, (_, state) = fine_tune(settings, replace(SPEC, max_epochs=1), halves)
    full = state()
    torch.save(full, tmp_path / CHECKPOINT_FILE)
    size = (tmp_path / CHECKPOINT_FILE).stat().st_size
    freed = keep_weights_only(tmp_path)
    slim = load_checkpoint(tmp_path)
    assert set(slim) == {"epoch", "model"} and slim["epoch"] == 1 and freed == size - (tmp_path / CHECKPOINT_FILE).stat().st_size > 0
    assert slim["model"].keys() == full["model"].keys() and all(torch.equal(slim["model"][k], v) for k, v in full["model"].items())
    assert keep_weights_only(tmp_path) == 0 and [p.name for p in tmp_path.iterdir()] == [CHECKPOINT_FILE]
    assert affinity(settings, SPEC, halves, slim, {"hflip": 1.0}) == affinity(settings, SPEC, halves, full, {"hflip": 1.0})


def test_same_seed_same_result(halves):
    settings = TrialSettings(lr=1e-3, freeze_depth=4, batch_size=32, augmentations=(("crop", 0.5),))
    spec = RunSpec(ModelSpec("resnet18", "none"), max_epochs=1)
    a, b = (list(fine_tune(settings, spec, halves))[-1][0] for _ in range(2))
    timings = ("train_s", "eval_s", "data_s")
    assert {k: v for k, v in a.items() if k not in timings} == {k: v for k, v in b.items() if k not in timings}


def test_weighted_and_oversampled_balance_run(halves):
    for balance in ("weighted", "oversample"):
        spec = RunSpec(ModelSpec("resnet18", "none"), max_epochs=1, balance=balance, oversample_to=120)
        metrics = list(fine_tune(TrialSettings(lr=1e-3, freeze_depth=5, batch_size=64), spec, halves))[-1][0]
        assert 0 <= metrics["top1"] <= 1


@pytest.mark.parametrize("augmentations", [(), (("crop", 0.5),)])
def test_cached_frozen_features_train_the_same_as_images(halves, augmentations):
    """The frozen prefix runs once (train too, when nothing augments); results do not change."""
    settings = TrialSettings(lr=1e-3, freeze_depth=3, batch_size=32, augmentations=augmentations)
    spec = RunSpec(ModelSpec("resnet18", "none"), max_epochs=2)
    fast = [m for m, _ in fine_tune(settings, spec, halves)]
    slow = [m for m, _ in fine_tune(settings, replace(spec, feature_cache_bytes=0), halves)]
    for f, s in zip(fast, slow):
        assert f["train_loss"] == pytest.approx(s["train_loss"], rel=1e-3)
        assert f["val_loss"] == pytest.approx(s["val_loss"], rel=1e-3)
        assert f["top1"] == pytest.approx(s["top1"], abs=0.011)


def test_data_seconds_are_the_batch_preparation_part_of_training(halves):
    """`data_s` grows when every augmentation is on and stays a part of `train_s`."""
    spec = RunSpec(ModelSpec("resnet18", "none"), max_epochs=1)
    runs = {}
    for label, augs in (("none", ()), ("all", tuple((n, 1.0) for n in NAMES))):
        settings = TrialSettings(lr=1e-3, freeze_depth=0, batch_size=32, augmentations=augs)
        runs[label] = list(fine_tune(settings, spec, halves))[-1][0]
    for m in runs.values():
        assert 0 < m["data_s"] < m["train_s"]
    assert runs["all"]["data_s"] > 3 * runs["none"]["data_s"]

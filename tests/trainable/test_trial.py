import dataclasses
import math
import subprocess
import sys
from dataclasses import replace

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from tune_search.trainable.augment import NAMES
from tune_search.trainable.data import Dataset, Split
from tune_search.trainable.hyperparameters import HYPERPARAMETERS
from tune_search.trainable.loop import cpu_has_bf16
from tune_search.trainable.models import ModelSpec
from tune_search.trainable.probes import affinity
from tune_search.trainable.trial import CHECKPOINT_FILE, TrialSettings, TrialSpec, amp_dtype, fine_tune, keep_freed_memory, keep_weights_only, load_checkpoint


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


SPEC = TrialSpec(ModelSpec("resnet18", "none"), max_epochs=3)


def test_trial_settings_are_the_hyperparameter_table():
    fields = [f for f in dataclasses.fields(TrialSettings)][: len(HYPERPARAMETERS)]
    assert [f.name for f in fields] == [h.name for h in HYPERPARAMETERS]
    assert [f.default for f in fields[2:]] == [h.default for h in HYPERPARAMETERS[2:]]
    settings = TrialSettings.from_config({"lr": 0.01, "freeze_depth": 2, "batch_size": 32.0})
    assert (settings.batch_size, settings.weight_decay) == (32, 0.0) and isinstance(settings.batch_size, int)


def test_settings_read_only_switched_on_augmentations():
    s = TrialSettings.from_config({"lr": 0.01, "freeze_depth": 2, "aug_hflip": True, "aug_hflip_strength": 0.3, "aug_blur": False, "batch_size": 32})
    assert s.augmentations == (("hflip", 0.3),) and s.batch_size == 32 and s.freeze_depth == 2


@pytest.mark.slow
def test_fine_tune_learns_a_planted_rule_and_reports_fractions(halves):
    history = [m for m, _ in fine_tune(TrialSettings(lr=3e-3, freeze_depth=0, batch_size=32), SPEC, halves)]
    assert [m["epoch"] for m in history] == [1, 2, 3]
    for m in history:
        assert 0 <= m["top1"] <= 1 and math.isnan(m["top5"])  # two classes: top-5 is not measured
        assert m["val_loss"] > 0 and m["train_loss"] > 0
    assert history[-1]["top1"] >= 0.9


@pytest.mark.parametrize("fast_path", [True, False], ids=["batch-form", "per-image-v2"])
@pytest.mark.slow
def test_hflip_hurts_when_the_class_is_which_half(halves, fast_path):
    spec = replace(SPEC, fast_path=fast_path)
    plain = list(fine_tune(TrialSettings(lr=3e-3, freeze_depth=0, batch_size=32), spec, halves))[-1][0]
    flipped = TrialSettings(lr=3e-3, freeze_depth=0, batch_size=32, augmentations=(("hflip", 1.0),))
    hurt = list(fine_tune(flipped, spec, halves))[-1][0]
    assert hurt["top1"] < plain["top1"] - 0.2


def test_auto_precision_is_bf16_only_where_it_is_faster():
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    resnet, lite0 = TrialSpec(ModelSpec("resnet18", "none"), 1), TrialSpec(ModelSpec("efficientnet_lite0", "none"), 1)
    assert amp_dtype(resnet, cpu) == (torch.bfloat16 if cpu_has_bf16() else None)
    assert amp_dtype(lite0, cpu) is None  # depthwise convolutions: slower in bf16 on CPUs
    assert amp_dtype(replace(lite0, precision="bf16"), cpu) == torch.bfloat16
    assert amp_dtype(replace(resnet, precision="fp32"), cpu) is None
    if torch.cuda.is_available():
        assert amp_dtype(lite0, gpu) == (torch.bfloat16 if torch.cuda.is_bf16_supported() else None)


def _untimed(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if not k.endswith("_s")}


@pytest.mark.parametrize("augmentations", [(), (("crop", 0.5), ("color", 0.5))], ids=["cached features", "augmented"])
@pytest.mark.slow
def test_resume_continues_exactly_as_the_uninterrupted_run(halves, augmentations):
    settings = TrialSettings(lr=3e-3, freeze_depth=2, batch_size=32, augmentations=augmentations)
    run = fine_tune(settings, SPEC, halves)
    first, state = next(run)
    saved = state()
    assert not any(k.startswith(("stages.0.", "stages.1.")) for k in saved["model"])  # frozen: not saved
    rest = [m for m, _ in fine_tune(settings, SPEC, halves, resume=saved)]
    assert [m["epoch"] for m in rest] == [2, 3]
    straight = [m for m, _ in fine_tune(settings, SPEC, halves)]
    # deterministic: the same losses and accuracies to the last bit, not merely close
    assert [_untimed(m) for m in rest] == [_untimed(m) for m in straight[1:]]


@pytest.mark.slow
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


@pytest.mark.slow
def test_same_seed_same_result(halves):
    settings = TrialSettings(lr=1e-3, freeze_depth=4, batch_size=32, augmentations=(("crop", 0.5),))
    spec = TrialSpec(ModelSpec("resnet18", "none"), max_epochs=1)
    a, b = (list(fine_tune(settings, spec, halves))[-1][0] for _ in range(2))
    timings = ("train_s", "eval_s", "data_s")
    assert {k: v for k, v in a.items() if k not in timings} == {k: v for k, v in b.items() if k not in timings}


def noise(counts: list[int], seed: int) -> Split:
    """Images with no signal: a classifier can only learn the class frequencies."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    return Split(torch.randint(0, 256, (len(labels), 3, 32, 32), generator=g, dtype=torch.uint8), labels)


@pytest.mark.slow
def test_balancing_lifts_the_rare_class_on_imbalanced_data():
    """11:1 train classes, balanced validation, no signal: unbalanced training predicts the
    common class everywhere; weighted loss and oversampling must give the rare one its share."""
    data = Dataset(noise([176, 16], 0), noise([48, 48], 1), ("common", "rare"), "test")
    rare = {}
    for balance in ("none", "weighted", "oversample"):
        spec = TrialSpec(ModelSpec("resnet18", "none"), max_epochs=2, balance=balance)
        rare[balance] = list(fine_tune(TrialSettings(lr=1e-2, freeze_depth=5, batch_size=32), spec, data))[-1][0]["per_class_top1"][1]
    assert rare["none"] < 0.1 and rare["weighted"] > 0.3 and rare["oversample"] > 0.3, rare


@pytest.mark.parametrize("augmentations", [(), (("crop", 0.5),)])
@pytest.mark.slow
def test_cached_frozen_features_train_the_same_as_images(halves, augmentations):
    """The frozen prefix runs once (train too, when nothing augments); results do not change."""
    settings = TrialSettings(lr=1e-3, freeze_depth=3, batch_size=32, augmentations=augmentations)
    spec = TrialSpec(ModelSpec("resnet18", "none"), max_epochs=2)
    fast = [m for m, _ in fine_tune(settings, spec, halves)]
    slow = [m for m, _ in fine_tune(settings, replace(spec, feature_cache_bytes=0), halves)]
    for f, s in zip(fast, slow):
        assert f["train_loss"] == pytest.approx(s["train_loss"], rel=1e-3)
        assert f["val_loss"] == pytest.approx(s["val_loss"], rel=1e-3)
        assert f["top1"] == pytest.approx(s["top1"], abs=0.011)


@pytest.mark.slow
def test_data_seconds_are_the_batch_preparation_part_of_training(halves):
    """`data_s` grows when every augmentation is on and stays a part of `train_s`."""
    spec = TrialSpec(ModelSpec("resnet18", "none"), max_epochs=1)
    runs = {}
    for label, augs in (("none", ()), ("all", tuple((n, 1.0) for n in NAMES))):
        settings = TrialSettings(lr=1e-3, freeze_depth=0, batch_size=32, augmentations=augs)
        runs[label] = list(fine_tune(settings, spec, halves))[-1][0]
    for m in runs.values():
        assert 0 < m["data_s"] < m["train_s"]
    assert runs["all"]["data_s"] > 3 * runs["none"]["data_s"]


FAULTS_PER_BATCH = """
import resource, sys, torch
from tune_search.trainable.augment import build_pipeline
from tune_search.trainable.trial import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
torch.set_num_threads(1)
images = torch.randint(0, 256, (64, 3, 64, 64), dtype=torch.uint8)
pipeline = build_pipeline({"crop": 0.5, "affine": 0.5, "blur": 0.5, "contrast": 0.5}, 64)
model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3))
def step():
    model(pipeline(images)).sum().backward()
for _ in range(3):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    step()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10)
"""


def faults_per_batch(mode: str) -> float:
    out = subprocess.run([sys.executable, "-c", FAULTS_PER_BATCH, mode], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
@pytest.mark.slow
def test_kept_memory_spares_the_page_faults_of_every_batch():
    """Without it each augment-and-step faults its float buffers back in from the OS (how
    many depends on glibc's adaptive thresholds: the worse of two runs). One float batch
    spans 768 pages; a step touches several such buffers."""
    assert keep_freed_memory()
    default = max(faults_per_batch("default") for _ in range(2))
    kept = faults_per_batch("keep")
    assert default > 1000 and kept < 400, (default, kept)


def test_a_designed_run_overrides_model_weights_balance_and_budget():
    from tune_search.trainable.models import ModelSpec
    from tune_search.trainable.trial import TrialSpec, spec_for

    spec = TrialSpec(model=ModelSpec("efficientnet_lite0"), max_epochs=3)
    assert spec_for(spec, {"lr": 0.01, "model": "efficientnet_lite0", "weights": "auto", "oversample_to": None, "max_epochs": None}) == spec
    other = spec_for(spec, {"model": "resnet18", "weights": "none", "oversample_to": 40, "max_epochs": 5})
    assert other.model == ModelSpec("resnet18", "none") and (other.balance, other.oversample_to, other.max_epochs) == ("oversample", 40, 5)
    assert spec_for(spec, {"weights": "none"}).model == ModelSpec("efficientnet_lite0", "none")


@pytest.mark.slow
def test_frozen_features_are_computed_by_the_first_trial_and_mapped_by_the_next(tmp_path, monkeypatch):
    """With the images in the cache, the first trial of a frozen prefix writes its features beside
    them; a second trial (and run) with the same prefix computes none and trains to the same
    bits, and both equal a run on images held in memory."""
    from tune_search.trainable.data import DataSpec, load_dataset
    from tune_search.trainable.models import StagedClassifier

    spec_data = DataSpec(source="planted", image_size=32, train_size=120, val_size=60)
    cached, in_memory = load_dataset(replace(spec_data, cache=str(tmp_path))), load_dataset(spec_data)
    images_through_prefix = []
    real = StagedClassifier.frozen_features
    monkeypatch.setattr(StagedClassifier, "frozen_features", lambda self, x: images_through_prefix.append(len(x)) or real(self, x))
    settings = TrialSettings(lr=1e-3, freeze_depth=3, batch_size=32)
    spec = TrialSpec(ModelSpec("resnet18", "none"), max_epochs=2)
    runs = []
    for data in (cached, cached, in_memory):
        images_through_prefix.clear()
        runs.append(([_untimed(m) for m, _ in fine_tune(settings, spec, data)], sum(images_through_prefix)))
    assert runs[0][1] == 2 + 120 + 60  # a probe image per split, then every image once
    assert runs[1][1] == 2  # the probes only: the features were mapped
    assert runs[2][1] == runs[0][1]
    assert runs[0][0] == runs[1][0] == runs[2][0]
    assert sorted(p.name for p in (cached.entry / "features").rglob("*.npy")) and len(list((cached.entry / "features").rglob("*.npy"))) == 2
    other = TrialSettings(lr=1e-3, freeze_depth=2, batch_size=32)  # another prefix: its own features
    images_through_prefix.clear()
    list(fine_tune(other, spec, cached))
    assert sum(images_through_prefix) == 2 + 120 + 60 and len(list((cached.entry / "features").rglob("*.npy"))) == 4


FEATURES_MEMORY = """
import sys, torch
from pathlib import Path
from tune_search.trainable.data import Split
from tune_search.trainable.models import ModelSpec, build_model
from tune_search.trainable.trial import TrialSpec, cached_features

def kb(field):
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(field))

torch.manual_seed(0)
split = Split(torch.randint(0, 256, (6000, 3, 64, 64), dtype=torch.uint8), torch.zeros(6000, dtype=torch.long))
model = build_model(ModelSpec("efficientnet_lite0", "none"), 2, 1)
spec = TrialSpec(ModelSpec("efficientnet_lite0", "none"), max_epochs=1, feature_cache_bytes=int(sys.argv[2]), eval_batch_size=64)
shared = None if sys.argv[1] == "memory" else Path(sys.argv[1])
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # the peak (VmHWM) starts again from the memory in use now
before = kb("VmRSS:")
features = cached_features(model, split, spec, torch.device("cpu"), None, shared)
grew = (kb("VmHWM:") - before) * 1024
print(grew, features.images.numel() * 4, float(features.images[::500].double().sum()))
"""


@pytest.mark.slow  # two processes that each build a model and run its stem over 6,000 images
def test_shared_features_are_written_a_batch_at_a_time(tmp_path):
    """Features kept in the cache entry cost one batch of memory while they are computed
    (here 786 MB of them, beyond the in-memory bound of 64 MB: 64 MB measured), and equal
    those computed in memory, which hold them whole."""

    def run(where: str, bound: int) -> list[str]:
        return subprocess.run([sys.executable, "-c", FEATURES_MEMORY, where, str(bound)], capture_output=True, text=True, check=True).stdout.split()

    grew, size, checksum = run(str(tmp_path), 64 << 20)
    grew_in_memory, size_in_memory, checksum_in_memory = run("memory", 1 << 30)
    assert int(size) == int(size_in_memory) > 350e6 and checksum == checksum_in_memory
    assert int(grew_in_memory) > int(size), grew_in_memory  # held whole
    assert int(grew) < int(size) / 4, grew  # one batch's forward pass (64 images), not the features
    assert len(list(tmp_path.glob("*.npy"))) == 1


@given(st.integers(16, 1024))
def test_an_evaluation_batch_is_the_largest_power_of_two_whose_input_fits(side):
    from tune_search.trainable.trial import EVAL_INPUT_BYTES, eval_batch_for

    batch, image = eval_batch_for(side), 3 * side * side * 4
    assert batch & (batch - 1) == 0 and 16 <= batch <= 256
    assert batch * image <= EVAL_INPUT_BYTES or batch == 16  # a floor: 16 images at any size
    assert 2 * batch * image > EVAL_INPUT_BYTES or batch == 256
    assert (eval_batch_for(32), eval_batch_for(224), eval_batch_for(448)) == (256, 64, 16)

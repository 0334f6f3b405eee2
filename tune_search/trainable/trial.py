"""One trial: a typed view of Tune's config, the fine-tune epochs, and the thin Ray adapter."""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import functools
import hashlib
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from tune_search.trainable import imagecache
from tune_search.trainable.augment import build_pipeline, strengths_in
from tune_search.trainable.data import Dataset, Split, balanced_order, class_weights
from tune_search.trainable.declared import Declaration, catalog
from tune_search.trainable.hold import maybe_hold
from tune_search.trainable.hyperparameters import BY_NAME, settings_in
from tune_search.trainable.loop import (
    autocast,
    classification_metrics,
    cpu_has_bf16,
    per_class_accuracy,
    predict,
    train_one_epoch,
)
from tune_search.trainable.models import FromFeatures, ModelSpec, StagedClassifier, build_model, family_of
from tune_search.trainable.staging import checkpoint_folder, parent_folder, remove_stale

CHECKPOINT_FILE = "state.pt"
WEIGHTS_ONLY = ("epoch", "model")  # what a finished trial's kept checkpoint holds


@dataclass(frozen=True)
class TrialSettings:
    """The hyperparameters one trial trains with, built once from Tune's flat config: one
    field per row of `tune_search.trainable.hyperparameters`, then the augmentations and the seed."""

    lr: float
    freeze_depth: int
    weight_decay: float = BY_NAME["weight_decay"].default
    batch_size: int = BY_NAME["batch_size"].default
    label_smoothing: float = BY_NAME["label_smoothing"].default
    augmentations: tuple[tuple[str, float], ...] = ()  # switched-on (name, strength), registry order
    seed: int | None = None  # overrides the run's seed (replicates of a designed study)

    @classmethod
    def from_config(cls, config: Mapping) -> TrialSettings:
        return cls(
            **settings_in(config),
            augmentations=tuple(strengths_in(config).items()),
            seed=None if config.get("seed") is None else int(config["seed"]),
        )


@dataclass(frozen=True)
class TrialSpec:
    """What every trial of one search shares."""

    model: ModelSpec
    max_epochs: int
    seed: int = 0
    balance: str = "none"  # none | oversample | weighted
    oversample_to: int | None = None  # images per class with oversample; None: the largest class
    precision: str = "auto"  # auto | fp32 | bf16
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    eval_batch_size: int = 256  # a run's: `eval_batch_for` its image size
    feature_cache_bytes: int = 1 << 30  # frozen-prefix features held in memory up to this (in the cache entry: any size the disk holds); 0: never
    # batch-form augmentation, frozen BatchNorm folded into its convolutions, and the
    # frozen-prefix cache; False: v2 transforms image by image and every stage run as built,
    # every step (the reference the fast path is checked against)
    fast_path: bool = True
    declared: tuple[Declaration, ...] = ()  # the space file's own augmentations and the policy arms'
    memory_bytes: int = 0  # each trial's Ray memory request (its measured peak, `tune_search.memory`); 0: none


# one evaluation batch's float input at most: the batch's activations grow with it, and an
# evaluation batch of 256 at 224 px held more than the training step of 64 beside it
EVAL_INPUT_BYTES = 64 << 20


def eval_batch_for(side: int) -> int:
    """Images per evaluation batch at `side` px: 256 up to 128 px, then the largest power of two
    whose float input fits EVAL_INPUT_BYTES (64 at 224 px, 16 at 448 px), at least 16."""
    fits = EVAL_INPUT_BYTES // (3 * side * side * 4)
    return max(16, min(256, 1 << max(0, fits.bit_length() - 1)))


# a run's own model, weights, class balance and budget, over the search's TrialSpec
SPEC_KEYS = ("model", "weights", "oversample_to", "max_epochs")


def spec_for(spec: TrialSpec, config: Mapping) -> TrialSpec:
    """`spec` with the overrides a designed run's config carries (SPEC_KEYS): `explain`
    trains other models, random init, oversampled classes and longer budgets."""
    changes: dict = {}
    if "model" in config or "weights" in config:
        changes["model"] = ModelSpec(name=config.get("model", spec.model.name), weights=config.get("weights", spec.model.weights))
    if config.get("oversample_to") is not None:
        changes |= {"balance": "oversample", "oversample_to": int(config["oversample_to"])}
    if config.get("max_epochs") is not None:
        changes["max_epochs"] = int(config["max_epochs"])
    return dataclasses.replace(spec, **changes) if changes else spec


def device_of(spec: TrialSpec) -> torch.device:
    return torch.device("cuda" if spec.gpus_per_trial > 0 and torch.cuda.is_available() else "cpu")


def amp_dtype(spec: TrialSpec, device: torch.device) -> torch.dtype | None:
    """bf16 autocast, or None for fp32. `auto`: bf16 on GPUs that have it, and on CPUs with
    bf16 units for the model families that it speeds up there."""
    if spec.precision != "auto":
        return torch.bfloat16 if spec.precision == "bf16" else None
    if device.type == "cuda":
        fast = torch.cuda.is_bf16_supported()
    else:
        fast = family_of(spec.model.name).cpu_bf16 and cpu_has_bf16()
    return torch.bfloat16 if fast else None


def _on(device: torch.device, split: Split) -> Split:
    # a GPU trial keeps its (uint8) training images on the GPU: no host-to-device copy per step
    return Split(split.images.to(device), split.labels.to(device)) if device.type == "cuda" else split


def cached_features(model: StagedClassifier, split: Split, spec: TrialSpec, device, amp, shared: Path | None = None) -> Split | None:
    """The frozen prefix's output for every image, computed once (frozen stages are
    deterministic: eval-mode BatchNorm, no dropout), or None when it would not fit. With
    `shared` (a folder in the images' cache entry) the features are kept there, keyed by the
    frozen weights, written a batch at a time (memory: one batch, whatever their size; disk:
    checked), and every other trial (and run) with the same prefix maps them instead. Without
    it, or without room there, they are held in memory when they take at most
    `spec.feature_cache_bytes`."""
    if model.freeze_depth == 0 or not len(split) or not spec.fast_path or spec.feature_cache_bytes <= 0:
        return None
    model.eval()
    with torch.no_grad(), autocast(device, amp):
        probe = model.frozen_features(split.images[:1].to(device))

    def batches() -> Iterator[torch.Tensor]:
        with torch.no_grad(), autocast(device, amp):
            for i in range(0, len(split), spec.eval_batch_size):
                yield model.frozen_features(split.images[i : i + spec.eval_batch_size].to(device)).float().cpu()

    if shared is not None:
        features = shared_features(shared / f"{features_key(model, amp, device)}.npy", batches, (len(split), *probe.shape[1:]))
        if features is not None:
            return Split(features, split.labels)
    if probe.numel() * 4 * len(split) > spec.feature_cache_bytes:
        return None
    features, row = torch.empty(len(split), *probe.shape[1:]), 0
    for batch in batches():  # filled in place: the features and one batch, never a second copy
        features[row : row + len(batch)] = batch
        row += len(batch)
    return Split(features, split.labels)


def features_key(model: StagedClassifier, amp, device) -> str:
    """What a frozen prefix's features depend on: its weights and buffers (after folding), the
    input normalisation, the autocast type, the device kind and the thread count (results stay
    bitwise those of a run that computed its own)."""
    h = hashlib.sha256(f"{amp}|{device.type}|{torch.get_num_threads()}|{model.freeze_depth}".encode())
    for name, tensor in [("mean", model.mean), ("std", model.std), *model.stages[: model.freeze_depth].state_dict().items()]:
        h.update(name.encode())
        h.update(tensor.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:32]


def shared_features(path: Path, batches: Callable[[], Iterator[torch.Tensor]], shape: tuple[int, ...]) -> torch.Tensor | None:
    """The float32 features of `shape` in `path` (.npy), written there a batch at a time by
    whichever trial comes first (the others wait on its lock), then mapped read-only, as the
    images are (`imagecache.Part.images`); None when the disk has no room for them."""
    import numpy as np
    from filelock import FileLock

    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path.with_suffix(".lock"))):
        if not path.is_file():
            if shutil.disk_usage(path.parent).free < 2 * 4 * math.prod(shape):
                return None
            partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
            try:
                with open(partial, "wb") as f:  # written, not mapped: the pages never count as this process's memory
                    np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": shape})
                    for batch in batches():
                        f.write(memoryview(batch.contiguous().numpy()).cast("B"))
                partial.replace(path)
            finally:
                partial.unlink(missing_ok=True)
    return imagecache.read_only(np.load(path, mmap_mode="r", allow_pickle=False))


def trial_model(settings: TrialSettings, spec: TrialSpec, data: Dataset, device: torch.device) -> StagedClassifier:
    model = build_model(spec.model, data.num_classes, settings.freeze_depth)
    if spec.fast_path and len(data.train):
        model.fold_frozen_batchnorm(data.train.images[:4])
    return model.to(device, memory_format=torch.channels_last)


def _frozen_prefixes(settings: TrialSettings) -> tuple[str, ...]:
    return tuple(f"stages.{i}." for i in range(settings.freeze_depth))


def load_trained(model: nn.Module, state: dict, settings: TrialSettings) -> None:
    """Load a checkpoint's weights: every trained one, none of the frozen (not saved)."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith(_frozen_prefixes(settings)) for k in missing):
        raise ValueError(f"checkpoint does not fit this trial's model: missing {missing}, unexpected {unexpected}")


@dataclass
class Training:
    """What one trial trains with, set up once: the model, its optimiser and schedule, the
    loss, the augmentation pipeline, the batch order's generator and the inputs each pass
    runs on (images, or a frozen prefix's cached features)."""

    model: StagedClassifier
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    loss_fn: nn.Module
    pipeline: Callable | None
    generator: torch.Generator
    per_class: int | None  # images drawn per class and epoch when oversampling
    device: torch.device
    amp: torch.dtype | None
    train: Split
    train_net: nn.Module
    val: Split
    val_net: nn.Module

    def state(self, epoch: int, frozen: tuple[str, ...]) -> dict:
        """The checkpoint after `epoch`: frozen stages equal the pretrained weights the trial
        starts from and are not saved again."""
        return {
            "epoch": epoch,
            "model": {k: v for k, v in self.model.state_dict().items() if not k.startswith(frozen)},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
        }

    def restore(self, state: dict, settings: TrialSettings) -> int:
        """Continue from a checkpoint; the epoch it was taken after."""
        load_trained(self.model, state["model"], settings)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        return int(state["epoch"])


def set_up(settings: TrialSettings, spec: TrialSpec, data: Dataset) -> Training:
    """The model, optimiser, cosine schedule over the whole budget, loss (class weights with
    `weighted`), augmentation pipeline and the inputs of both passes, seeded."""
    seed = spec.seed if settings.seed is None else settings.seed
    torch.manual_seed(seed)
    device = device_of(spec)
    amp = amp_dtype(spec, device)
    model = trial_model(settings, spec, data, device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    counts = data.train.class_counts(data.num_classes)
    per_class = (spec.oversample_to or int(counts.max())) if spec.balance == "oversample" else None
    weight = class_weights(counts).to(device) if spec.balance == "weighted" else None
    loss_fn = nn.CrossEntropyLoss(weight=weight, label_smoothing=settings.label_smoothing)
    epoch_len = len(balanced_order(data.train.labels, per_class, torch.Generator()))
    steps = spec.max_epochs * math.ceil(epoch_len / settings.batch_size)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    pipeline = build_pipeline(dict(settings.augmentations), data.train.images.shape[-1], spec.fast_path, catalog(spec.declared))
    inputs = pass_inputs(model, pipeline, spec, data, device, amp)
    return Training(model, optimizer, scheduler, loss_fn, pipeline, torch.Generator().manual_seed(seed), per_class, device, amp, *inputs)


def pass_inputs(model: StagedClassifier, pipeline, spec: TrialSpec, data: Dataset, device, amp) -> tuple[Split, nn.Module, Split, nn.Module]:
    """(train inputs, the net they go through, val inputs, its net). Frozen stages cost
    nothing twice: validation always, and training when nothing augments the images, run
    the trainable rest on features computed once."""
    val, val_net = data.val, model
    train, train_net = _on(device, data.train), model
    shared = (lambda part: None) if data.entry is None else (lambda part: data.entry / "features" / part)  # noqa: E731
    val_features = cached_features(model, data.val, spec, device, amp, shared("val"))
    if val_features is not None:
        val, val_net = val_features, FromFeatures(model)
        if pipeline is None:
            train_features = cached_features(model, data.train, spec, device, amp, shared("train"))
            if train_features is not None:
                train, train_net = _on(device, train_features), FromFeatures(model)
    return train, train_net, val, val_net


def epoch(t: Training, settings: TrialSettings, spec: TrialSpec, data: Dataset) -> dict:
    """Train one epoch and evaluate: the epoch's metrics."""
    started = time.perf_counter()
    order = balanced_order(data.train.labels, t.per_class, t.generator)
    metrics = train_one_epoch(
        t.train_net, t.train, order, optimizer=t.optimizer, scheduler=t.scheduler, loss_fn=t.loss_fn,
        batch_size=settings.batch_size, pipeline=t.pipeline, device=t.device, amp_dtype=t.amp,
    )  # fmt: skip
    trained = time.perf_counter()
    logits = predict(t.val_net, t.val, batch_size=spec.eval_batch_size, device=t.device, amp_dtype=t.amp)
    metrics |= classification_metrics(logits, data.val.labels)
    metrics |= {"train_s": trained - started, "eval_s": time.perf_counter() - trained}
    metrics["per_class_top1"] = per_class_accuracy(logits, data.val.labels, data.num_classes)
    return metrics


def fine_tune(
    settings: TrialSettings, spec: TrialSpec, data: Dataset, resume: dict | None = None
) -> Iterator[tuple[dict[str, float], Callable[[], dict] | None]]:
    """Train epoch by epoch; yield each epoch's metrics and a function returning the state
    to checkpoint (None after a diverged epoch, the last). `resume` is such a state, to
    continue after its epoch."""
    t = set_up(settings, spec, data)
    start = t.restore(resume, settings) if resume is not None else 0
    frozen = _frozen_prefixes(settings)
    for e in range(start + 1, spec.max_epochs + 1):
        metrics = epoch(t, settings, spec, data)
        if not math.isfinite(metrics["train_loss"]):
            # the trial's last report, not an exception: an error would make Ray retry it
            # from its checkpoint (FailureConfig), and it would diverge again
            yield {"epoch": e, **metrics, "diverged": f"training loss became {metrics['train_loss']} in epoch {e} at lr {settings.lr:g}"}, None
            return
        yield {"epoch": e, **metrics}, (lambda e=e: t.state(e, frozen))


@functools.cache  # a process setting: once per process, not once per trial
def keep_freed_memory() -> bool:
    """Have glibc keep freed memory for reuse instead of handing it back to the OS. By
    default a freed block of a few MB (one float batch) goes back, and the next batch
    page-faults it in again, thousands of faults per augmented batch (the test counts them).
    Returns whether it took effect (glibc only)."""
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c")).mallopt
    except (OSError, AttributeError, TypeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(mallopt(m_mmap_threshold, 256 << 20)) and bool(mallopt(m_trim_threshold, 1 << 30))


def load_checkpoint(folder: str | Path) -> dict:
    return torch.load(Path(folder) / CHECKPOINT_FILE, map_location="cpu", weights_only=True)


def keep_weights_only(folder: str | Path) -> int:
    """Reduce a finished trial's checkpoint to its epoch and trained weights; the bytes freed.
    Ray never resumes a finished trial, so its optimizer, scheduler and random states (AdamW's
    two moments are twice the trained weights) only served a resume that cannot happen now."""
    path = Path(folder) / CHECKPOINT_FILE
    state = load_checkpoint(folder)
    if set(state) <= set(WEIGHTS_ONLY):
        return 0
    before = path.stat().st_size
    partial = path.with_name(f".{path.name}.partial")
    torch.save({k: state[k] for k in WEIGHTS_ONLY}, partial)
    partial.replace(path)  # a kill mid-write leaves the whole old checkpoint
    return before - path.stat().st_size


def train_trial(config: dict, *, data: Dataset, spec: TrialSpec) -> None:
    """Ray Tune function trainable: report every epoch with a checkpoint, resume from one."""
    import ray
    from ray import tune

    node_id = ray.get_runtime_context().get_node_id()  # which node of a cluster ran the trial
    # Ray pins OMP threads to 1 in workers; use exactly this trial's CPU share instead
    torch.set_num_threads(max(1, int(spec.cpus_per_trial)))
    keep_freed_memory()
    remove_stale(parent_folder())
    experiment = tune.get_context().get_experiment_name()
    checkpoint = tune.get_checkpoint()
    resume = None
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            resume = load_checkpoint(folder)
    for metrics, state in fine_tune(TrialSettings.from_config(config), spec, data, resume):
        if state is None:  # diverged: reported without a checkpoint, and the trial ends
            tune.report({**metrics, "node_id": node_id})
            return
        maybe_hold(experiment, metrics["epoch"], "before")
        with checkpoint_folder() as folder:
            torch.save(state(), folder / CHECKPOINT_FILE)
            tune.report({**metrics, "node_id": node_id}, checkpoint=tune.Checkpoint.from_directory(folder))
        maybe_hold(experiment, metrics["epoch"], "after")

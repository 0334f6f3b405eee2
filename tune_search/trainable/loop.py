"""Pure train and eval passes over uint8 tensors; each returns a dict of metrics."""

from __future__ import annotations

import contextlib
import math
import time

import torch
from torch import nn

from tune_search.trainable.augment import Pipeline
from tune_search.trainable.data import Split


def autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def cpu_has_bf16() -> bool:
    """Whether this CPU has bf16 matrix instructions (AVX512-BF16 or AMX); without them
    bf16 autocast is emulated and slower than fp32."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)


def _model_input(images: torch.Tensor, device: torch.device, pipeline: Pipeline | None) -> torch.Tensor:
    """A batch on the model's device, augmented there, in the model's layout (channels-last)."""
    images = images.to(device, non_blocking=True)
    if pipeline is not None:
        images = pipeline(images)
    return images.contiguous(memory_format=torch.channels_last)


def train_one_epoch(
    model: nn.Module,
    split: Split,
    order: torch.Tensor,
    *,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    loss_fn: nn.Module,
    batch_size: int,
    pipeline: Pipeline | None,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
) -> dict[str, float]:
    """One pass over `order` (indices into `split`); returns the mean training loss and
    `data_s`, the seconds spent preparing batches (indexing, augmentation, copies) rather
    than stepping the model. Images are augmented where the model runs: on the GPU when the
    trial has one (there `data_s` counts launching the work, which runs asynchronously)."""
    model.train()
    total, seen, data_s = torch.zeros((), device=device), 0, 0.0
    order = order.to(split.images.device)
    for start in range(0, len(order), batch_size):
        began = time.perf_counter()
        index = order[start : start + batch_size]
        # index_select, not images[index]: much faster for a uint8 batch on CPUs
        images = _model_input(split.images.index_select(0, index), device, pipeline)
        labels = split.labels.index_select(0, index).to(device, non_blocking=True)
        data_s += time.perf_counter() - began
        with autocast(device, amp_dtype):
            loss = loss_fn(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total += loss.detach() * len(index)
        seen += len(index)
    return {"train_loss": float(total) / max(seen, 1), "data_s": data_s}


@torch.no_grad()
def predict(
    model: nn.Module,
    split: Split,
    *,
    batch_size: int,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    pipeline: Pipeline | None = None,
) -> torch.Tensor:
    """Logits (N, classes) in float32 for every image of `split`, in order, each batch
    passed through `pipeline` first when one is given."""
    model.eval()
    outputs = []
    for start in range(0, len(split), batch_size):
        images = _model_input(split.images[start : start + batch_size], device, pipeline)
        with autocast(device, amp_dtype):
            outputs.append(model(images).float())
    return torch.cat(outputs).cpu()


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Top-1 and top-5 accuracy as fractions, and mean cross-entropy. With 5 classes or
    fewer every label is in the top 5: top-5 is NaN there (not a measurement)."""
    hits = logits.topk(min(5, logits.shape[1]), dim=1).indices == labels[:, None]
    return {
        "top1": hits[:, 0].float().mean().item(),
        "top5": hits.any(dim=1).float().mean().item() if logits.shape[1] > 5 else math.nan,
        "val_loss": nn.functional.cross_entropy(logits, labels).item(),
    }


def per_class_accuracy(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> list[float]:
    """Top-1 per class (NaN for a class without validation images)."""
    hits = torch.bincount(labels[logits.argmax(1) == labels], minlength=num_classes).float()
    counts = torch.bincount(labels, minlength=num_classes).float()
    return (hits / counts).tolist()

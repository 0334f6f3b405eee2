"""Probes of a trained clean model, measured after its training: affinity (how far each
augmentation moves the validation images from what the model learned) and crop sensitivity
(how often crops that keep less of the image change its answer)."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torchvision.transforms.v2 import functional as F

from tune_search.trainable.augment import build_pipeline
from tune_search.trainable.data import Dataset, Split
from tune_search.trainable.declared import catalog
from tune_search.trainable.loop import classification_metrics, predict
from tune_search.trainable.trial import TrialSettings, TrialSpec, amp_dtype, device_of, load_trained, trial_model


def affinity(settings: TrialSettings, spec: TrialSpec, data: Dataset, state: dict, strengths: Mapping[str, float]) -> dict[str, float]:
    """Affinity (Gontijo-Lopes et al., 2021) of each augmentation at its strength: top-1 on
    validation images passed through it minus top-1 on the clean images, for the model in
    `state` (a checkpoint of a trial trained without augmentation). Its own evaluation step,
    after training; each augmentation sees its own repeatable draws."""
    device = device_of(spec)
    amp = amp_dtype(spec, device)
    model = trial_model(settings, spec, data, device)
    load_trained(model, state["model"], settings)
    clean = classification_metrics(predict(model, data.val, batch_size=spec.eval_batch_size, device=device, amp_dtype=amp), data.val.labels)["top1"]
    out = {}
    rng = torch.get_rng_state()
    entries = catalog(spec.declared)
    for name, strength in strengths.items():
        torch.manual_seed(spec.seed)
        pipeline = build_pipeline({name: strength}, data.val.images.shape[-1], spec.fast_path, entries)
        logits = predict(model, data.val, batch_size=spec.eval_batch_size, device=device, amp_dtype=amp, pipeline=pipeline)
        out[name] = classification_metrics(logits, data.val.labels)["top1"] - clean
    torch.set_rng_state(rng)
    return out


CROP_AREAS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)  # kept fractions of the image


def crop_sensitivity(settings: TrialSettings, spec: TrialSpec, data: Dataset, state: dict, areas=CROP_AREAS) -> list[dict]:
    """For the model in `state` (trained without augmentation): per kept area and class, how
    often its prediction changes when a validation image is cropped to that fraction of its
    area (a square at a random place, resized back), and its top-1 on those crops. A crop
    that loses the object changes the prediction; one that keeps it should not."""
    device = device_of(spec)
    amp = amp_dtype(spec, device)
    model = trial_model(settings, spec, data, device)
    load_trained(model, state["model"], settings)
    images, labels = data.val.images, data.val.labels
    clean = predict(model, data.val, batch_size=spec.eval_batch_size, device=device, amp_dtype=amp).argmax(1)
    side = images.shape[-1]
    generator = torch.Generator().manual_seed(spec.seed)
    rows = []
    for area in areas:
        kept = max(1, round(side * math.sqrt(area)))
        corners = torch.randint(0, side - kept + 1, (len(images), 2), generator=generator).tolist()
        cropped = torch.stack([F.resized_crop(image, top, left, kept, kept, [side, side], antialias=True) for image, (top, left) in zip(images, corners)])
        logits = predict(model, Split(cropped, labels), batch_size=spec.eval_batch_size, device=device, amp_dtype=amp)
        predicted = logits.argmax(1)
        for c, name in enumerate(data.classes):
            mine = labels == c
            if mine.any():
                changed = (predicted[mine] != clean[mine]).float().mean().item()
                correct = (predicted[mine] == labels[mine]).float().mean().item()
                rows.append({"area": area, "class": name, "images": int(mine.sum()), "changed": changed, "top1": correct})
    return rows

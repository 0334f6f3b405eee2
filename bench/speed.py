"""Speed benchmark: where a trial's time goes, and what a whole search costs against a plain
Ray Tune search written the usual way. Not a test: it takes ~45 minutes on 2 cores and its
figures depend on the machine.

    .venv/bin/python bench/speed.py [--sections augment,depthwise,steps,precision,search,verdicts,screen]

Sections (each prints a markdown table; all figures also go to results/bench/speed.json):
  augment    each augmentation step alone, the six and all twelve, back to back: the batch form
             against kornia.augmentation (the `bench` extra) at the same registry ranges
  depthwise  the bare training step with oneDNN's depthwise weight gradient everywhere against
             tune-search's where the kernel outgrows the map, at 32, 64 and 128 px
  steps      per-trial training images/s against the bare forward+backward+optimizer step of the
             same model, size and freeze depth (0, middle, max), without and with augmentation,
             and the trial's own split of its training time (batch preparation against the rest);
             epoch time classifier-only against full fine-tuning; GFLOP/s against matmul peak
  precision  top-1 and speed, fp32 against bf16 autocast, per model
  search     one search three ways on the same image folder, same configs, seeds and epochs:
             tune-search (ASHA), its trainable at full budget, the plain baseline; and the
             trainable without the fast path
  verdicts   the planted-harm search + screen with and without the fast path
  screen     precision per compute: the screen's intervals against the ablation's, same data
             (the demo's configuration, 12 augmentations; `--screen-data planted`: 5)
  rates      the screen's four verdicts as a whole procedure, by simulation through the real
             analysis (12 augmentations, residual SD 1.5 points): the share of truly null
             augmentations called harmless, how often a 1.5-point harm is called harmless and a
             1.3-point harm unclear, false hurts/helps over null screens; fixed 2 replicates and
             `seeds: auto`, at equivalence bounds 1 and 1.5 points (no training, ~2 min)
  scale      (not in the default run) decode time, cache size, the driver's peak RSS, a trial's
             peak RSS and first-epoch time for 1,000 / 10,000 / 69,000 Fashion-MNIST images at
             32 / 64 / 128 / 224 px
  start      (not in the default run) the 69,000-image 224 px run started twice: seconds to the
             first trial, the driver's and a trial's RSS
  stream     (not in the default run) a PNG folder read for training three ways: the decoded-image
             cache, Ray Data streaming (read_images every epoch) and Ray Data materialized
  gpu        (not in the default run) resnet18 at 224 px on the GPU: bare step and trial
             images/s, GPU utilisation; `--sections gpu --gpu-dry-run` checks it on a CPU
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import dataclasses
import importlib.util
import json
import math
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from tune_search.config import load_config
from tune_search.export import config_from_row, records_from_results, trials_table
from tune_search.results import ResultsFolder
from tune_search.runs import run_of
from tune_search.trainable.augment import NAMES, REGISTRY, build_pipeline
from tune_search.trainable.data import Dataset, DataSpec, load_dataset
from tune_search.trainable.loop import autocast
from tune_search.trainable.models import ModelSpec, build_model, max_freeze_depth
from tune_search.trainable.trial import TrialSettings, TrialSpec, amp_dtype, fine_tune, keep_freed_memory

# the motivating case's six augmentations; the search's baseline "all + aug" uses them too
SIX = ("crop", "hflip", "affine", "blur", "sharpen", "contrast")


def table(rows: list[dict], columns: list[str]) -> str:
    def cell(v):
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


# ---------------------------------------------------------------- steps


def bare_rate(
    spec: ModelSpec, classes: int, freeze: int, size: int, batch: int, amp, steps: int, fold=True, device=torch.device("cpu"), fast_depthwise=True
) -> float:
    """Images/s of the bare step: one fixed uint8 batch already in memory (on `device`),
    forward, backward, AdamW step; frozen stages under no_grad, their BatchNorm folded
    (`fold`), as in a trial. Nothing else. The best of three timed blocks: these machines drift
    by ±10 % and more within a minute."""
    torch.manual_seed(0)
    x = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8).contiguous(memory_format=torch.channels_last)
    model = build_model(spec, classes, freeze)
    if not fast_depthwise:
        plain_depthwise(model)
    if fold:
        model.fold_frozen_batchnorm(x[:4])
    model = model.to(device, memory_format=torch.channels_last)
    x = x.to(device)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    y = torch.randint(0, classes, (batch,), device=device)
    model.train()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def step():
        with autocast(device, amp):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(4):
        step()
    best = math.inf
    for _ in range(3):
        sync()
        started = time.perf_counter()
        for _ in range(steps):
            step()
        sync()
        best = min(best, time.perf_counter() - started)
    return steps * batch / best


def plain_depthwise(model: torch.nn.Module) -> None:
    """Undo `use_fast_depthwise`: every depthwise layer back to the convolution it replaced,
    the same parameters (oneDNN's weight gradient everywhere)."""
    from timm.layers import Conv2dSame

    from tune_search.trainable.depthwise import DepthwiseConv2d

    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, DepthwiseConv2d):
                kind = Conv2dSame if child.same else torch.nn.Conv2d
                conv = kind(child.in_channels, child.out_channels, child.kernel_size, child.stride, **({} if child.same else {"padding": child.padding}),
                            groups=child.groups, bias=child.bias is not None, device="meta")  # fmt: skip
                conv.weight, conv.bias = child.weight, child.bias
                setattr(parent, name, conv)


def section_depthwise(args) -> dict:
    """The bare training step with oneDNN's depthwise weight gradient everywhere and with
    `tune_search.trainable.depthwise` where the kernel outgrows the map."""
    torch.set_num_threads(args.threads)
    model = ModelSpec(args.model, "auto")
    top = max_freeze_depth(args.model)
    rows = []
    for size in (32, 64, 128):
        for freeze in (0, top // 2):
            before = bare_rate(model, 10, freeze, size, 64, None, args.steps, fast_depthwise=False)
            after = bare_rate(model, 10, freeze, size, 64, None, args.steps)
            rows.append({"px": size, "freeze": freeze, "oneDNN img/s": before, "tune-search img/s": after, "speed-up": after / before})
            print(rows[-1], flush=True)
    print(f"\n## Depthwise weight gradient: {args.model}, batch 64, {args.threads} thread(s), fp32, bare step\n")
    print(table(rows, ["px", "freeze", "oneDNN img/s", "tune-search img/s", "speed-up"]))
    return {"rows": rows}


def trial_run(data: Dataset, spec: TrialSpec, freeze: int, augs: tuple[str, ...], strength=0.5, batch=64) -> dict:
    """One real trial (fine_tune, as Ray runs it), timed from the start. Rates come from the
    epochs after the first (warm caches, no set-up)."""
    settings = TrialSettings(lr=1e-3, freeze_depth=freeze, batch_size=batch, augmentations=tuple((a, strength) for a in augs))
    started = time.perf_counter()
    history = list(m for m, _ in fine_tune(settings, spec, data))
    wall = time.perf_counter() - started
    warm = history[1:] or history
    train_s, data_s = sum(m["train_s"] for m in warm), sum(m["data_s"] for m in warm)
    return {
        "train_ips": len(data.train) * len(warm) / train_s,
        # measured inside the same epochs, so machine drift cancels: batch preparation against the rest
        "data_pct": 100 * data_s / (train_s - data_s),
        "epoch_s": (train_s + sum(m["eval_s"] for m in warm)) / len(warm),
        "wall_per_epoch_s": wall / len(history),  # set-up, the feature cache and validation included
        "top1": history[-1]["top1"],
    }


def training_flops_per_image(spec: ModelSpec, classes: int, size: int) -> float:
    """3x the forward FLOPs (backward costs about twice the forward): torch's FlopCounterMode
    counts the forward exactly but overcounts depthwise convolutions' backward ~40-fold."""
    from torch.utils.flop_counter import FlopCounterMode

    model = build_model(spec, classes, 0).eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.randint(0, 256, (8, 3, size, size), dtype=torch.uint8))
    return 3 * counter.get_total_flops() / 8


def matmul_peak(dtype: torch.dtype, n: int = 2048, reps: int = 10) -> float:
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b
    started = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - started) / 1e9


def kornia_pipeline(strengths: dict[str, float], side: int):
    """The same steps at the same registry ranges as kornia.augmentation modules (per-sample
    parameters, float images in [0, 1]), uint8 in and the model's float input out; None when
    a step has no counterpart here."""
    import kornia.augmentation as K

    made = {
        "crop": lambda r: K.RandomResizedCrop((side, side), scale=r["area"], ratio=r["aspect"], p=1.0),
        "hflip": lambda r: K.RandomHorizontalFlip(p=r["p"]),
        "vflip": lambda r: K.RandomVerticalFlip(p=r["p"]),
        "affine": lambda r: K.RandomAffine(r["degrees"], translate=(r["shift"], r["shift"]), scale=r["scale"], shear=r["shear_degrees"], p=1.0),
        "rotate": lambda r: K.RandomRotation(r["degrees"], p=1.0),
        "blur": lambda r: K.RandomGaussianBlur((r["kernel_px"],) * 2, r["sigma_px"], p=1.0),
        "sharpen": lambda r: K.RandomSharpness(r["factor"], p=r["p"]),
        "contrast": lambda r: K.ColorJitter(contrast=r["factor"], p=1.0),
        "brightness": lambda r: K.ColorJitter(brightness=r["factor"], p=1.0),
        "color": lambda r: K.ColorJitter(saturation=r["saturation"], hue=r["hue_turns"], p=1.0),
        "grayscale": lambda r: K.RandomGrayscale(p=r["p"]),
        "erasing": lambda r: K.RandomErasing(scale=r["area"], p=r["p"]),
    }
    missing = [n for n in strengths if n not in made]
    if missing:  # a registry entry newer than this comparison: its rows go without kornia
        print(f"no kornia counterpart written for {', '.join(missing)} (bench/speed.py kornia_pipeline)")
        return None
    sequence = K.AugmentationSequential(*(made[n](REGISTRY[n].ranges(strengths[n], side)) for n in NAMES if n in strengths))

    def run(images: torch.Tensor) -> torch.Tensor:
        return sequence(images.float().div_(255)).mul_(255).contiguous(memory_format=torch.channels_last)

    return run


def pipeline_costs(size: int, batch: int = 64, reps: int = 20, rounds: int = 5) -> list[dict]:
    """Milliseconds per batch of each augmentation step alone (the crop with its flip, and the
    rest), of the six and of all twelve, back to back at strength 0.5: the batch form
    (tune_search/trainable/batched.py) against kornia.augmentation; the step rows net of what each costs
    with no step (to float, to the model's layout). Variants take turns, `rounds` times, and
    each keeps its fastest round, so drift hits all alike."""
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)
    steps = [("crop + hflip", ("crop", "hflip"))] + [(n, (n,)) for n in NAMES if n not in ("crop", "hflip")]
    steps += [("six", SIX), (f"all {len(NAMES)}", NAMES)]
    forms = {"batch form": lambda names: build_pipeline(dict.fromkeys(names, 0.5), size)}
    if importlib.util.find_spec("kornia"):  # the `bench` extra
        forms["kornia"] = lambda names: kornia_pipeline(dict.fromkeys(names, 0.5), size)
    else:
        print("kornia is not installed (pip install -e '.[bench]'): the batch form alone")
    floors = {"batch form": lambda: images.float().contiguous(memory_format=torch.channels_last)}
    floors["kornia"] = lambda: images.float().div_(255).mul_(255).contiguous(memory_format=torch.channels_last)
    variants = {("conversions", form): floors[form] for form in forms}
    for label, names in steps:
        for form, make in forms.items():
            if (pipeline := make(names)) is not None:
                variants[(label, form)] = lambda p=pipeline: p(images)
    best = dict.fromkeys(variants, math.inf)
    for round_ in range(rounds + 1):
        for key, run in variants.items():
            started = time.perf_counter()
            for _ in range(reps):
                run()
            if round_:  # the first round warms up
                best[key] = min(best[key], (time.perf_counter() - started) / reps * 1e3)
    whole = ("conversions", "six", f"all {len(NAMES)}")
    rows = []
    for label in ["conversions"] + [label for label, _ in steps]:
        row = {"step": label}
        for form in forms:
            net = 0.0 if label in whole else best[("conversions", form)]
            row[f"{form} ms"] = best.get((label, form), math.nan) - net
        if "kornia" in forms:
            row["kornia / batch form"] = row["kornia ms"] / row["batch form ms"] if row["batch form ms"] > 0 else math.nan
        rows.append(row)
    return rows


# entries a space file might declare (configs/declared.yaml has some), and the policies
DECLARED_EXAMPLES = {
    "perspective": {"transform": "RandomPerspective", "at_full": {"distortion_scale": 0.5, "p": 1.0}, "scales": {"distortion_scale": 0.0}},
    "elastic": {"transform": "ElasticTransform", "at_full": {"alpha": 40.0, "sigma": 4.0}, "scales": {"alpha": 0.0}},
    "invert": {"transform": "RandomInvert", "at_full": {"p": 0.5}, "scales": {"p": 0.0}},
    "jpeg": {"transform": "JPEG", "at_full": {"quality": [30, 90]}},
    **{p.lower(): {"transform": p} for p in ("TrivialAugmentWide", "RandAugment", "AutoAugment", "AugMix")},
}


def declared_costs(size: int, batch: int = 64, reps: int = 5, rounds: int = 3) -> list[dict]:
    """Microseconds per image of each declared example at strength 0.5, run image by image
    inside the batch pipeline (they have no batch form), beside the built-ins' batch forms per
    image; the fastest of `rounds`, net of the conversions."""
    from tune_search.trainable.declared import catalog, declare

    entries = catalog(tuple(declare(n, e) for n, e in DECLARED_EXAMPLES.items()))
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)
    names = [*DECLARED_EXAMPLES, "crop", "affine", "blur", "color"]

    def fastest(run) -> float:
        best = math.inf
        for round_ in range(rounds + 1):
            torch.manual_seed(round_)
            started = time.perf_counter()
            for _ in range(reps):
                run()
            if round_:
                best = min(best, (time.perf_counter() - started) / reps / batch * 1e6)
        return best

    floor = fastest(lambda: images.float().contiguous(memory_format=torch.channels_last))
    rows = []
    for name in names:
        pipeline = build_pipeline({name: 0.5}, size, True, entries)
        form = "batch form" if entries[name].batched else "v2, image by image"
        rows.append({"augmentation": name, "form": form, "us per image": fastest(lambda p=pipeline: p(images)) - floor})
    return rows


def section_augment(args) -> dict:
    torch.set_num_threads(args.threads)
    costs = pipeline_costs(args.image_size)
    print(f"\n## Batch augmentation back to back, {args.image_size} px, batch 64, strength 0.5, {args.threads} thread(s), "
          f"ms per batch (steps net of the conversions)\n")  # fmt: skip
    print(table(costs, ["step", "batch form ms", "kornia ms", "kornia / batch form"]) + "\n")
    declared = declared_costs(args.image_size)
    print(f"\n## Declared entries (v2, image by image) beside built-in batch forms, {args.image_size} px, batch 64, strength 0.5, "
          f"{args.threads} thread(s), microseconds per image net of the conversions\n")  # fmt: skip
    print(table(declared, ["augmentation", "form", "us per image"]) + "\n")
    return {"augmentation_ms": costs, "declared_us_per_image": declared}


def section_steps(args) -> dict:
    torch.set_num_threads(args.threads)
    model = ModelSpec(args.model, "auto")
    data = load_dataset(DataSpec(source="fashion-mnist", image_size=args.image_size, train_size=args.step_train_size, val_size=500))
    spec = TrialSpec(model, max_epochs=3, cpus_per_trial=args.threads)
    amp = amp_dtype(spec, torch.device("cpu"))
    top = max_freeze_depth(args.model)
    depths = {"0": 0, "middle": top // 2, "max": top}
    rows, unfolded = [], {}
    for label, freeze in depths.items():
        bare = bare_rate(model, data.num_classes, freeze, args.image_size, 64, amp, args.steps)
        if freeze:
            unfolded[label] = (bare_rate(model, data.num_classes, freeze, args.image_size, 64, amp, args.steps, fold=False), bare)
        variants = (("none", (), True), ("six", SIX, True), (f"all {len(NAMES)}", NAMES, True), ("six, per-image v2", SIX, False))
        for aug_label, augs, fast in variants:
            if not fast and freeze != 0:  # the per-image reference where it tells something
                continue
            run = trial_run(data, dataclasses.replace(spec, fast_path=fast), freeze, augs)
            rows.append(
                {
                    "freeze": f"{label} ({freeze})",
                    "augmentation": aug_label,
                    "bare img/s": bare,
                    "trial img/s": run["train_ips"],
                    "vs bare %": 100 * (bare / run["train_ips"] - 1),
                    "data+aug % of step": run["data_pct"],
                    "epoch s": run["epoch_s"],
                    "wall/epoch s": run["wall_per_epoch_s"],
                }
            )
            print(rows[-1], flush=True)
    flops = training_flops_per_image(model, data.num_classes, args.image_size)
    peak = {str(d): matmul_peak(d) for d in (torch.float32, torch.bfloat16)}
    full = next(r for r in rows if r["freeze"].startswith("0") and r["augmentation"] == "none")
    achieved = flops * full["bare img/s"] / 1e9
    used = "torch.bfloat16" if amp else "torch.float32"
    ratios = {
        aug: next(r for r in rows if r["freeze"].startswith("0") and r["augmentation"] == aug)["wall/epoch s"]
        / next(r for r in rows if r["freeze"].startswith("max") and r["augmentation"] == aug)["wall/epoch s"]
        for aug in ("none", "six")
    }
    print(f"\n## Steps: {args.model} at {args.image_size} px, batch 64, {args.threads} thread(s), "
          f"{'bf16 autocast' if amp else 'fp32'}, {len(data.train)} train / {len(data.val)} val images\n")  # fmt: skip
    print(table(rows, ["freeze", "augmentation", "bare img/s", "trial img/s", "vs bare %", "data+aug % of step", "epoch s", "wall/epoch s"]))
    print(f"\nclassifier-only vs full fine-tuning, wall time per epoch: {ratios['none']:.1f}x faster without "
          f"augmentation, {ratios['six']:.1f}x with the six")  # fmt: skip
    for label, (before, after) in unfolded.items():
        print(f"frozen BatchNorm folded into its convolutions, bare step at freeze {label}: "
              f"{before:.0f} -> {after:.0f} img/s ({after / before:.2f}x)")  # fmt: skip
    print(f"training FLOPs per image {flops / 1e9:.2f} GFLOP; bare step at freeze 0 {achieved:.1f} GFLOP/s = "
          f"{100 * achieved / peak[used]:.0f} % of the measured {used[6:]} matmul peak {peak[used]:.0f} GFLOP/s "
          f"({args.threads} thread(s); fp32 {peak['torch.float32']:.0f}, bf16 {peak['torch.bfloat16']:.0f})")  # fmt: skip
    return {
        "rows": rows,
        "classifier_only_speedup": ratios,
        "bare_unfolded_vs_folded": unfolded,
        "gflop_per_image": flops / 1e9,
        "achieved_gflops": achieved,
        "matmul_peak_gflops": peak,
    }


# ---------------------------------------------------------------- precision


def section_precision(args) -> dict:
    torch.set_num_threads(args.threads)
    data = load_dataset(DataSpec(source="fashion-mnist", image_size=args.image_size, train_size=args.step_train_size, val_size=500))
    rows = []
    for name, weights in (("resnet18", "none"), (args.model, "auto")):
        for precision in ("fp32", "bf16"):
            for seed in range(args.precision_seeds):
                spec = TrialSpec(ModelSpec(name, weights), max_epochs=3, seed=seed, precision=precision, cpus_per_trial=args.threads)
                run = trial_run(data, spec, 0, ())
                rows.append({"model": f"{name} ({'pretrained' if weights == 'auto' else 'random init'})", "precision": precision, "seed": seed,
                             "top1": run["top1"], "train img/s": run["train_ips"]})  # fmt: skip
                print(rows[-1], flush=True)
    frame = pd.DataFrame(rows).groupby(["model", "precision"], sort=False)[["top1", "train img/s"]].mean().reset_index()
    peak = {p: matmul_peak(d) for p, d in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
    flops = {m: training_flops_per_image(ModelSpec(m.split(" ")[0], "none"), data.num_classes, args.image_size) for m in frame["model"]}
    frame["GFLOP/s"] = [flops[m] * ips / 1e9 for m, ips in zip(frame["model"], frame["train img/s"])]
    frame["% of matmul peak"] = [100 * g / peak[p] for g, p in zip(frame["GFLOP/s"], frame["precision"])]
    print(f"\n## Precision: 3 epochs, freeze 0, no augmentation, mean of {args.precision_seeds} seeds, {args.threads} thread(s), "
          f"{args.image_size} px; matmul peak fp32 {peak['fp32']:.0f}, bf16 {peak['bf16']:.0f} GFLOP/s\n")  # fmt: skip
    print(table(frame.to_dict("records"), ["model", "precision", "top1", "train img/s", "GFLOP/s", "% of matmul peak"]))
    return {"rows": rows, "summary": frame.to_dict("records"), "matmul_peak_gflops": peak}


# ---------------------------------------------------------------- search


def write_image_folder(root: Path, train_size: int, val_size: int) -> None:
    """The Fashion-MNIST subset as 28 px grayscale PNG files: the kind of folder people have."""
    data = load_dataset(DataSpec(source="fashion-mnist", image_size=28, train_size=train_size, val_size=val_size))
    for part, split in (("train", data.train), ("val", data.val)):
        for i, (image, label) in enumerate(zip(split.images, split.labels.tolist())):
            folder = root / part / data.classes[label].replace("/", "-")
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image[0].numpy()).save(folder / f"{i}.png")


def plain_trial(config: dict, *, root: str, image_size: int, max_epochs: int, model_name: str) -> None:
    """A Ray Tune trainable written the usual way: ImageFolder of files, PIL transforms, a
    DataLoader, frozen layers by requires_grad=False, every trial decoding its own images
    and loading its own weights, a checkpoint every epoch."""
    # everything imported here: Ray pickles this function by value (it lives in __main__)
    import tempfile

    import torch
    from ray import tune
    from torch.utils.data import DataLoader
    from torchvision.datasets import ImageFolder
    from torchvision.transforms import v2

    from tune_search.trainable.augment import REGISTRY, strengths_in
    from tune_search.trainable.models import ModelSpec, build_model

    config = run_of(config)
    torch.manual_seed(0)
    augs = [REGISTRY[n].v2(s, image_size) for n, s in strengths_in(config).items()]
    on_pil = [t for t in augs if not isinstance(t, v2.RandomErasing)]  # erasing needs a tensor
    on_tensor = [t for t in augs if isinstance(t, v2.RandomErasing)]
    resize = [v2.Resize(image_size), v2.CenterCrop(image_size)]
    train = ImageFolder(f"{root}/train", transform=v2.Compose([*resize, *on_pil, v2.PILToTensor(), *on_tensor]))
    val = ImageFolder(f"{root}/val", transform=v2.Compose([*resize, v2.PILToTensor()]))
    loader = DataLoader(train, batch_size=int(config["batch_size"]), shuffle=True)
    val_loader = DataLoader(val, batch_size=256)
    model = build_model(ModelSpec(model_name, "auto"), len(train.classes), 0)
    for stage in model.stages[: int(config["freeze_depth"])]:
        stage.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config["lr"], weight_decay=config.get("weight_decay", 0.0))
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max_epochs * len(loader))
    for epoch in range(1, max_epochs + 1):
        model.train()
        for images, labels in loader:
            loss = torch.nn.functional.cross_entropy(model(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
        model.eval()
        correct = 0
        with torch.no_grad():
            for images, labels in val_loader:
                correct += (model(images).argmax(1) == labels).sum().item()
        with tempfile.TemporaryDirectory() as folder:
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, f"{folder}/state.pt")
            tune.report({"top1": correct / len(val), "epoch": epoch}, checkpoint=tune.Checkpoint.from_directory(folder))


def _finals(results) -> list[float]:
    """Final top-1 per variant, in the order of the grid."""
    out = {}
    for r in results:
        out[run_of(r.config)["index"]] = r.metrics.get("top1", float("nan"))
    return [out[i] for i in sorted(out)]


def scratch(prefix: str, keep: bool) -> Path:
    """A work folder for one section: its image folders and Ray runs are gigabytes, so it goes
    when the benchmark exits unless --keep asks to look at it."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    if not keep:
        atexit.register(shutil.rmtree, work, ignore_errors=True)
    return work


def section_search(args) -> dict:
    import ray
    from ray import tune

    from tune_search.location import RunLocation
    from tune_search.pipeline import prepare, ray_session
    from tune_search.tuner import run_search, run_study

    work = scratch("tune-search-bench-", args.keep)
    folder = work / "fashion-mnist-png"
    write_image_folder(folder, args.search_train_size, args.search_val_size)
    overrides = {
        "data.source": str(folder), "data.image_size": args.image_size, "model.name": args.model,
        "budget.num_samples": args.trials, "budget.max_epochs": args.epochs,
        "run.storage": str(work / "runs"), "run.name": "asha", "data.cache": str(work / "cache"),
    }  # fmt: skip
    cfg = load_config(None, overrides)
    with ray_session(None):
        started = time.perf_counter()
        space, spec, data = prepare(cfg)  # decodes the folder once, into the cache
        decode_s = time.perf_counter() - started
        started = time.perf_counter()
        location = RunLocation.of(cfg.run.storage, cfg.run.name)
        asha = trials_table(records_from_results(run_search(cfg, data, spec, space, location)), args.epochs)
        asha_s = time.perf_counter() - started + decode_s
        asha = asha.sort_values("trial_id").reset_index(drop=True)
        configs = [{**config_from_row(row), "index": i} for i, row in asha.iterrows()]

        def full(name: str, fast: bool):
            started = time.perf_counter()
            results = run_study(cfg, data, dataclasses.replace(spec, fast_path=fast), configs, location=location, suffix=name)
            return _finals(results), time.perf_counter() - started + decode_s

        fast_top1, fast_s = full("full-fast", True)
        started = time.perf_counter()
        plain = tune.Tuner(
            tune.with_resources(
                tune.with_parameters(plain_trial, root=str(folder), image_size=args.image_size, max_epochs=args.epochs, model_name=args.model),
                {"cpu": 1},
            ),
            param_space={"run": tune.grid_search(configs)},
            run_config=tune.RunConfig(name="plain", storage_path=str(work / "runs"), verbose=1),
        ).fit()
        plain_s = time.perf_counter() - started
        plain_top1 = _finals(plain)
        ref_top1, ref_s = full("full-reference", False) if args.reference else ([], float("nan"))
        cpus = ray.cluster_resources().get("CPU", 0)

    best_asha = int(asha["top1"].idxmax())
    best_full = int(np.nanargmax(fast_top1))
    epochs_asha = int(asha["epochs"].sum())
    rows = [
        {"run": "tune-search (ASHA, fast path)", "wall s": asha_s, "epochs": epochs_asha, "best trial": best_asha, "its top-1": float(asha["top1"].max())},
        {"run": "tune-search trainable, full budget", "wall s": fast_s, "epochs": len(configs) * args.epochs,
            "best trial": best_full, "its top-1": fast_top1[best_full]},
        {"run": "plain Ray Tune baseline, full budget", "wall s": plain_s, "epochs": len(configs) * args.epochs,
         "best trial": int(np.nanargmax(plain_top1)), "its top-1": float(np.nanmax(plain_top1))},
    ]  # fmt: skip
    if ref_top1:
        rows.append({"run": "tune-search trainable, full budget, fast path off", "wall s": ref_s, "epochs": len(configs) * args.epochs,
                     "best trial": int(np.nanargmax(ref_top1)), "its top-1": float(np.nanmax(ref_top1))})  # fmt: skip
    per_trial = pd.DataFrame(
        {"asha": asha["top1"], "asha epochs": asha["epochs"], "full": fast_top1, "plain": plain_top1, **({"reference": ref_top1} if ref_top1 else {})}
    )
    print(f"\n## Search: {len(configs)} trials x {args.epochs} epochs, {args.model} at {args.image_size} px, "
          f"{len(data.train)} train / {len(data.val)} val PNGs, {cpus:g} CPUs, 1 CPU per trial\n")  # fmt: skip
    print(table(rows, ["run", "wall s", "epochs", "best trial", "its top-1"]))
    print(f"\nplain baseline / tune-search: {plain_s / asha_s:.2f}x wall time (trainable alone at full budget: "
          f"{plain_s / fast_s:.2f}x); ASHA trained {epochs_asha} of {len(configs) * args.epochs} epochs "
          f"({100 * epochs_asha / (len(configs) * args.epochs):.0f} %); driver decode {decode_s:.1f} s")  # fmt: skip
    print(f"best config with ASHA = best at full budget: {best_asha == best_full}; "
          f"ASHA's best {asha['top1'].max():.4f} vs full budget's best {fast_top1[best_full]:.4f}")  # fmt: skip
    corr = per_trial[["full", "plain"] + (["reference"] if ref_top1 else [])].corr(method="spearman")
    print(f"per-trial final top-1, Spearman rank correlation:\n{corr.round(3).to_string()}")
    print(f"mean |full - plain| top-1: {np.nanmean(np.abs(np.array(fast_top1) - np.array(plain_top1))):.4f}"
          + (f"; mean |full - reference|: {np.nanmean(np.abs(np.array(fast_top1) - np.array(ref_top1))):.4f}" if ref_top1 else ""))  # fmt: skip
    print(per_trial.round(4).to_string())
    return {"rows": rows, "per_trial": per_trial.to_dict("list"), "decode_s": decode_s}


# ---------------------------------------------------------------- scale

SCALE_SIZES = (1_000, 10_000, 69_000)
SCALE_SIDES = (32, 64, 128, 224)
SCALE_SCRIPT = r"""
import json, os, pickle, sys, time
from dataclasses import replace
from tune_search.trainable.data import Dataset, Split
from tune_search.trainable.models import ModelSpec
from tune_search.trainable.trial import TrialSettings, TrialSpec, fine_tune, keep_freed_memory

def kb(field):
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(field))

what, arg = sys.argv[1], sys.argv[2]
if what == "decode":  # the driver's part: decode into the cache
    from tune_search.trainable.data import DataSpec, load_dataset
    spec = DataSpec(**json.loads(arg))
    started = time.perf_counter()
    data = load_dataset(spec)
    seconds = time.perf_counter() - started
    size = sum(f.stat().st_size for f in data.entry.iterdir() if f.is_file())
    sys.stdout.buffer.write(pickle.dumps({"decode_s": seconds, "peak": kb("VmHWM:") * 1024, "bytes": size, "data": data}))
else:  # a trial's part: map the entry, train one epoch (or time a slice of it)
    import torch
    torch.set_num_threads(1)
    keep_freed_memory()
    data = pickle.loads(open(arg, "rb").read())
    limit = int(sys.argv[3])
    if limit:  # a slice: the first `limit` train and val images, for an estimate
        head = lambda split: Split(split.images[:limit], split.labels[:limit])
        data = Dataset(head(data.train), head(data.val), data.classes, "slice")
    settings = TrialSettings(lr=1e-3, freeze_depth=3, batch_size=64, augmentations=(("crop", 0.5), ("hflip", 0.5)))
    spec = TrialSpec(ModelSpec("efficientnet_lite0"), max_epochs=1)
    started = time.perf_counter()
    metrics = next(iter(fine_tune(settings, spec, data)))[0]
    print(json.dumps({"epoch_s": time.perf_counter() - started, "rss": kb("VmHWM:") * 1024, "train": len(data.train), "val": len(data.val)}))
"""


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB"


def section_scale(args) -> dict:
    """Per data size and image size: the driver's decode time, the cache's size on disk and
    the driver's peak RSS (a process that only decodes, as `prepare` does); then, in another
    process as a trial, one trial's peak RSS and first-epoch time (Lite0, freeze depth 3, crop
    and hflip at 0.5, 1 thread). An epoch estimated (from a 256-image slice) over
    `--scale-epoch-limit` seconds is not run: its estimate is printed instead."""
    import pickle
    import sys

    work = scratch("tune-search-scale-", args.keep)
    rows = []
    for n in SCALE_SIZES:
        val = round(n * 10_000 / 69_000)
        for side in SCALE_SIDES:
            spec = {"source": "fashion-mnist", "image_size": side, "train_size": n - val, "val_size": val, "cache": str(work / "cache")}
            out = subprocess.run([sys.executable, "-c", SCALE_SCRIPT, "decode", json.dumps(spec)], capture_output=True, check=True).stdout
            built = pickle.loads(out)
            payload = work / "data.pickle"
            payload.write_bytes(pickle.dumps(built["data"]))

            def trial(limit: int) -> dict:
                run = subprocess.run([sys.executable, "-c", SCALE_SCRIPT, "trial", str(payload), str(limit)], capture_output=True, text=True, check=True)
                return json.loads(run.stdout.strip().splitlines()[-1])

            probe = trial(256)
            estimate = probe["epoch_s"] * (n - val + val / 3) / (probe["train"] + probe["val"] / 3)  # evaluation: a forward only
            row = {"images": n, "px": side, "decode s": built["decode_s"], "cache": _gb(built["bytes"]), "driver peak RSS": _gb(built["peak"])}
            if estimate <= args.scale_epoch_limit:
                first = trial(0)
                row |= {"trial peak RSS": _gb(first["rss"]), "first epoch s": f"{first['epoch_s']:.0f}"}
            else:
                row |= {"trial peak RSS": _gb(probe["rss"]) + " (256-image slice)", "first epoch s": f"not run: about {estimate / 60:.0f} min (estimated)"}
            rows.append(row)
            print(row, flush=True)
            shutil.rmtree(built["data"].entry)  # the next cell's disk
    print(f"\n## Scale: Fashion-MNIST, {os.cpu_count()} CPUs, the cache on {work}\n")
    print(table(rows, ["images", "px", "decode s", "cache", "driver peak RSS", "trial peak RSS", "first epoch s"]))
    return {"rows": rows}


def _epoch_of(batches) -> tuple[float, int]:
    """Seconds to draw every batch of an epoch as float NCHW tensors with their labels (what
    a training step takes in), and the images drawn."""
    started, n = time.perf_counter(), 0
    for images, labels in batches:
        images.float()  # the step's input
        n += len(labels)
    return time.perf_counter() - started, n


def section_stream(args) -> dict:
    """One PNG folder (Fashion-MNIST, `--stream-train-size` images) read for training at
    `--image-size`, two epochs of shuffled batches of 64, three ways: tune-search's decoded-
    image cache (decoded once into raw files, mapped), Ray Data streaming (`read_images`,
    decoded again every epoch by read tasks) and Ray Data materialized (decoded once into
    Ray's object store). Per way: seconds to decode before the first epoch, each epoch's
    seconds, and where the decoded images are held."""
    import ray

    from tune_search.pipeline import ray_session
    from tune_search.trainable.data import DataSpec, load_dataset

    work = scratch("tune-search-stream-", args.keep)
    folder = work / "png"
    write_image_folder(folder, args.stream_train_size, 100)
    side, batch = args.image_size, 64
    classes = sorted(p.name for p in (folder / "train").iterdir())
    rows = []

    started = time.perf_counter()
    data = load_dataset(DataSpec(source=str(folder), image_size=side, cache=str(work / "cache")))
    decode = time.perf_counter() - started
    images, labels = data.train.images, data.train.labels

    def cached():
        order = torch.randperm(len(images))
        for i in range(0, len(order), batch):
            index = order[i : i + batch]
            yield images.index_select(0, index), labels[index]

    epochs = [_epoch_of(cached()) for _ in range(2)]
    size = sum(f.stat().st_size for f in data.entry.glob("*.u8"))
    rows.append({"way": "tune-search cache (mapped files)", "decode s": decode, "epoch 1 s": epochs[0][0], "epoch 2 s": epochs[1][0],
                 "images": epochs[0][1], "held": f"{_gb(size)} on disk, mapped (page cache)"})  # fmt: skip

    def labelled(rows_of):
        for b in rows_of:
            yield torch.from_numpy(b["image"]).permute(0, 3, 1, 2), torch.tensor([classes.index(Path(p).parent.name) for p in b["path"]])

    with ray_session(None):
        stream = ray.data.read_images(str(folder / "train"), size=(side, side), mode="RGB", include_paths=True)
        shuffled = lambda ds: ds.iter_batches(batch_size=batch, batch_format="numpy", local_shuffle_buffer_size=1024)  # noqa: E731
        epochs = [_epoch_of(labelled(shuffled(stream))) for _ in range(2)]
        rows.append({"way": "Ray Data streaming (read_images)", "decode s": 0.0, "epoch 1 s": epochs[0][0], "epoch 2 s": epochs[1][0],
                     "images": epochs[0][1], "held": "nothing between epochs: decoded again each epoch"})  # fmt: skip
        started = time.perf_counter()
        materialized = stream.materialize()
        decode = time.perf_counter() - started
        epochs = [_epoch_of(labelled(shuffled(materialized))) for _ in range(2)]
        rows.append({"way": "Ray Data materialized", "decode s": decode, "epoch 1 s": epochs[0][0], "epoch 2 s": epochs[1][0],
                     "images": epochs[0][1], "held": f"{_gb(materialized.size_bytes())} in Ray's object store (shared memory)"})  # fmt: skip
    print(f"\n## Reading for training: {args.stream_train_size} PNGs at {side} px, batches of {batch}, {os.cpu_count()} CPUs\n")
    print(table(rows, ["way", "decode s", "epoch 1 s", "epoch 2 s", "images", "held"]))
    return {"rows": rows}


START_SPACE = """
data: {source: fashion-mnist, image_size: 224, train_size: 59000, val_size: 10000, cache: CACHE}
budget: {num_samples: 3, max_epochs: 1}
resources: {max_concurrent: 1}
"""


def _memory(pid: int) -> dict[str, int]:
    """A process's peak RSS (VmHWM) and its RSS now split into anonymous memory (its own) and
    file pages (mapped cache files: shared with every process mapping them, and reclaimable)."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {k: int(fields[k].split()[0]) * 1024 for k in ("VmHWM", "RssAnon", "RssFile")}


def _first_trial(work: Path, name: str, space: Path, train_s: float = 30) -> dict:
    """Start the CLI, wait until its first trial process has run `train_s` seconds, then stop
    it (Ctrl-C); seconds to the first trial, the driver's and the trial's memory."""
    import signal
    import sys

    import psutil

    proc = subprocess.Popen(
        [sys.executable, "-m", "tune_search.cli", "--space", str(space), "--storage", str(work / "runs"), "--name", name],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    started, first, trial, driver = time.perf_counter(), None, {}, {}
    while proc.poll() is None and time.perf_counter() - started < 1200:
        with contextlib.suppress(psutil.Error, FileNotFoundError, ProcessLookupError):
            driver = _memory(proc.pid)
            # this run's trial processes: the driver's descendants (raylet's workers), not another Ray's
            trials = [c for c in psutil.Process(proc.pid).children(recursive=True) if "ImplicitFunc" in " ".join(c.cmdline())]
            if trials and first is None:
                first = time.perf_counter() - started
            for t in trials:
                now = _memory(t.pid)
                trial = {k: max(v, trial.get(k, 0)) for k, v in now.items()}
        if first is not None and time.perf_counter() - started > first + train_s:
            break
        time.sleep(0.25)
    proc.send_signal(signal.SIGINT)  # the driver's Ctrl-C; then whatever is left of its Ray goes
    try:
        output = proc.communicate(timeout=300)[0]
    except subprocess.TimeoutExpired:
        output = "did not stop within 300 s of SIGINT"
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    return {
        "run": name, "first trial s": first,
        "driver peak RSS": _gb(driver.get("VmHWM", 0)), "driver anon": _gb(driver.get("RssAnon", 0)),
        "trial peak RSS": _gb(trial.get("VmHWM", 0)), "trial anon": _gb(trial.get("RssAnon", 0)), "trial file pages": _gb(trial.get("RssFile", 0)),
        "console": output.splitlines()[:3] + output.splitlines()[-2:],
    }  # fmt: skip


def section_start(args) -> dict:
    """The 69,000-image, 224 px Fashion-MNIST run started twice: the first decodes into the
    cache, the second reads it."""
    work = scratch("tune-search-start-", args.keep)
    space = work / "space.yaml"
    space.write_text(START_SPACE.replace("CACHE", str(work / "cache")))
    rows = [_first_trial(work, name, space) for name in ("first", "second")]
    for row in rows:
        print(row, flush=True)
    print(f"\n## Start: 59,000 + 10,000 images at 224 px, {os.cpu_count()} CPUs\n")
    print(table(rows, ["run", "first trial s", "driver peak RSS", "driver anon", "trial peak RSS", "trial anon", "trial file pages"]))
    print(f"\nsecond start / first: {rows[1]['first trial s'] / rows[0]['first trial s']:.2f}")
    return {"rows": rows}


# ---------------------------------------------------------------- verdicts

PLANTED = """
data: {source: planted, image_size: 32, train_size: 300, val_size: 300}
space: {augmentations: [hflip, color, blur, brightness, contrast], strength: [0.5, 1.0], lr: 0.003, freeze_depth: 3, batch_size: 32}
budget: {num_samples: 3, max_epochs: 4, grace_period: 1}
screen: {strength: 1.0, seeds: SEEDS}
dose: {enabled: false}
ablation: {seeds: 3, strength: 1.0}
resources: {fast_path: FAST}
"""


def _planted_run(work: Path, name: str, *, fast: bool, seeds: int, flags=()) -> tuple[Path, float]:
    return _run(work, name, PLANTED.replace("FAST", str(fast).lower()).replace("SEEDS", str(seeds)), flags)


def _demo_run(work: Path, name: str, flags=()) -> tuple[Path, float]:
    """The README demo's configuration without dose-response."""
    import yaml

    space = yaml.safe_load((Path(__file__).parents[1] / "configs" / "default.yaml").read_text())
    space["dose"]["enabled"] = False
    return _run(work, name, yaml.safe_dump(space), flags)


def _run(work: Path, name: str, space_text: str, flags) -> tuple[Path, float]:
    from tune_search.cli import main

    space = work / f"{name}.yaml"
    space.write_text(space_text)
    started = time.perf_counter()
    assert main(["--space", str(space), "--storage", str(work), "--name", name, *flags]) == 0
    return work / name, time.perf_counter() - started


def section_verdicts(args) -> dict:
    """The default run (search, then screen) on the planted-harm set, with and without the fast path."""
    from tune_search.trainable.planted import HARMLESS, PLANTED_HARMS

    work = scratch("tune-search-verdicts-", args.keep)
    verdicts, walls = {}, {}
    for fast in (True, False):
        folder, walls[fast] = _planted_run(work, f"fast-{fast}", fast=fast, seeds=args.planted_seeds)
        verdicts[fast] = ResultsFolder(folder).read("effects").set_index("augmentation")
    rows = [
        {
            "augmentation": name,
            "planted": "harm" if name in PLANTED_HARMS else "harmless" if name in HARMLESS else "",
            **{
                label: f"{verdicts[fast].loc[name, 'verdict']} {100 * verdicts[fast].loc[name, 'effect']:+.1f}"
                f" [{100 * verdicts[fast].loc[name, 'ci_low']:+.1f}, {100 * verdicts[fast].loc[name, 'ci_high']:+.1f}]"
                for fast, label in ((True, "fast path"), (False, "per-image v2, no cache"))
            },
        }
        for name in verdicts[True].index
    ]
    same = all(verdicts[True].loc[n, "verdict"] == verdicts[False].loc[n, "verdict"] for n in verdicts[True].index)
    right = {fast: all((v.loc[n, "verdict"] == "hurts") == (n in PLANTED_HARMS) for n in v.index) for fast, v in verdicts.items()}
    print(f"\n## Verdicts on the planted-harm set (search + screen, {args.planted_seeds} seed(s), top-1 points)\n")
    print(table(rows, ["augmentation", "planted", "fast path", "per-image v2, no cache"]))
    print(f"\nsame verdicts: {same}; every planted harm hurts and nothing else: {right}; detectable harm {100 * verdicts[True]['detectable'].max():.1f} points")
    print(f"wall {walls[True]:.0f} s with the fast path, {walls[False]:.0f} s without")
    return {"rows": rows, "same": same, "right": right, "wall_s": {str(k): v for k, v in walls.items()}}


PLANTED_SCALED = """
data: {source: FOLDER, image_size: 32}
space: {augmentations: [hflip, color, blur, brightness, contrast], strength: [0.5, 1.0], lr: 0.003, freeze_depth: 3, batch_size: 32}
budget: {num_samples: 3, max_epochs: 4, grace_period: 1}
screen: {strength: 1.0, max_seeds: 4}
dose: {enabled: false}
confirm: {policies: [], seeds: 3}
"""


def section_planted(args) -> dict:
    """The planted-harm test's run (tests/conftest.py's space) on more images: the generator's
    images written as an image folder, --planted-train / --planted-val per class. Does the focused
    screen decide brightness and contrast (planted harmless) once runs are less noisy?"""
    from PIL import Image

    from tune_search.trainable import planted

    work = scratch("tune-search-planted-", args.keep)
    for part, per_class, seed in (("train", args.planted_train, 101), ("val", args.planted_val, 202)):
        x, y = planted.generate(per_class=per_class, seed=seed)
        for i, (image, label) in enumerate(zip(x, y, strict=True)):
            folder = work / "data" / part / planted.CLASSES[label]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image.transpose(1, 2, 0)).save(folder / f"{i:05d}.png")
    folder, wall = _run(work, "planted", PLANTED_SCALED.replace("FOLDER", str(work / "data")), ())
    results = ResultsFolder(folder)
    rows = []
    for stage, name in (("screen", "effects"), ("focus", "focus")):
        for r in results.read(name).itertuples():
            effect = f"{100 * r.effect:+.1f} [{100 * r.ci_low:+.1f}, {100 * r.ci_high:+.1f}]"
            kind = "harm" if r.augmentation in planted.PLANTED_HARMS else "harmless"
            rows.append({"stage": stage, "augmentation": r.augmentation, "planted": kind, "effect": effect, "verdict": r.verdict, "runs": r.n_runs})
    print(f"\n## Planted harms at {6 * args.planted_train} train / {6 * args.planted_val} val images (top-1 points)\n")
    print(table(rows, ["stage", "augmentation", "planted", "effect", "verdict", "runs"]))
    looks = [line for line in (folder / "console.log").read_text().splitlines() if " after " in line and "residual SD" in line]
    print(f"\nwall {wall:.0f} s; the looks:\n" + "\n".join(looks))
    return {"rows": rows, "wall_s": wall, "looks": looks}


def section_screen(args) -> dict:
    """Precision per compute: the screen's interval half-width against the ablation's on the
    same data, both at full budget, per trial-epoch spent. On the demo (12 augmentations, the
    case the screen was built for) or the planted-harm set (5)."""
    work = scratch("tune-search-screen-", args.keep)
    if args.screen_data == "demo":
        folder, wall = _demo_run(work, "both", flags=("--ablate",))
    else:
        folder, wall = _planted_run(work, "both", fast=True, seeds=1, flags=("--ablate",))
    results = ResultsFolder(folder)
    screen_runs, ablation_runs = results.read("screen"), results.read("ablation_runs")
    effects = results.read("effects").set_index("augmentation")
    ablation = results.read("ablation").set_index("augmentation")
    half = {
        "screen": float(((effects["ci_high"] - effects["ci_low"]) / 2).mean()),
        "ablation": float(((ablation["ci_high"] - ablation["ci_low"]) / 2).mean()),
    }
    runs = {"screen": len(screen_runs), "ablation": len(ablation_runs)}  # the screen's clean run too: it was trained
    # at equal compute: a half-width shrinks with the square root of the runs
    equal = half["ablation"] / (half["screen"] * math.sqrt(runs["ablation"] / runs["screen"]))
    rows = [{"study": k, "runs": runs[k], "epochs each": int(screen_runs["epochs"].iloc[0]), "mean 95 % half-width, points": 100 * half[k]} for k in half] + [
        {"study": "ratio ablation / screen at equal trial-epochs", "mean 95 % half-width, points": equal}
    ]
    print(f"\n## Precision per compute: screen against ablation ({args.screen_data} data, {len(effects)} augmentations)\n")
    print(table(rows, ["study", "runs", "epochs each", "mean 95 % half-width, points"]))
    verdicts = {n: (effects.loc[n, "verdict"], ablation.loc[n, "verdict"]) for n in effects.index}
    print(f"\nverdicts (screen, ablation): {verdicts}; wall {wall:.0f} s")
    return {"half_width": half, "runs": runs, "ratio_equal_compute": equal, "verdicts": verdicts, "wall_s": wall}


# ---------------------------------------------------------------- gpu


class GpuSampler:
    """GPU utilisation and memory, sampled by nvidia-smi every 100 ms while the block runs;
    empty where nvidia-smi is missing."""

    def __enter__(self):
        query = ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits", "-lms", "100"]
        try:
            self.process = subprocess.Popen(query, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        except OSError:
            self.process = None
        self.samples: list[tuple[float, float]] = []
        return self

    def __exit__(self, *exc):
        if self.process is not None:
            self.process.terminate()
            out, _ = self.process.communicate()
            for line in out.splitlines():
                try:
                    util, memory = (float(v) for v in line.split(",")[:2])
                except ValueError:
                    continue
                self.samples.append((util, memory))

    def summary(self) -> dict:
        if not self.samples:
            return {"GPU util % (mean)": math.nan, "GPU util % (busiest 90 %)": math.nan, "GPU memory MiB": math.nan}
        utils = sorted(u for u, _ in self.samples)
        return {
            "GPU util % (mean)": sum(utils) / len(utils),
            # the trial's set-up and validation idle the GPU; the busiest 90 % of samples leave them out
            "GPU util % (busiest 90 %)": sum(utils[len(utils) // 10 :]) / max(1, len(utils) - len(utils) // 10),
            "GPU memory MiB": max(m for _, m in self.samples),
        }


def section_gpu(args) -> dict:
    """resnet18 on the GPU at 224 px: the bare step and a trial (images and augmentation on
    the GPU, bf16 autocast where the GPU has it), with and without the six augmentations,
    and the GPU's utilisation during each trial. `--gpu-dry-run` runs the same code on the
    CPU at 64 px, to check it before spending GPU time."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type != "cuda" and not args.gpu_dry_run:
        print("no GPU here: gpu section skipped (--gpu-dry-run runs its code on the CPU, small)")
        return {"skipped": "no GPU"}
    size, batch, train = (224, 128, args.gpu_train_size) if device.type == "cuda" else (64, 32, 256)
    model = ModelSpec("resnet18", "none")  # random init: throughput does not depend on the weights
    data = load_dataset(DataSpec(source="fashion-mnist", image_size=size, train_size=train, val_size=500))
    spec = TrialSpec(model, max_epochs=3, cpus_per_trial=args.threads, gpus_per_trial=1.0 if device.type == "cuda" else 0.0)
    amp = amp_dtype(spec, device)
    bare = bare_rate(model, data.num_classes, 0, size, batch, amp, args.steps, device=device)
    rows = []
    for label, augs in (("none", ()), ("six", SIX)):
        with GpuSampler() as sampler:
            run = trial_run(data, spec, 0, augs, batch=batch)
        rows.append({"augmentation": label, "bare img/s": bare, "trial img/s": run["train_ips"], "vs bare %": 100 * (bare / run["train_ips"] - 1),
                     "data+aug % of step": run["data_pct"], **sampler.summary()})  # fmt: skip
        print(rows[-1], flush=True)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU (dry run)"
    print(f"\n## GPU: resnet18 at {size} px, batch {batch}, freeze 0, {'bf16 autocast' if amp else 'fp32'}, {name}, "
          f"{len(data.train)} train images, 3 epochs, rates from epochs 2-3\n")  # fmt: skip
    print(table(rows, ["augmentation", "bare img/s", "trial img/s", "vs bare %", "data+aug % of step", "GPU util % (mean)",
                       "GPU util % (busiest 90 %)", "GPU memory MiB"]))  # fmt: skip
    return {"device": name, "image_size": size, "batch": batch, "rows": rows}


def section_rates(args) -> dict:
    """The four verdicts' error rates and power, simulated through `screen_effects` and the
    sequential rule of `seeds: auto` (`another_replicate`)."""
    import gc

    from tune_search.config import load_config
    from tune_search.studies.screen import another_replicate, family_alpha, screen_configs, screen_effects

    names = list(NAMES)
    base = {"lr": 1e-3, "freeze_depth": 4, "weight_decay": 0.0, "batch_size": 64, "label_smoothing": 0.0}
    rng = np.random.default_rng(0)

    def replicate(planted: dict, seed: int, clean: bool) -> pd.DataFrame:
        rows = []
        for c in screen_configs(base, dict.fromkeys(names, 0.5), [seed], clean_seed=seed if clean else None):
            top1 = 0.8 + sum(planted.get(n, 0.0) for n in names if c[f"aug_{n}"]) + rng.normal(0, 0.015)
            rows.append({**c, "top1": top1, "top5": top1})
        return pd.DataFrame(rows)

    planted = {"crop": -0.015, "blur": -0.013}
    rows = []
    gc.freeze()  # statsmodels' Holm runs gc.collect() per call
    # 4 replicates at 1 point: what the harmless target takes; the uncorrected column: what no
    # correction at all would give (not a verdict the screen uses)
    for mode, bound in (("2", 0.01), ("2", 0.015), ("4", 0.01), ("auto", 0.01), ("auto", 0.015)):
        cfg = load_config(None, {"screen.seeds": mode if mode == "auto" else int(mode), "screen.negligible": bound})
        harmless, uncorrected, false_harmless, unclear, false_verdict = [], [], 0, 0, 0
        for _ in range(args.rate_screens):
            for effects, truth in ((planted, "planted"), ({}, "null")):
                runs = replicate(effects, 0, True)
                while (mode != "auto" and runs["seed"].nunique() < int(mode)) or another_replicate(runs, names, cfg):
                    runs = pd.concat([runs, replicate(effects, runs["seed"].nunique(), False)], ignore_index=True)
                said = screen_effects(runs, names, alpha=family_alpha(cfg), negligible=bound).set_index("augmentation")
                if truth == "planted":
                    null = said.drop(index=list(planted))
                    harmless.append((null["verdict"] == "harmless").mean())
                    uncorrected.append((null["p_equivalence"] < family_alpha(cfg)).mean())
                    false_harmless += said.loc["crop", "verdict"] == "harmless"
                    unclear += said.loc["blur", "verdict"] == "unclear"
                else:
                    false_verdict += said["verdict"].isin(["hurts", "helps"]).any()
        n = args.rate_screens
        rows.append({"replicates": mode, "bound, points": f"{100 * bound:g}", "null augmentations harmless": f"{100 * np.mean(harmless):.1f} %",
                     "... with no correction": f"{100 * np.mean(uncorrected):.1f} %",
                     "1.5-point harm harmless": f"{100 * false_harmless / n:.1f} %", "1.3-point harm unclear": f"{100 * unclear / n:.1f} %",
                     "null screens with a false hurts/helps": f"{100 * false_verdict / n:.1f} %"})  # fmt: skip
    gc.unfreeze()
    print(f"\n## The four verdicts, simulated ({args.rate_screens} screens per row, 12 augmentations, residual SD 1.5 points)\n")
    print(table(rows, list(rows[0])))
    return {"rows": rows}


SECTIONS = {
    "depthwise": section_depthwise,
    "rates": section_rates,
    "augment": section_augment,
    "steps": section_steps,
    "precision": section_precision,
    "search": section_search,
    "verdicts": section_verdicts,
    "screen": section_screen,
    "gpu": section_gpu,
    "scale": section_scale,
    "start": section_start,
    "stream": section_stream,
    "planted": section_planted,
}
DEFAULT_SECTIONS = ("augment", "depthwise", "steps", "precision", "search", "verdicts", "screen")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sections", default=",".join(DEFAULT_SECTIONS), help=f"comma-separated, of {', '.join(SECTIONS)}")
    p.add_argument("--model", default="efficientnet_lite0")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=1, help="threads for steps/precision: one trial's CPU share")
    p.add_argument("--steps", type=int, default=16, help="timed bare steps per freeze depth")
    p.add_argument("--step-train-size", type=int, default=1000)
    p.add_argument("--precision-seeds", type=int, default=2)
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--search-train-size", type=int, default=1000)
    p.add_argument("--search-val-size", type=int, default=500)
    p.add_argument("--planted-seeds", type=int, default=1, help="screen replicates in the verdicts section")
    p.add_argument("--planted-train", type=int, default=200, help="planted: training images per class (6 classes)")
    p.add_argument("--planted-val", type=int, default=200, help="planted: validation images per class")
    p.add_argument("--screen-data", choices=("demo", "planted"), default="demo", help="the screen section's data")
    p.add_argument("--no-reference", dest="reference", action="store_false", help="skip the fast-path-off search run")
    p.add_argument("--gpu-train-size", type=int, default=8000, help="training images for the gpu section")
    p.add_argument("--rate-screens", type=int, default=200, help="simulated screens per row in the rates section")
    p.add_argument("--gpu-dry-run", action="store_true", help="run the gpu section on the CPU, small, where there is no GPU")
    p.add_argument("--stream-train-size", type=int, default=10_000, help="stream: training images read three ways")
    p.add_argument("--scale-epoch-limit", type=float, default=600, help="scale: epochs estimated longer than this (s) are not run")
    p.add_argument("--out", default="results/bench/speed.json")
    p.add_argument("--keep", action="store_true", help="keep the sections' work folders (removed at exit otherwise)")
    args = p.parse_args()
    keep_freed_memory()  # as train_trial does in every trial process
    figures = {"args": vars(args), "cpus": os.cpu_count(), "torch": torch.__version__}
    for name in args.sections.split(","):
        if name not in SECTIONS:
            p.error(f"unknown section {name!r}; valid: {', '.join(SECTIONS)}")
        started = time.perf_counter()
        figures[name] = SECTIONS[name](args)
        print(f"({name}: {time.perf_counter() - started:.0f} s)\n", flush=True)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(figures, indent=1, default=lambda v: None if isinstance(v, float) and math.isnan(v) else str(v)))


if __name__ == "__main__":
    main()

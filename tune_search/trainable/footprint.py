"""How much memory one trial takes at its peak, measured rather than guessed.

A child process builds the trial's model as a trial does, trains one step on one batch of
random images at the run's largest batch and image size, augmented (so the whole network runs
forward and backward, as when the frozen prefix's features cannot be reused), and evaluates
one evaluation batch (about 5 s at 32 px; 20 s at 224 px at freeze depth 0 on Zen 4); it
prints the peak memory that is its own (`private_peak`) and how many numbers one image's
frozen-prefix features take. A child, not the driver: the driver would keep the step's memory
(trials keep freed memory on purpose, `trial.keep_freed_memory`), and the driver must stay
small whatever the run trains.

    python -m tune_search.trainable.footprint '{"model": ..., "weights": ..., ...}'
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class Probe:
    """What the footprint is measured for: the settings that take the most memory."""

    model: str
    weights: str
    num_classes: int
    side: int
    batch_size: int
    freeze_depth: int
    eval_batch_size: int
    precision: str = "auto"

    def args(self) -> str:
        return json.dumps(self.__dict__)


def measure(probe: Probe) -> dict[str, int]:
    """One training step at the probe's batch size and one evaluation batch, as a trial runs
    them (`trial.set_up`, `trial.epoch`): this process's peak resident bytes, and the frozen
    prefix's numbers per image (0 at freeze depth 0). Measured whole, not extrapolated from
    smaller batches: memory a trial keeps from one phase hides the next phase's growth at
    small sizes (12 % under at 96 px, freeze depth 2)."""
    import os

    import torch

    from tune_search.trainable.data import Dataset, Split
    from tune_search.trainable.models import ModelSpec
    from tune_search.trainable.trial import TrialSettings, TrialSpec, epoch, keep_freed_memory, set_up

    torch.set_num_threads(os.cpu_count() or 1)  # the machine is idle before Ray starts
    keep_freed_memory()  # as a trial
    g = torch.Generator().manual_seed(0)

    def split(n: int) -> Split:
        images = torch.randint(0, 256, (n, 3, probe.side, probe.side), dtype=torch.uint8, generator=g)
        return Split(images, torch.arange(n) % probe.num_classes)

    classes = tuple(str(i) for i in range(probe.num_classes))
    data = Dataset(split(probe.batch_size), split(probe.eval_batch_size), classes, "footprint probe")
    spec = TrialSpec(model=ModelSpec(probe.model, probe.weights), max_epochs=1, precision=probe.precision, eval_batch_size=probe.eval_batch_size)
    settings = TrialSettings(lr=1e-3, freeze_depth=probe.freeze_depth, batch_size=probe.batch_size, augmentations=(("hflip", 1.0),))
    t = set_up(settings, spec, data)
    epoch(t, settings, spec, data)
    features = t.model.frozen_features(data.val.images[:1]) if probe.freeze_depth else torch.empty(0)
    return {"peak_bytes": private_peak(), "feature_numbers": int(features.numel())}


def private_peak() -> int:
    """This process's peak resident memory (Linux's VmHWM) less the file and shared pages it
    maps now: the libraries' pages (torch's alone are about 0.4 GB) are one copy in the page
    cache for every process on the machine, the driver's included, so a trial adds only what
    is its own."""
    with open("/proc/self/status") as f:
        kib = {k: int(v.split()[0]) for k, v in (line.split(":", 1) for line in f if ":" in line) if k in ("VmHWM", "RssFile", "RssShmem")}
    return (kib["VmHWM"] - kib["RssFile"] - kib["RssShmem"]) * 1024


if __name__ == "__main__":
    print(json.dumps(measure(Probe(**json.loads(sys.argv[1])))))

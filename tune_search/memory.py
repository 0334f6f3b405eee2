"""Whether this machine holds what a run needs at once, decided before Ray starts.

A run needs the driver (already running: its memory is not in what is available), Ray's own
processes, and one trial per slot at its peak: the trial's peak is measured by a child process
(`trainable.footprint`) at the space's most memory-hungry settings, and kept in a small file
per settings so that the next run on them does not measure again. Decoded images in the cache
are not counted: they are mapped, shared page cache the kernel can drop. What is available is
`available.available_bytes`: the machine's, or less under a cgroup limit (a container's or a
job's budget).

The per-trial figure is also each trial's Ray `memory` request, so Ray starts no more trials at
once on a node than its memory holds, on one machine and on a cluster.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from tune_search.sections import ConfigError
from tune_search.trainable.available import available_bytes
from tune_search.trainable.data import user_cache
from tune_search.trainable.footprint import Probe

# a local Ray's own processes (GCS, raylet, dashboard, agents): 0.65 GB proportional set size
# measured at start, with room to grow (their RSS, 1.7 GB, counts each shared library page in
# each of its 20 processes)
RAY_OWN_BYTES = int(0.8e9)
# what a Ray actor holds beyond a plain process with the same imports: 819 MB RSS (421 MB its
# own) against 805 (416) measured; the rest of this is room
RAY_WORKER_BYTES = int(0.1e9)
PROBE_TIMEOUT_S = 600


def _machine() -> str:
    """The CPU the figure was measured on: oneDNN picks its kernels and scratch by instruction
    set and core count, and a home folder can be shared by machines of several kinds."""
    import platform

    try:
        model = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")), "")
    except OSError:
        model = platform.processor()
    return f"{platform.machine()} {model} {os.cpu_count()}"


def _cache_file(probe: Probe) -> Path:
    import torch

    from tune_search.trainable import footprint

    key = hashlib.sha256((probe.args() + torch.__version__ + _machine() + Path(footprint.__file__).read_text()).encode()).hexdigest()[:24]
    return user_cache() / "footprint" / f"{key}.json"


def _killed_first() -> None:
    """In the probe's process: the kernel's first choice when memory runs out, not the driver."""
    with open("/proc/self/oom_score_adj", "w") as f:
        f.write("1000")


def measured(probe: Probe) -> dict[str, int]:
    """The probe's figures: from the file of an earlier measurement, else measured now in a
    child process. ConfigError when the child cannot finish (killed for memory: one trial
    does not fit)."""
    path = _cache_file(probe)
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        pass
    try:
        done = subprocess.run(
            [sys.executable, "-m", "tune_search.trainable.footprint", probe.args()],
            capture_output=True,
            text=True,
            timeout=PROBE_TIMEOUT_S,
            check=False,
            preexec_fn=_killed_first,
        )
    except subprocess.TimeoutExpired:
        raise ConfigError(f"memory: measuring one trial's step ({probe.model}, {probe.side} px) took over {PROBE_TIMEOUT_S} s") from None
    if done.returncode != 0:
        what = f"memory: one trial's step ({probe.model}, {probe.side} px, batch {probe.batch_size}, freeze depth {probe.freeze_depth})"
        if done.returncode < 0:
            raise ConfigError(
                f"{what} was killed, out of memory: this machine has {available_bytes() / 1e9:.1f} GB available beside the driver."
                " Lower data.image_size or space.batch_size, or use --address for a Ray cluster with more memory"
            )
        raise ConfigError(f"{what} could not run: {(done.stderr.strip().splitlines() or ['no message'])[-1]}")
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(figures))
    except OSError:
        pass  # measured again next time
    return figures


def trial_bytes(probe: Probe, held_features: int, feature_cache_bytes: int) -> int:
    """One trial's peak: the probe's, Ray's libraries in a trial, and the frozen-prefix
    features it holds in memory (`held_features` images' worth, up to `feature_cache_bytes`;
    0 when they are mapped from the cache entry)."""
    figures = measured(probe)
    features = min(feature_cache_bytes, held_features * figures["feature_numbers"] * 4)
    return figures["peak_bytes"] + RAY_WORKER_BYTES + features


def slots_that_fit(per_trial: int, slots: int, available: int, probe: Probe) -> int:
    """How many of `slots` trials at once this machine holds beside Ray's own processes;
    ConfigError when not even one."""
    room = available - RAY_OWN_BYTES
    fit = max(0, room // per_trial)
    if fit < 1:
        raise ConfigError(
            f"memory: one trial needs about {per_trial / 1e9:.1f} GB at its peak ({probe.model}, {probe.side} px, batch {probe.batch_size},"
            f" freeze depth {probe.freeze_depth}, evaluation batch {probe.eval_batch_size}) and Ray's own processes about {RAY_OWN_BYTES / 1e9:.1f} GB;"
            f" this machine has {available / 1e9:.1f} GB available. Lower data.image_size, space.batch_size or raise the lowest space.freeze_depth,"
            " or use --address for a Ray cluster with more memory"
        )
    return int(min(fit, slots))


def fit(cfg, space, spec, data, address: str | None, studies: Sequence = ()):
    """`spec` with each trial's memory request (CPU trials; a GPU trial's host memory is not
    what limits it, and the probe runs on the CPU), after checking that a local run holds at
    least one trial beside Ray's own processes (ConfigError) and saying when memory, not the
    CPUs, limits the trials at once. `studies`: those the run trains, each measured too at what
    it trains beyond the space (`Study.trains`); the request is the largest trial's."""
    import dataclasses

    import torch

    local = not (address or os.environ.get("RAY_ADDRESS"))
    gpus = cfg.resources.gpus_per_trial
    # CPU trials for certain: none asked for, or `auto` on this machine without a GPU (a
    # cluster's `auto` is known once Ray runs: no request then)
    if not (gpus == 0 or (gpus == "auto" and local and not torch.cuda.device_count())):
        return spec
    depths = space.freeze_depth if isinstance(space.freeze_depth, tuple) else (space.freeze_depth,)
    batches = space.batch_size if isinstance(space.batch_size, tuple) else (space.batch_size,)
    shapes = [(spec.model.name, spec.model.weights, min(depths)), *(shape for study in studies for shape in study.trains(cfg))]
    probes = [
        Probe(model, weights, data.num_classes, cfg.data.image_size, max(batches), depth, spec.eval_batch_size, spec.precision)
        for model, weights, depth in dict.fromkeys(shapes)
    ]
    held = 0 if data.entry is not None else len(data.train) + len(data.val)
    per_trial, probe = max(((trial_bytes(p, held, spec.feature_cache_bytes), p) for p in probes), key=lambda sized: sized[0])
    if local:
        cpus = cfg.resources.cpus_per_trial
        slots = max(1, int((os.cpu_count() or 1) // (1 if cpus == "auto" else cpus)))
        available = available_bytes()
        fits = slots_that_fit(per_trial, slots, available, probe)
        if fits < slots:
            print(
                f"memory: each trial takes about {per_trial / 1e9:.1f} GB at its peak; the {available / 1e9:.1f} GB available hold"
                f" {fits} at once beside Ray (the CPUs would run {slots})"
            )
    return dataclasses.replace(spec, memory_bytes=per_trial)


def ray_memory() -> int:
    """A local Ray's memory resource: what is available beside Ray's own processes, the same
    figure `fit` checked the trials against."""
    return max(1, available_bytes() - RAY_OWN_BYTES)

"""What a run needs in memory, checked before Ray starts; and a whole run on data larger than a
memory budget (a real cgroup limit, enforced by the kernel) completing within it."""

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tune_search import memory
from tune_search.cli import main
from tune_search.sections import ConfigError
from tune_search.trainable.footprint import Probe

PROBE = Probe("efficientnet_lite0", "auto", 10, 224, 64, 0, 256)


def test_a_machine_that_cannot_hold_one_trial_is_refused_with_the_sizes():
    with pytest.raises(ConfigError) as refused:
        memory.slots_that_fit(3 * 10**9, 2, memory.RAY_OWN_BYTES + 2 * 10**9, PROBE)
    message = str(refused.value)
    assert "one trial needs about 3.0 GB" in message and "efficientnet_lite0, 224 px, batch 64, freeze depth 0" in message
    assert f"{(memory.RAY_OWN_BYTES + 2e9) / 1e9:.1f} GB available" in message and "data.image_size" in message and "\n" not in message


def test_memory_limits_the_trials_at_once_and_the_cpus_cap_them():
    assert memory.slots_that_fit(2 * 10**9, 4, memory.RAY_OWN_BYTES + 5 * 10**9, PROBE) == 2
    assert memory.slots_that_fit(2 * 10**9, 2, memory.RAY_OWN_BYTES + 50 * 10**9, PROBE) == 2
    assert memory.slots_that_fit(2 * 10**9, 4, memory.RAY_OWN_BYTES + 2 * 10**9, PROBE) == 1


def test_features_held_in_memory_count_up_to_their_cap(monkeypatch):
    monkeypatch.setattr(memory, "measured", lambda probe: {"peak_bytes": 10**9, "feature_numbers": 1000})
    base = 10**9 + memory.RAY_WORKER_BYTES
    assert memory.trial_bytes(PROBE, 0, 1 << 30) == base  # mapped from the cache entry: none held
    assert memory.trial_bytes(PROBE, 5000, 1 << 30) == base + 5000 * 1000 * 4
    assert memory.trial_bytes(PROBE, 10**6, 1 << 30) == base + (1 << 30)


def test_a_study_that_trains_beyond_the_space_asks_for_its_largest_trial(monkeypatch):
    """The explain study trains all layers (depth 0) and other models while the search's space
    may start at depth 3: each trial's request is the largest of them, measured at each."""
    from types import SimpleNamespace

    from tune_search import studies as registry
    from tune_search.config import SearchConfig
    from tune_search.trainable.models import ModelSpec
    from tune_search.trainable.trial import TrialSpec

    peaks = {("efficientnet_lite0", 3): 1, ("efficientnet_lite0", 0): 3, ("mobilenet_v3_small", 0): 2}
    monkeypatch.setattr(memory, "measured", lambda probe: {"peak_bytes": peaks[probe.model, probe.freeze_depth] * 10**9, "feature_numbers": 0})
    monkeypatch.setattr(memory, "available_bytes", lambda: 100 * 10**9)
    cfg = SearchConfig.model_validate(
        {"resources": {"gpus_per_trial": 0}, "explain": {"enabled": True, "models": [{"name": "mobilenet_v3_small", "weights": "none"}]}}
    )
    shapes = registry.by_name["explain"].trains(cfg)
    assert shapes == [(cfg.model.name, cfg.model.weights, 0), ("mobilenet_v3_small", "none", 0)]
    space = SimpleNamespace(freeze_depth=(3, 9), batch_size=(32, 64))
    spec = TrialSpec(ModelSpec("efficientnet_lite0", "auto"), max_epochs=4)
    data = SimpleNamespace(num_classes=10, entry=Path("cache"), train=[], val=[])
    assert memory.fit(cfg, space, spec, data, None).memory_bytes == 10**9 + memory.RAY_WORKER_BYTES  # the search's alone
    assert memory.fit(cfg, space, spec, data, None, [registry.by_name["explain"]]).memory_bytes == 3 * 10**9 + memory.RAY_WORKER_BYTES


@pytest.mark.slow  # measures a trial's step in a child process
def test_a_run_this_machine_cannot_hold_exits_2_before_ray_starts(tmp_path, monkeypatch, capsys):
    import ray

    monkeypatch.setattr(memory, "available_bytes", lambda: memory.RAY_OWN_BYTES + 10**8)
    (tmp_path / "space.yaml").write_text("data: {source: mnist, image_size: 32, train_size: 60, val_size: 30}\nbudget: {num_samples: 3, max_epochs: 1}\n")
    assert main(["--space", str(tmp_path / "space.yaml"), "--storage", str(tmp_path), "--name", "small"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "memory: one trial needs about" in err[0] and f"{(memory.RAY_OWN_BYTES + 1e8) / 1e9:.1f} GB available" in err[0], err
    assert not ray.is_initialized() and "Traceback" not in "".join(err)


# a real memory budget: a cgroup of its own for a child process --------------------------------


@contextlib.contextmanager
def memory_cgroup(limit: int):
    """A new memory cgroup under this process's own (cgroup v1), limited to `limit` bytes; its
    cgroup.procs file. Skips where this machine does not let the test make one."""
    lines = Path("/proc/self/cgroup").read_text().splitlines() if Path("/proc/self/cgroup").exists() else []
    own = next((path for _, controllers, path in (line.split(":", 2) for line in lines) if "memory" in controllers.split(",")), None)
    if own is None:
        pytest.skip("no cgroup v1 memory controller here to set a budget with")
    group = Path("/sys/fs/cgroup/memory") / own.lstrip("/") / f"tune-search-test-{os.getpid()}"
    try:
        group.mkdir()
        (group / "memory.limit_in_bytes").write_text(str(limit))
    except OSError as exc:
        group.exists() and group.rmdir()
        pytest.skip(f"cannot make a memory cgroup here: {exc}")
    try:
        yield group / "cgroup.procs"
    finally:
        with contextlib.suppress(OSError):
            group.rmdir()


def run_within(procs: Path, args: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """`args` as a child process in the cgroup whose cgroup.procs is `procs`."""

    def enter() -> None:
        procs.write_text(str(os.getpid()))

    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout, preexec_fn=enter, check=False)


@pytest.mark.slow  # one measurement in a child process
def test_a_trials_footprint_is_measured_once_per_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    probe = Probe("efficientnet_lite0", "auto", 6, 32, 16, 3, 32)
    first = memory.measured(probe)
    monkeypatch.setattr(memory.subprocess, "run", lambda *a, **k: pytest.fail("measured again"))
    assert memory.measured(probe) == first and list((tmp_path / "tune-search" / "footprint").glob("*.json"))
    with pytest.raises(pytest.fail.Exception, match="measured again"):  # other settings: measured anew
        memory.measured(Probe("efficientnet_lite0", "auto", 6, 32, 32, 3, 32))
    monkeypatch.setattr(memory, "_machine", lambda: "x86_64 model name : another CPU 2")
    with pytest.raises(pytest.fail.Exception, match="measured again"):  # another machine: measured anew
        memory.measured(probe)


WHOLE_RUN = """
data: {source: mnist, image_size: SIDE, cache: CACHE}
model: {name: mobilenet_v3_small, weights: none}
space: {augmentations: [], freeze_depth: max, batch_size: 16, lr: [0.001, 0.01]}
budget: {num_samples: 3, max_epochs: 1, grace_period: 1}
resources: {cpus_per_trial: 2}  # the budget holds one trial at a time: it gets both cores
"""
# MNIST's 5,000 digits at 512 px decode to 3.9 GB; the run's processes take about 2 GB of their own
SIDE, BUDGET = 512, 3_000_000_000


@pytest.mark.slow  # decodes 3.9 GB, computes features of 5,000 images at 512 px, starts Ray
def test_a_whole_run_on_data_larger_than_its_memory_budget_completes(tmp_path):
    """`tune-search` itself, its Ray and its trials held to BUDGET by the kernel (page cache
    included): the images it decodes and its trials read (through the classifier-only depth's
    shared features, written to the cache entry) are 1.3x the budget, and the run ends as
    without one. In the same budget a process holding those images is killed, and
    `tune-search` refuses to decode them into memory, in one line, before Ray starts."""
    space = tmp_path / "space.yaml"
    space.write_text(WHOLE_RUN.replace("SIDE", str(SIDE)).replace("CACHE", str(tmp_path / "cache")))
    cli = [sys.executable, "-m", "tune_search.cli", "--space", str(space), "--storage", str(tmp_path / "runs")]
    with memory_cgroup(BUDGET) as procs:
        done = run_within(procs, [*cli, "--name", "budget", "--no-screen"], Path.cwd(), timeout=900)
        used = int((procs.parent / "memory.max_usage_in_bytes").read_text())
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        entry = next(p for p in (tmp_path / "cache").iterdir() if p.is_dir())
        images = sum(f.stat().st_size for f in entry.iterdir() if f.is_file())
        assert images > 1.25 * BUDGET and used <= BUDGET, (images, used)
        trials = pd.read_parquet(tmp_path / "runs" / "budget" / "trials.parquet")
        assert len(trials) == 3 and (trials["baseline"] == "head only").sum() == 1 and trials["top1"].notna().all()
        assert "GB memory (its measured peak)" in done.stdout

        # the control: the same images held in memory do not fit the budget
        held = f"import numpy as np; np.ones({images}, dtype=np.uint8).sum()"
        assert run_within(procs, [sys.executable, "-c", held], tmp_path).returncode == -9  # killed by the kernel
        space.write_text(WHOLE_RUN.replace("SIDE", str(SIDE)).replace("CACHE", "null"))
        refused = run_within(procs, [*cli, "--name", "in-memory"], Path.cwd())
        assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
        assert "decode to 3.9 GB" in refused.stderr and "Set data.cache" in refused.stderr

"""What a run needs in memory, checked before Ray starts; and a run's data larger than a memory
budget (a real cgroup limit, enforced by the kernel) decoded and trained on within it."""

import contextlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

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


BUDGET = 1_200_000_000
SIDE, BATCH = 768, 8  # the planted set's 1,800 images at 768 px decode to 3.2 GB, 2.65x the budget

TRAIN_ON_THE_CACHE = textwrap.dedent(
    """
    import json, sys
    import torch
    from torch import nn
    from tune_search.trainable.augment import build_pipeline
    from tune_search.trainable.data import DataSpec, balanced_order, load_dataset
    from tune_search.trainable.available import available_bytes
    from tune_search.trainable.loop import predict, train_one_epoch

    side, batch = int(sys.argv[2]), int(sys.argv[3])
    data = load_dataset(DataSpec(source="planted", image_size=side, train_size=1200, val_size=600, cache=sys.argv[1]))

    class Scale(nn.Module):  # pixels 0-255 to 0-1: the real loop hands models uint8 images
        def forward(self, x):
            return x.float() / 255

    model = nn.Sequential(Scale(), nn.Conv2d(3, 4, 8, stride=8), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, data.num_classes))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    order = balanced_order(data.train.labels, None, torch.Generator().manual_seed(0))
    trained = train_one_epoch(
        model, data.train, order, optimizer=optimizer, scheduler=torch.optim.lr_scheduler.ConstantLR(optimizer, 1.0),
        loss_fn=nn.CrossEntropyLoss(), batch_size=batch, pipeline=build_pipeline({"hflip": 1.0}, side), device=torch.device("cpu"),
    )
    logits = predict(model, data.val, batch_size=2 * batch, device=torch.device("cpu"))
    print(json.dumps({"images_bytes": data.train.images.nbytes + data.val.images.nbytes, "seen": len(order) + len(logits),
                      "loss": trained["train_loss"], "available": available_bytes()}))
    """
)


@pytest.mark.slow  # decodes 3.2 GB
def test_data_larger_than_a_memory_budget_is_decoded_and_trained_on_within_it(tmp_path):
    """The kernel holds the child to BUDGET (page cache included); the images it decodes into
    the cache and trains an epoch on are 2.65x that. A child that holds the same images in its
    memory is killed at the budget, and `tune-search` refuses them, in one line, before Ray."""
    (tmp_path / "train.py").write_text(TRAIN_ON_THE_CACHE)
    with memory_cgroup(BUDGET) as procs:
        done = run_within(procs, [sys.executable, "train.py", str(tmp_path / "cache"), str(SIDE), str(BATCH)], tmp_path)
        assert done.returncode == 0, done.stderr[-2000:]
        figures = json.loads(done.stdout.strip().splitlines()[-1])
        assert figures["images_bytes"] > 2.5 * BUDGET and figures["seen"] == 1800 and figures["loss"] > 0
        assert figures["available"] < BUDGET  # the budget is what the run sees as available

        # the control: the same images held in memory do not fit the budget
        held = f"import numpy as np; np.ones({figures['images_bytes']}, dtype=np.uint8).sum()"
        assert run_within(procs, [sys.executable, "-c", held], tmp_path).returncode == -9  # killed by the kernel

        # tune-search refuses, in one line, before Ray: the images held in memory (no cache) ...
        space = tmp_path / "space.yaml"
        data = f"source: planted, image_size: {SIDE}, train_size: 1200, val_size: 600"
        space.write_text(f"data: {{{data}, cache: null}}\n")
        cli = [sys.executable, "-m", "tune_search.cli", "--space", str(space), "--storage", str(tmp_path / "runs")]
        refused = run_within(procs, cli, Path.cwd())
        assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
        assert "decode to 3.2 GB" in refused.stderr and "Set data.cache" in refused.stderr
        # ... and with the cache, a trial's step beside Ray's own processes: its measuring child
        # is the one the kernel kills, and the driver says so
        space.write_text(f"data: {{{data}, cache: {tmp_path / 'cache'}}}\n")
        refused = run_within(procs, cli, Path.cwd())
        assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
        assert "memory: " in refused.stderr and "GB available" in refused.stderr, refused.stderr
        assert "read from the cache" in refused.stdout  # the entry the first child built


@pytest.mark.slow  # one measurement in a child process
def test_a_trials_footprint_is_measured_once_per_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    probe = Probe("efficientnet_lite0", "auto", 6, 32, 16, 3, 32)
    first = memory.measured(probe)
    monkeypatch.setattr(memory.subprocess, "run", lambda *a, **k: pytest.fail("measured again"))
    assert memory.measured(probe) == first and list((tmp_path / "tune-search" / "footprint").glob("*.json"))
    with pytest.raises(pytest.fail.Exception, match="measured again"):  # other settings: measured anew
        memory.measured(Probe("efficientnet_lite0", "auto", 6, 32, 32, 3, 32))

"""A trial's result files are in storage before Ray's snapshot can count the result."""

import json
from pathlib import Path
from types import SimpleNamespace

import pyarrow.fs as pafs
import pytest
from ray import tune

from tune_search.storage import storage_filesystem
from tune_search.trialfiles import ResultsBeforeSnapshot, result_files


def _three_epochs(config):
    for epoch in (1, 2, 3):
        tune.report({"top1": 0.1 * epoch, "epoch": epoch})


class _InStorage(tune.Callback):
    """After the callbacks before it: how many results of the trial storage holds now."""

    def __init__(self):
        self.seen: list[tuple[int, int]] = []

    def on_trial_result(self, iteration, trials, trial, result, **info):
        stored = Path(trial.storage.trial_fs_path, "result.json")
        lines = len(stored.read_text().splitlines()) if stored.is_file() else 0
        self.seen.append((result["training_iteration"], lines))


def _run(tmp_path: Path, name: str, callbacks: list) -> list[tuple[int, int]]:
    import ray

    probe = _InStorage()
    try:
        tune.Tuner(
            _three_epochs,
            tune_config=tune.TuneConfig(num_samples=2),
            run_config=tune.RunConfig(
                name=name, storage_path=str(tmp_path), storage_filesystem=storage_filesystem(str(tmp_path)), callbacks=[*callbacks, probe], verbose=0
            ),
        ).fit()
    finally:
        ray.shutdown()
    return probe.seen


def test_storage_that_fails_leaves_the_copy_to_ray_and_the_run_going(tmp_path):
    (tmp_path / "result.json").write_text("{}\n")
    trial = SimpleNamespace(local_path=str(tmp_path), storage=SimpleNamespace(storage_filesystem=pafs.LocalFileSystem(), trial_fs_path="/proc/none/trial"))
    ResultsBeforeSnapshot().on_trial_result(iteration=1, trials=[], trial=trial, result={})  # raises nothing


@pytest.mark.slow  # starts Ray
def test_every_result_is_in_storage_when_ray_counts_it_and_not_without_the_copy(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNE_GLOBAL_CHECKPOINT_S", "1000")  # Ray's own copy comes only at the end
    with_copy = _run(tmp_path, "with", result_files())
    assert len(with_copy) == 6 and all(lines == reported for reported, lines in with_copy), with_copy
    without = _run(tmp_path, "without", [c for c in result_files() if not isinstance(c, ResultsBeforeSnapshot)])
    assert any(lines < reported for reported, lines in without), without  # storage lagged the results
    for trial in (tmp_path / "with").glob("*/result.json"):
        assert [json.loads(line)["epoch"] for line in trial.read_text().splitlines()] == [1, 2, 3]

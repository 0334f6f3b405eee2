"""Checkpoint retention: a trial's older checkpoints go only once the stored snapshot names a
newer one; a finished experiment keeps the newest checkpoint of the trials asked for."""

import json
from pathlib import Path

from tune_search.checkpoints import prune_behind_snapshot, prune_checkpoints


def make_experiment(root: Path, checkpoints: dict[str, int], named: dict[str, int | None], snapshot: str = "experiment_state-2026-01-01_00-00-00.json") -> Path:
    """An experiment folder as Ray Tune lays it out: trial folders with checkpoint_00000N
    folders, and a snapshot (its trial table, as JSON strings inside JSON) naming each trial's
    last result's checkpoint."""
    for trial, count in checkpoints.items():
        for index in range(count):
            folder = root / f"trial_{trial}" / f"checkpoint_{index:06d}"
            folder.mkdir(parents=True)
            (folder / "state.pt").write_bytes(b"x" * 10)
    rows = [
        [json.dumps({"trial_id": trial, "relative_logdir": f"trial_{trial}"}), json.dumps({"last_result": {"checkpoint_dir_name": None if index is None else f"checkpoint_{index:06d}"}})]
        for trial, index in named.items()
    ]
    (root / snapshot).write_text(json.dumps({"trial_data": rows, "runner_data": {}}))
    return root


def left(root: Path) -> dict[str, list[str]]:
    return {t.name: sorted(c.name for c in t.glob("checkpoint_*")) for t in sorted(root.glob("trial_*"))}


def test_only_checkpoints_older_than_the_snapshots_go(tmp_path):
    root = make_experiment(tmp_path, {"a": 4, "b": 2, "c": 3}, {"a": 2, "b": None})  # c is newer than the snapshot
    assert prune_behind_snapshot(str(root)) == (2, 1 + 2 + 1)
    assert left(root) == {
        "trial_a": ["checkpoint_000002", "checkpoint_000003"],  # the named one and the newer one
        "trial_b": ["checkpoint_000000", "checkpoint_000001"],  # its last result had no checkpoint: all kept
        "trial_c": ["checkpoint_000000", "checkpoint_000001", "checkpoint_000002"],  # not in the snapshot yet
    }


def test_the_newest_snapshot_is_the_one_read(tmp_path):
    root = make_experiment(tmp_path, {"a": 3}, {"a": 0})
    (root / "experiment_state-2026-01-02_00-00-00.json").write_text(json.dumps({"trial_data": [[json.dumps({"relative_logdir": "trial_a"}), json.dumps({"last_result": {"checkpoint_dir_name": "checkpoint_000002"}})]]}))
    assert prune_behind_snapshot(str(root)) == (2, 0) and left(root) == {"trial_a": ["checkpoint_000002"]}


def test_no_snapshot_no_deletion(tmp_path):
    (tmp_path / "trial_a" / "checkpoint_000000").mkdir(parents=True)
    (tmp_path / "trial_a" / "checkpoint_000001").mkdir(parents=True)
    assert prune_behind_snapshot(str(tmp_path)) == (0, 0) and len(left(tmp_path)["trial_a"]) == 2


def test_a_finished_experiment_keeps_the_newest_checkpoint_of_the_kept_trials_slimmed(tmp_path):
    root = make_experiment(tmp_path, {"a": 3, "b": 2}, {"a": 2, "b": 1})
    slimmed = []
    assert prune_checkpoints(str(root), {"a"}, slim=lambda path: slimmed.append(path.name) or 1) == 4
    assert left(root) == {"trial_a": ["checkpoint_000002"], "trial_b": []} and slimmed == ["checkpoint_000002"]

"""Checkpoint retention: a trial's older checkpoints go only once the stored snapshot names a
newer one; a finished experiment keeps the newest checkpoint of the trials asked for."""

import json
from pathlib import Path

from tune_search.checkpoints import prune_behind_snapshot, prune_checkpoints


def manager(trial: str, index: int | None) -> dict:
    """A trial's checkpoint manager with checkpoints 0..index registered, encoded as Ray's
    snapshot encodes it (a pickle under its CLOUDPICKLE_FALLBACK marker)."""
    from ray.train import Checkpoint, CheckpointConfig
    from ray.train._internal.checkpoint_manager import _CheckpointManager, _TrainingResult
    from ray.tune.utils.serialization import TuneFunctionEncoder

    held = _CheckpointManager(CheckpointConfig(num_to_keep=None))
    for i in range(-1 if index is None else index + 1):
        held.register_checkpoint(_TrainingResult(checkpoint=Checkpoint(f"/runs/x/trial_{trial}/checkpoint_{i:06d}"), metrics={"epoch": i + 1}))
    return json.loads(json.dumps(held, cls=TuneFunctionEncoder))


def snapshot_row(trial: str, registered: int | None, reported: int | None = None) -> list[str]:
    """One trial of a snapshot's trial table (JSON strings inside JSON): its checkpoint
    manager holding 0..registered, its last result naming checkpoint `reported` (default:
    the same)."""
    reported = registered if reported is None else reported
    name = None if reported is None else f"checkpoint_{reported:06d}"
    runtime = {"last_result": {"checkpoint_dir_name": name}, "checkpoint_manager": manager(trial, registered)}
    return [json.dumps({"trial_id": trial, "relative_logdir": f"trial_{trial}"}), json.dumps(runtime)]


def make_experiment(
    root: Path,
    checkpoints: dict[str, int],
    named: dict[str, int | None],
    snapshot: str = "experiment_state-2026-01-01_00-00-00.json",
    reported: dict[str, int] | None = None,
) -> Path:
    """An experiment folder as Ray Tune lays it out: trial folders with checkpoint_00000N
    folders, and a snapshot whose trial table has each trial's checkpoints registered up to
    `named` (and its last result naming `reported`, default the same)."""
    for trial, count in checkpoints.items():
        for index in range(count):
            folder = root / f"trial_{trial}" / f"checkpoint_{index:06d}"
            folder.mkdir(parents=True)
            (folder / "state.pt").write_bytes(b"x" * 10)
    rows = [snapshot_row(trial, index, (reported or {}).get(trial)) for trial, index in named.items()]
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
    (root / "experiment_state-2026-01-02_00-00-00.json").write_text(json.dumps({"trial_data": [snapshot_row("a", 2)]}))
    assert prune_behind_snapshot(str(root)) == (2, 0) and left(root) == {"trial_a": ["checkpoint_000002"]}


def test_a_checkpoint_reported_but_not_yet_registered_is_not_what_resume_uses(tmp_path):
    """Ray registers a checkpoint with the trial's manager after the result that carried it,
    and a snapshot can fall between: its last result names checkpoint 1 while a restore would
    load checkpoint 0 (a killed screen failed to resume this way). Checkpoint 0 stays."""
    root = make_experiment(tmp_path, {"a": 2}, {"a": 0}, reported={"a": 1})
    assert prune_behind_snapshot(str(root)) == (0, 1) and left(root) == {"trial_a": ["checkpoint_000000", "checkpoint_000001"]}


def test_no_snapshot_no_deletion(tmp_path):
    (tmp_path / "trial_a" / "checkpoint_000000").mkdir(parents=True)
    (tmp_path / "trial_a" / "checkpoint_000001").mkdir(parents=True)
    assert prune_behind_snapshot(str(tmp_path)) == (0, 0) and len(left(tmp_path)["trial_a"]) == 2


def test_a_snapshot_read_back_cut_short_prunes_nothing_until_it_reads_whole(tmp_path):
    """An object store's reader can return a snapshot cut short when Ray replaces it between
    the reader's size lookup and its read (a remote run failed this way): nothing is deleted
    and nothing raises, and the next whole read prunes."""
    root = make_experiment(tmp_path, {"a": 3}, {"a": 2})
    snapshot = next(root.glob("experiment_state-*.json"))
    whole = snapshot.read_text()
    snapshot.write_text(whole[: len(whole) // 2])
    assert prune_behind_snapshot(str(root)) == (0, 0) and len(left(root)["trial_a"]) == 3
    snapshot.write_text(whole)
    assert prune_behind_snapshot(str(root)) == (2, 0)


def test_a_finished_experiment_keeps_the_newest_checkpoint_of_the_kept_trials_slimmed(tmp_path):
    root = make_experiment(tmp_path, {"a": 3, "b": 2}, {"a": 2, "b": 1})
    slimmed = []
    assert prune_checkpoints(str(root), {"a"}, slim=lambda path: slimmed.append(path.name) or 1) == 4
    assert left(root) == {"trial_a": ["checkpoint_000002"], "trial_b": []} and slimmed == ["checkpoint_000002"]

"""Which trial checkpoints a run keeps, and when the others go, on any storage.

Ray Tune's `CheckpointConfig(num_to_keep=N)` deletes a trial's older checkpoint the moment it
registers a newer one, and uploads the experiment snapshot (the trial table `Tuner.restore`
reads) later, in the background. A driver killed between the two leaves a snapshot that names
a checkpoint that is gone, and the trial cannot be resumed. Here Ray keeps every checkpoint
(`num_to_keep=None`) and `CheckpointRetention` deletes a trial's older ones only once the
snapshot in storage has registered a newer one: whatever the snapshot resumes from is always
there.
"""

from __future__ import annotations

import json
import pickletools
import posixpath
import re
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow.fs as pafs
from ray import tune

from tune_search.storage import filesystem

SNAPSHOT = re.compile(r"experiment_state-.*\.json")
CHECKPOINT = re.compile(r"checkpoint_(\d+)")


def _listing(fs: pafs.FileSystem, path: str) -> list[pafs.FileInfo]:
    return fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))


def checkpoints(fs: pafs.FileSystem, experiment: str) -> dict[str, list[str]]:
    """Each trial folder's checkpoint folders, oldest first: {trial folder name: [paths]}."""
    found: dict[str, list[str]] = {}
    for trial in _listing(fs, experiment):
        if trial.type != pafs.FileType.Directory or not trial.base_name.startswith("trial_"):
            continue
        inside = [i for i in _listing(fs, trial.path) if i.type == pafs.FileType.Directory and CHECKPOINT.fullmatch(i.base_name)]
        found[trial.base_name] = [i.path for i in sorted(inside, key=lambda i: int(CHECKPOINT.fullmatch(i.base_name)[1]))]
    return found


def registered(manager: object) -> list[int]:
    """The checkpoint indices a trial's checkpoint manager holds, as the snapshot stores it: a
    hex-encoded pickle under Ray's CLOUDPICKLE_FALLBACK marker. Its opcodes are only listed
    (`pickletools.genops`), never executed: the checkpoint paths are strings in it."""
    if not isinstance(manager, dict) or not isinstance(manager.get("value"), str):
        return []
    try:
        ops = list(pickletools.genops(bytes.fromhex(manager["value"])))
    except ValueError:
        return []
    found = (CHECKPOINT.fullmatch(posixpath.basename(arg)) for _, arg, _ in ops if isinstance(arg, str))
    return sorted({int(m[1]) for m in found if m})


def named_by_snapshot(fs: pafs.FileSystem, experiment: str) -> dict[str, int | None] | None:
    """{trial folder name: index of the checkpoint Ray would resume it from} as the newest
    experiment snapshot in storage says; None without a snapshot. That is the newest
    checkpoint the trial's checkpoint manager had registered, which can be one behind the
    last result's `checkpoint_dir_name` (Ray registers a checkpoint after the result that
    carried it); a trial with none registered maps to None."""
    state = _newest_snapshot(fs, experiment)
    if state is None:
        return None
    named: dict[str, int | None] = {}
    for trial_json, runtime_json in state.get("trial_data", []):
        trial, runtime = json.loads(trial_json), json.loads(runtime_json)
        folder = posixpath.basename(str(trial.get("relative_logdir") or ""))
        held = registered(runtime.get("checkpoint_manager"))
        named[folder] = held[-1] if held else None
    return named


def _newest_snapshot(fs: pafs.FileSystem, experiment: str, tries: int = 3) -> dict | None:
    """The newest snapshot's contents; None when there is none, or when it was rewritten
    while read on each try: an object store's reader takes the object's size when it opens it
    and the bytes a moment later, so an object replaced in between reads back cut short (seen
    on S3 as "Unterminated string"). None prunes nothing until a later look."""
    for attempt in range(tries):
        snapshots = sorted(i.path for i in _listing(fs, experiment) if i.type == pafs.FileType.File and SNAPSHOT.fullmatch(i.base_name))
        if not snapshots:
            return None
        try:
            with fs.open_input_stream(snapshots[-1]) as stream:
                return json.loads(stream.read())
        except (ValueError, FileNotFoundError):  # cut short, or replaced by a newer one
            time.sleep(0.1 * (attempt + 1))
    return None


def prune_behind_snapshot(uri: str) -> tuple[int, int]:
    """Delete each trial's checkpoints older than the one the stored snapshot resumes it
    from; (deleted, older ones left because the snapshot does not name a newer one yet)."""
    fs, experiment = filesystem(uri)
    named = named_by_snapshot(fs, experiment)
    if named is None:
        return 0, 0
    deleted = left = 0
    for trial, paths in checkpoints(fs, experiment).items():
        resume_from = named.get(trial)
        for path in paths[:-1]:
            if resume_from is not None and int(CHECKPOINT.fullmatch(posixpath.basename(path))[1]) < resume_from:
                fs.delete_dir(path)
                deleted += 1
            else:
                left += 1
    return deleted, left


class CheckpointRetention(tune.Callback):
    """Runs `prune_behind_snapshot` in the driver while trials checkpoint, at most every
    `every_s` seconds, until nothing older is left."""

    def __init__(self, uri: str, every_s: float = 2.0):
        self.uri, self.every_s = uri, every_s
        self._pending, self._last = False, float("-inf")

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info) -> None:
        self._pending = True

    def on_step_end(self, iteration, trials, **info) -> None:
        if self._pending and time.monotonic() - self._last >= self.every_s:
            self._last = time.monotonic()
            self._pending = prune_behind_snapshot(self.uri)[1] > 0


def prune_checkpoints(uri: str, keep: set[str] = frozenset(), slim: Callable[[Path], int] | None = None) -> int:
    """In a finished experiment (a local folder or a URI), delete every checkpoint of the
    trials not in `keep` (trial ids) and all but the newest of those in it, whose newest is
    passed to `slim` (locally; on a remote storage it is fetched and put back); the number of
    checkpoints deleted. Checkpoints serve resume while a phase runs; afterwards the best
    trials' weights are enough."""
    fs, experiment = filesystem(uri)
    deleted = 0
    for trial, paths in checkpoints(fs, experiment).items():
        kept = paths[-1:] if trial.removeprefix("trial_") in keep else []
        for path in paths:
            if path not in kept:
                fs.delete_dir(path)
                deleted += 1
        if kept and slim is not None:
            _slim(fs, kept[0], slim)
    return deleted


def _slim(fs: pafs.FileSystem, path: str, slim: Callable[[Path], int]) -> None:
    if isinstance(fs, pafs.LocalFileSystem):
        slim(Path(path))
        return
    with tempfile.TemporaryDirectory() as local:
        pafs.copy_files(path, local, source_filesystem=fs)
        if slim(Path(local)):
            pafs.copy_files(local, path, destination_filesystem=fs)

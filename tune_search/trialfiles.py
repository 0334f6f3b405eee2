"""Each trial's result files reach the storage before any experiment snapshot that counts them.

Ray Tune's loggers write a trial's params.json, result.json and progress.csv in the driver's
staging folder as results arrive, and Ray copies that folder to storage, the experiment
snapshot with it, later, in the background, file by file. A driver killed during that copy can
leave a snapshot that has a trial finished while its result.json in storage stops epochs
earlier; resumed, the trial is rightly not trained again, and those epochs are gone from its
history (caught once by the fault test: a screen run finished at epoch 3, storage held epoch 1).
Here Ray's own JSON and CSV loggers are placed first (Ray adds its own only where none is
given), and after them `ResultsBeforeSnapshot` copies the trial's files to storage at once.
Every snapshot Ray writes later then counts only results storage already holds.
"""

from __future__ import annotations

import posixpath
from pathlib import Path

import pyarrow.fs as pafs
from ray import tune
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
from ray.tune.result import EXPR_PARAM_FILE, EXPR_PROGRESS_FILE, EXPR_RESULT_FILE

FILES = (EXPR_PARAM_FILE, EXPR_RESULT_FILE, EXPR_PROGRESS_FILE)


class ResultsBeforeSnapshot(tune.Callback):
    """After the loggers wrote a trial's result, its files are copied into storage (a local
    storage replaces each file whole: `tune_search.storage`)."""

    def _copy(self, trial) -> None:
        fs, folder = trial.storage.storage_filesystem, trial.storage.trial_fs_path
        try:
            fs.create_dir(folder, recursive=True)
            for name in FILES:
                local = Path(trial.local_path, name)
                if local.is_file():
                    pafs.copy_files(str(local), posixpath.join(folder, name), source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
        except OSError:  # a storage hiccup: Ray's own copy still comes, only not ahead of the snapshot
            pass

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        self._copy(trial)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._copy(trial)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._copy(trial)


def result_files() -> list[tune.Callback]:
    """The callbacks that write each trial's result files, in the order that keeps storage
    ahead of the snapshot; they go last in a run's callbacks."""
    return [JsonLoggerCallback(), CSVLoggerCallback(), ResultsBeforeSnapshot()]

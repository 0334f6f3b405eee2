"""TensorBoard for the whole run: one logdir (RESULTS/tensorboard) holding the search and every
study, one folder per phase and one per run, named as the console names them.

Ray Tune's own TensorBoard files stay in its trial folders (unlabelled hashes, its bookkeeping
scalars first, no HParams for a define-by-run space); this callback writes the view a person
opens: per epoch the accuracy group first (top-1, top-5), then the losses, and per finished run
its HParams, every hyperparameter and every augmentation's switch and strength, against its
last top-1."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from ray import tune

from tune_search.trainable.augment import NAMES, strength_key, switch_key
from tune_search.trainable.hyperparameters import KEYS as HYPERPARAMETER_KEYS
from tune_search.trainable.trial import run_of

# tag per reported metric, in the order TensorBoard shows them (groups sort by name)
SCALARS = {"top1": "accuracy/top-1", "top5": "accuracy/top-5", "val_loss": "loss/validation", "train_loss": "loss/train"}
FINAL = SCALARS["top1"]  # the HParams dashboard's metric: each run's last top-1, no extra tag


def run_name(trial_id: str, config: dict[str, Any]) -> str:
    """A run's folder name: the baseline's name, the study's design row or label and seed, or
    the search trial's id."""
    run = run_of(config)
    if run.get("baseline"):
        name = str(run["baseline"])
    elif "study" in run:
        row = run.get("design_row")
        what = f"row {int(row):02d}" if isinstance(row, int | float) and row >= 0 else (run.get("label") or "run")
        name = f"{run['study']} {what} seed {run.get('seed', 0)}"
    else:
        name = "trial"
    return _slug(f"{name} {trial_id}")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._]+", "-", text).strip("-")


def hparams(config: dict[str, Any]) -> dict[str, float | bool | str]:
    """Every hyperparameter and every augmentation's switch and strength (0 when off)."""
    run = run_of(config)
    out: dict[str, float | bool | str] = {k: run[k] for k in HYPERPARAMETER_KEYS if k in run}
    for name in NAMES:
        on = bool(run.get(switch_key(name), False))
        out[switch_key(name)] = on
        out[strength_key(name)] = float(run.get(strength_key(name)) or 0.0) if on else 0.0
    for key in ("baseline", "study", "seed", "model"):
        if run.get(key) not in (None, ""):
            out[key] = run[key]
    return out


class TensorBoard(tune.Callback):
    """Writes each run of one phase into LOGDIR/PHASE/RUN. Writers are opened lazily and left
    out of the pickle Ray keeps for `Tuner.restore`."""

    def __init__(self, logdir: Path, phase: str):
        self.folder = Path(logdir) / _slug(phase)
        self._writers: dict[str, Any] = {}
        self._last: dict[str, dict] = {}

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_writers": {}}

    def _writer(self, trial):
        if trial.trial_id not in self._writers:
            from tensorboardX import SummaryWriter

            self._writers[trial.trial_id] = SummaryWriter(str(self.folder / run_name(trial.trial_id, trial.config)), flush_secs=5)
        return self._writers[trial.trial_id]

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        self._last[trial.trial_id] = result
        step = int(result.get("epoch") or result.get("training_iteration") or 0)
        writer = self._writer(trial)
        for key, tag in SCALARS.items():
            value = result.get(key)
            if isinstance(value, int | float) and math.isfinite(value):
                writer.add_scalar(tag, float(value), step)

    def _close(self, trial) -> None:
        writer = self._writer(trial)  # opened here for a run that failed before its first result
        del self._writers[trial.trial_id]
        top1 = self._last.get(trial.trial_id, {}).get("top1")
        final = float(top1) if isinstance(top1, int | float) and math.isfinite(top1) else math.nan
        # into the run's own event file (SummaryWriter.add_hparams opens a second writer, whose
        # file name can collide with the first's within a second)
        from tensorboardX.summary import hparams as hparams_summaries

        for summary in hparams_summaries(hparams(trial.config), {FINAL: final}):
            writer.file_writer.add_summary(summary)
        writer.close()

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._close(trial)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._close(trial)

    def on_experiment_end(self, trials, **info) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()

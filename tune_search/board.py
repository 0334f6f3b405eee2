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

from tune_search.runs import run_of
from tune_search.trainable.augment import names_in, strength_key, switch_key, switched_on
from tune_search.trainable.hyperparameters import KEYS as HYPERPARAMETER_KEYS

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
        label = run.get("label")
        if label in names_in(run.keys()):  # a dose-response or sweep run: which strength of it
            what += f" {float(run[strength_key(label)]):g}" if switched_on(run.get(switch_key(label))) else " off"
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
    for name in names_in(run.keys()):
        on = switched_on(run.get(switch_key(name), False))
        out[switch_key(name)] = on
        out[strength_key(name)] = float(run.get(strength_key(name)) or 0.0) if on else 0.0
    out["baseline"] = run.get("baseline") or "none"  # every run has the column: a filter in the HParams table
    out["study"] = run.get("study") or "search"
    for key in ("seed", "model"):
        if run.get(key) not in (None, ""):
            out[key] = run[key]
    return out


def session_end(status: str):
    """The HParams session-end summary with `status` (tensorboardX writes SUCCESS always)."""
    from tensorboardX.proto.api_pb2 import Status
    from tensorboardX.proto.plugin_hparams_pb2 import HParamsPluginData, SessionEndInfo
    from tensorboardX.proto.summary_pb2 import Summary, SummaryMetadata

    content = HParamsPluginData(session_end_info=SessionEndInfo(status=Status.Value(status)), version=0)
    metadata = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name="hparams", content=content.SerializeToString()))
    return Summary(value=[Summary.Value(tag="_hparams_/session_end_info", metadata=metadata)])


class TensorBoard(tune.Callback):
    """Writes each run of one phase into LOGDIR/PHASE/RUN. Writers are opened lazily and left
    out of the pickle Ray keeps for `Tuner.restore`."""

    def __init__(self, logdir: Path, phase: str, max_epochs: int | None = None):
        self.folder = Path(logdir) / _slug(phase)
        self.max_epochs = max_epochs  # a run that stopped short of it (ASHA) did not end a success
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

    def _ended(self, trial, failed: bool) -> str:
        """How the run ended: `full budget`, `stopped early` (ASHA) or `failed` (raised or diverged)."""
        last = self._last.get(trial.trial_id, {})
        if failed or last.get("diverged"):
            return "failed"
        budget = run_of(trial.config).get("max_epochs") or self.max_epochs
        epoch = last.get("epoch") or last.get("training_iteration") or 0
        return "stopped early" if budget and epoch < budget else "full budget"

    def _close(self, trial, failed: bool = False) -> None:
        writer = self._writer(trial)  # opened here for a run that failed before its first result
        del self._writers[trial.trial_id]
        top1 = self._last.get(trial.trial_id, {}).get("top1")
        final = float(top1) if isinstance(top1, int | float) and math.isfinite(top1) else math.nan
        # into the run's own event file (SummaryWriter.add_hparams opens a second writer, whose
        # file name can collide with the first's within a second)
        from tensorboardX.summary import hparams as hparams_summaries

        ended = self._ended(trial, failed)
        # HParams has no status for a run stopped early: UNKNOWN, and `ended` says which
        status = {"full budget": "STATUS_SUCCESS", "stopped early": "STATUS_UNKNOWN", "failed": "STATUS_FAILURE"}[ended]
        experiment, start, _ = hparams_summaries({**hparams(trial.config), "ended": ended}, {FINAL: final})
        for summary in (experiment, start, session_end(status)):
            writer.file_writer.add_summary(summary)
        writer.close()

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._close(trial)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._close(trial, failed=True)

    def on_experiment_end(self, trials, **info) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()

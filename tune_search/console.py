"""What a person sees on the console: while a phase runs, one progress bar (done / running /
total, best top-1, time left) and one short line per finished trial, from Ray Tune's callback
hooks; after the search, its outcome; at the end, each study's table and the baselines."""

from __future__ import annotations

import math
import sys
from typing import Any

from ray import tune
from tqdm import tqdm

import pandas as pd

from tune_search import render
from tune_search.export import baseline_summary, config_from_row
from tune_search.trainable.augment import strengths_in
from tune_search.trainable.hyperparameters import HYPERPARAMETERS
from tune_search.trainable.trial import run_of


def trial_summary(config: dict[str, Any]) -> str:
    """The settings that tell one trial from another, in a few words."""
    run = run_of(config)
    shown = ",".join(f"{n} {s:.2f}" for n, s in strengths_in(run).items()) or "no augmentation"
    cell = f" {run['label']}" if run.get("study") == "explain" else ""  # scratch, a model, oversampled ...
    where = run.get("baseline") or (f"{run['study']}{cell} seed {run['seed']}" if "study" in run else "")
    return f"{where + ': ' if where else ''}lr {run.get('lr', math.nan):.2g}, freeze {run.get('freeze_depth')}, {shown}"


class Progress(tune.Callback):
    """A tqdm bar over one phase's trials and a line per finished trial. The bar is made in
    `setup` so the callback pickles (Ray stores it with the run for `Tuner.restore`)."""

    def __init__(self, phase: str, total: int, max_epochs: int):
        self.phase, self.total, self.max_epochs = phase, total, max_epochs
        self._bar: tqdm | None = None
        self._best = -math.inf
        self._last: dict[str, dict] = {}
        self._running: set[str] = set()
        self._done: set[str] = set()

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_bar": None}

    def setup(self, **info) -> None:
        # disable=None: a bar on a terminal; in a log file only the per-trial lines
        self._bar = tqdm(total=self.total, desc=self.phase, unit="trial", file=sys.stdout, dynamic_ncols=True, leave=True, disable=None)

    def _show(self) -> None:
        if self._bar is not None:
            best = f"{self._best:.3f}" if self._best > -math.inf else "-"
            self._bar.set_postfix_str(f"running {len(self._running)}, best top-1 {best}", refresh=True)

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self._running.add(trial.trial_id)
        self._show()

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        self._last[trial.trial_id] = result
        top1 = result.get("top1")
        if isinstance(top1, float) and math.isfinite(top1):
            self._best = max(self._best, top1)
        self._show()

    def _finish(self, trial, status: str) -> None:
        self._running.discard(trial.trial_id)
        if trial.trial_id in self._done:
            return
        self._done.add(trial.trial_id)
        result = self._last.get(trial.trial_id, {})
        epochs = result.get("epoch", 0)
        if status == "completed" and result.get("diverged"):
            status = "diverged"
        elif status == "completed" and epochs < self.max_epochs:
            status = "stopped early"
        top1 = result.get("top1")
        score = f"top-1 {top1:.3f}" if isinstance(top1, float) else "no result"
        line = f"  {trial.trial_id} {status:<13} {epochs} ep  {score}  {trial_summary(trial.config)}"
        if self._bar is None:
            print(line)
        else:
            self._bar.write(line, file=sys.stdout)
            self._bar.update(1)
            self._show()

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._finish(trial, "completed")

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._finish(trial, "errored")
        log = f"{trial.path}/error.txt" if trial.path else "Ray's log"
        message = (str(getattr(trial, "error_msg", "") or "").strip().splitlines() or ["error"])[-1][:160]
        (self._bar.write if self._bar is not None else print)(f"    {message} (full log: {log})")

    def on_experiment_end(self, trials, **info) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def search_outcome(tables: dict[str, pd.DataFrame], seconds: float, *, baselines: bool) -> str:
    """The search's trials by status, its best config, and (`baselines`) the baseline table."""
    trials, best = tables["trials"], tables["best_configs"]
    lines = [f"\n{len(trials)} trials in {seconds:.0f} s: " + ", ".join(f"{n} {s}" for s, n in trials["status"].value_counts().items())]
    if len(best):
        row = best.iloc[0]
        config = config_from_row(row)
        lines += ["\nbest config:", *(f"  {h.name}: {h.show(config[h.name])}" for h in HYPERPARAMETERS)]
        augs = [f"{n} {s:.2f}" for n, s in strengths_in(config).items()]
        lines.append(f"  augmentations: {', '.join(augs) or 'none'}")
        lines.append(f"  -> top-1 {row['top1']:.4f}, top-5 {row['top5']:.4f} after {row['epochs']} epochs")
    if baselines:
        lines.append("\n" + baseline_table(trials, best))
    return "\n".join(lines)


def baseline_table(trials: pd.DataFrame, best: pd.DataFrame) -> str:
    return render.markdown_table(baseline_summary(trials, best))

"""What a person sees on the console: per phase one progress bar on a terminal (done /
running / total, best top-1, time left) or one summary line in a log, from Ray Tune's callback
hooks, with a line per run only for baselines, failures and `--verbose`; after the search, its
outcome; at the end, each study's table, the baselines and the recipe."""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
from ray import tune
from tqdm import tqdm

from tune_search import render
from tune_search.export import baseline_summary, config_from_row
from tune_search.runs import run_of
from tune_search.trainable.augment import strengths_in
from tune_search.trainable.hyperparameters import HYPERPARAMETERS


def display_path(path: Path) -> str:
    """A path as a person would type it here: relative to the working folder when inside it."""
    path = Path(path).resolve()
    return str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else str(path)


def trial_summary(config: dict[str, Any]) -> str:
    """The settings that tell one trial from another, in a few words."""
    run = run_of(config)
    shown = ",".join(f"{n} {s:.2f}" for n, s in strengths_in(run).items()) or "no augmentation"
    cell = f" {run['label']}" if run.get("study") == "explain" else ""  # scratch, a model, oversampled ...
    where = run.get("baseline") or (f"{run['study']}{cell} seed {run['seed']}" if "study" in run else "")
    return f"{where + ': ' if where else ''}lr {run.get('lr', math.nan):.2g}, freeze {run.get('freeze_depth')}, {shown}"


class Progress(tune.Callback):
    """A tqdm bar over one phase's runs (left on screen when the phase ends), or off a terminal
    one line when it ends: runs, time, best top-1. A line per finished run only for the
    baselines, failed runs and with `every_run`. The bar is made in `setup` so the callback
    pickles (Ray stores it with the run for `Tuner.restore`)."""

    def __init__(self, phase: str, total: int, max_epochs: int, every_run: bool = False):
        self.phase, self.total, self.max_epochs, self.every_run = phase, total, max_epochs, every_run
        self._bar: tqdm | None = None
        self._best = -math.inf
        self._last: dict[str, dict] = {}
        self._running: set[str] = set()
        self._done: set[str] = set()
        self._failed = 0
        self._started = time.time()

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_bar": None}

    def setup(self, **info) -> None:
        self._started = time.time()
        # disable=None: a bar on a terminal, none in a log file
        bar = tqdm(total=self.total, desc=self.phase, unit="run", file=sys.stdout, dynamic_ncols=True, leave=True, disable=None)
        self._bar = None if bar.disable else bar

    def _show(self) -> None:
        if self._bar is not None:
            best = f"{self._best:.3f}" if self._best > -math.inf else "-"
            self._bar.set_postfix_str(f"running {len(self._running)}, best top-1 {best}", refresh=True)

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self._running.add(trial.trial_id)
        self._show()

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        self._last[trial.trial_id] = result

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
        if status == "errored":
            self._failed += 1
        elif status != "diverged" and isinstance(top1, float) and math.isfinite(top1):
            self._best = max(self._best, top1)  # finished runs' last top-1, as the tables have it
        if self.every_run or status == "errored" or run_of(trial.config).get("baseline"):
            score = f"top-1 {top1:.3f}" if isinstance(top1, float) else "no result"
            self._write(f"  {trial.trial_id} {status:<13} {epochs} ep  {score}  {trial_summary(trial.config)}")
        if self._bar is not None:
            self._bar.update(1)
            self._show()

    def _write(self, line: str) -> None:
        if self._bar is None:
            print(line)
        else:
            self._bar.write(line, file=sys.stdout)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._finish(trial, "completed")

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._finish(trial, "errored")
        log = f"{trial.path}/error.txt" if trial.path else "Ray's log"
        message = (str(getattr(trial, "error_msg", "") or "").strip().splitlines() or ["error"])[-1][:160]
        self._write(f"    {message} (full log: {log})")

    def on_experiment_end(self, trials, **info) -> None:
        if self._bar is not None:  # the finished bar stays as the phase's line
            self._bar.close()
            self._bar = None
            return
        best = f", best top-1 {self._best:.3f}" if self._best > -math.inf else ""
        failed = f", {self._failed} failed" if self._failed else ""
        print(f"{self.phase}: {len(trials)} runs in {time.time() - self._started:.0f} s{failed}{best}")


def search_outcome(tables: dict[str, pd.DataFrame], *, baselines: bool) -> str:
    """The search's trials by status and its best config in a line (the baseline table
    below with `baselines`)."""
    trials, best = tables["trials"], tables["best_configs"]
    statuses = ", ".join(f"{n} {s.replace('_', ' ')}" for s, n in trials["status"].value_counts().items())
    lines = [f"search: {statuses}"]
    if len(best):
        row = best.iloc[0]
        config = config_from_row(row)
        settings = ", ".join(f"{h.name.replace('_', ' ')} {h.show(config[h.name])}" for h in HYPERPARAMETERS)
        augs = ", ".join(f"{n} {s:.2f}" for n, s in strengths_in(config).items()) or "no augmentation"
        top5 = f", top-5 {row['top5']:.3f}" if pd.notna(row["top5"]) else ""
        epochs = f"{row['epochs']} epoch{'s' * int(row['epochs'] != 1)}"
        lines[0] += f"; best top-1 {row['top1']:.3f}{top5} after {epochs}: {settings}; {augs}"
    if baselines:
        lines.append("\n" + baseline_table(trials, best))
    return "\n".join(lines)


def baseline_table(trials: pd.DataFrame, best: pd.DataFrame) -> str:
    return render.markdown_table(baseline_summary(trials, best))

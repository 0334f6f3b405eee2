import pickle
from types import SimpleNamespace

import pandas as pd

from tune_search.console import Progress, search_outcome
from tune_search.export import CONFIG_COLUMNS


def trial(trial_id, **config):
    return SimpleNamespace(trial_id=trial_id, config={"lr": 0.001, "freeze_depth": 3, **config}, path=None, error_msg="boom\nValueError: bad batch")


def test_a_phase_prints_baselines_failures_and_one_summary_line(capsys):
    progress = pickle.loads(pickle.dumps(Progress("screen", 3, max_epochs=2)))  # Ray stores it with the run
    progress.setup()
    runs = [trial("a", baseline="head only"), trial("b"), trial("c")]
    for t, top1 in zip(runs, (0.5, 0.7, None)):
        progress.on_trial_start(0, runs, t)
        if top1 is not None:
            progress.on_trial_result(0, runs, t, {"top1": top1, "epoch": 2})
    progress.on_trial_complete(0, runs, runs[0])
    progress.on_trial_complete(0, runs, runs[1])
    progress.on_trial_error(0, runs, runs[2])
    progress.on_experiment_end(runs)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:5] == ["a", "completed", "2", "ep", "top-1"] and "head only:" in lines[0]
    assert lines[1].split()[:2] == ["c", "errored"] and "ValueError: bad batch" in lines[2]
    assert lines[3].startswith("screen: 3 runs in ") and lines[3].endswith(", 1 failed, best top-1 0.700")
    assert len(lines) == 4  # the plain run "b" has no line of its own


def test_every_run_gets_a_line_when_asked(capsys):
    progress = Progress("dose", 2, max_epochs=1, every_run=True)
    progress.setup()
    runs = [trial("a"), trial("b", aug_hflip=True, aug_hflip_strength=0.5)]
    for t in runs:
        progress.on_trial_result(0, runs, t, {"top1": 0.6, "epoch": 1})
        progress.on_trial_complete(0, runs, t)
    progress.on_experiment_end(runs)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and "no augmentation" in lines[0] and "hflip 0.50" in lines[1]


def test_the_search_outcome_is_one_line_without_top5_where_it_is_not_measured():
    row = {**{c: False if c.startswith("aug_") and not c.endswith("_strength") else 0.0 for c in CONFIG_COLUMNS},
        "trial_id": "t", "status": "completed", "baseline": "", "epochs": 1, "top1": 0.75, "top5": float("nan"),
           "lr": 0.00125, "freeze_depth": 7, "weight_decay": 0.0,
               "batch_size": 64, "label_smoothing": 0.0, "aug_hflip": True, "aug_hflip_strength": 0.44}  # fmt: skip
    trials = pd.DataFrame([row, {**row, "trial_id": "u", "status": "early_stopped"}])
    line = search_outcome({"trials": trials, "best_configs": trials.iloc[:1]}, baselines=False)
    assert line.startswith("search: 1 completed, 1 early stopped; best top-1 0.750 after 1 epoch: lr ")
    assert "top-5" not in line and "freeze depth 7" in line and line.endswith("; hflip 0.44") and "\n" not in line

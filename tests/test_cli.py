"""The command line, end to end: a small real search on MNIST digits with the bundled
pretrained EfficientNet-Lite0, then a re-run of its best config."""

import contextlib
import io
import json
import os
import pickle
import re
import shutil
from collections import Counter

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

from tune_search.cli import main
from tune_search.constants import BASELINES
from tune_search.trainable.augment import NAMES
from tune_search.trainable.trial import WEIGHTS_ONLY, load_checkpoint
from tune_search.tuner import STUDY_NAME

SMALL = """
data: {source: mnist, image_size: 32, train_size: 240, val_size: 120}
space: {augmentations: [hflip, vflip, crop, blur, sharpen, contrast, affine]}
budget: {num_samples: 6, max_epochs: 2, grace_period: 1, reduction_factor: 2, top_k: 3}
resources: {cpus_per_trial: 1}
screen: {max_seeds: 2}
focus: {enabled: false}
confirm: {seeds: 3}
"""


@pytest.fixture(scope="module")
def search_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    space = root / "space.yaml"
    space.write_text(SMALL)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        assert main(["--space", str(space), "--storage", str(root / "results"), "--name", "small", "--seed", "1", "--no-screen"]) == 0
    (root / "console.txt").write_text(out.getvalue() + err.getvalue())
    return space, root / "results"


@pytest.mark.slow
def test_the_console_is_short_and_ends_with_the_tables(search_run):
    _, results = search_run
    console = (results.parent / "console.txt").read_text()
    lines = [line for line in console.splitlines() if line.strip()]
    assert len(lines) < 20, console
    assert not any(mark in console for mark in ("╭", "Trial status", "Checkpoint successfully", "(train_trial pid="))
    finished = [line for line in lines if line.strip().split(" ")[1:2] and line.split()[1] in ("completed", "stopped")]
    assert len(finished) == 3 and all(any(b in line for b in BASELINES) for line in finished)  # the baselines' lines only
    assert any(line.startswith("search: 6 runs in ") for line in lines)  # the phase's summary line
    assert "| best found |" in console and "optuna-dashboard" in console
    # each trial asks Ray for the memory its step was measured to take before Ray started
    assert re.search(r"each trial: 1 CPU, 0 GPU, [0-9.]+ GB memory \(its measured peak\)", console), console
    # one TensorBoard logdir, printed as it is; the search's runs in it by name
    logdir = results / "small" / "tensorboard"
    assert f"tensorboard --logdir {logdir}" in console
    runs = sorted(p.name.rsplit("-", 1)[0] for p in (logdir / "search").iterdir())
    assert runs == ["all-aug", "all-layers", "head-only", "trial", "trial", "trial"]
    assert all(any(p.glob("events.out.tfevents.*")) for p in (logdir / "search").iterdir())


@pytest.mark.slow
def test_the_optuna_study_is_on_disk_with_every_trial_and_its_state(search_run):
    _, results = search_run
    folder = results / "small"
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(folder / "optuna.journal")))
    study = optuna.load_study(study_name=STUDY_NAME, storage=storage)
    trials = pd.read_parquet(folder / "trials.parquet")
    states = Counter(t.state for t in study.trials)
    assert len(study.trials) == len(trials) == 6
    assert states[TrialState.COMPLETE] == (trials["status"] == "completed").sum()
    assert states[TrialState.PRUNED] == (trials["status"] == "early_stopped").sum() >= 1  # ASHA-stopped
    # every epoch of every trial reached Optuna, the last included; a pruned trial's value is its last epoch's
    history = pd.read_parquet(folder / "history.parquet").sort_values(["trial_id", "epoch"])
    told = sorted(tuple(t.intermediate_values[e] for e in sorted(t.intermediate_values)) for t in study.trials)
    assert told == sorted(tuple(g["top1"]) for _, g in history.groupby("trial_id"))
    assert all(list(t.intermediate_values) == list(range(1, len(t.intermediate_values) + 1)) for t in study.trials)
    for t in study.trials:
        assert t.value == t.intermediate_values[max(t.intermediate_values)]


@pytest.mark.slow
def test_only_the_best_trials_keep_their_checkpoints(search_run):
    _, results = search_run
    folder = results / "small"
    best = set(pd.read_parquet(folder / "best_configs.parquet")["trial_id"])
    kept = {d.name.removeprefix("trial_") for d in folder.glob("trial_*") if any(d.glob("checkpoint_*"))}
    assert kept == best and len(best) == 3
    for trial_id in kept:  # a finished trial cannot resume: its weights stay, its optimizer goes
        (checkpoint,) = (folder / f"trial_{trial_id}").glob("checkpoint_*")
        state = load_checkpoint(checkpoint)
        assert set(state) == set(WEIGHTS_ONLY) and state["model"] and state["epoch"] >= 1


@pytest.mark.slow
def test_search_writes_complete_exports(search_run, capsys):
    _, results = search_run
    folder = results / "small"
    trials = pd.read_parquet(folder / "trials.parquet")
    assert len(trials) == 6 and trials["trial_id"].is_unique
    assert set(trials["status"]) <= {"completed", "early_stopped"}
    assert trials["top1"].between(0, 1).all() and (trials["top5"] >= trials["top1"]).all()
    assert {f"aug_{n}" for n in NAMES} <= set(trials.columns)
    baselines = trials.set_index("baseline").loc[list(BASELINES)]
    assert (baselines["epochs"] == 2).all() and (baselines["status"] == "completed").all()
    assert baselines.loc["head only", "freeze_depth"] == 9 and baselines.loc["all + aug", "aug_crop"]
    # the pretrained backbone beats chance (0.1) on digits after two short epochs
    assert trials["best_top1"].max() > 0.3
    history = pd.read_parquet(folder / "history.parquet")
    assert len(history) == trials["epochs"].sum()
    best = pd.read_parquet(folder / "best_configs.parquet")
    assert len(best) == 3 and best["best_top1"].is_monotonic_decreasing
    assert "budget:" in (folder / "config.yaml").read_text()


@pytest.mark.slow
def test_best_config_reruns_for_the_full_budget(search_run, capsys):
    space, results = search_run
    best = results / "small" / "best_configs.parquet"
    args = ["--space", str(space), "--storage", str(results), "--config-from", str(best), "--row", "0", "--max-epochs", "3"]
    assert main(args) == 0
    rerun = pd.read_parquet(results / "small-row0" / "trials.parquet")
    assert len(rerun) == 1 and rerun.loc[0, "status"] == "completed" and rerun.loc[0, "epochs"] == 3
    source = pd.read_parquet(best).iloc[0]
    assert rerun.loc[0, "lr"] == source["lr"] and rerun.loc[0, "freeze_depth"] == source["freeze_depth"]
    out = capsys.readouterr().out
    assert "| best found |" in out


def test_bad_input_exits_2_with_a_message_and_no_traceback(tmp_path, capsys):
    space = tmp_path / "bad.yaml"
    space.write_text("space: {augmentations: [hflip, cutmix]}\n")
    assert main(["--space", str(space)]) == 2
    err = capsys.readouterr().err
    assert "cutmix" in err and "valid: all, or a list of crop" in err and "Traceback" not in err
    assert main(["--data", str(tmp_path / "missing")]) == 2
    assert "neither a built-in data set" in capsys.readouterr().err
    assert main(["--model", "resnet18", "--weights", str(tmp_path / "none.pth")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_list_augmentations(capsys):
    assert main(["--list-augmentations"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in NAMES)


class RunsCode:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.slow
def test_export_and_report_rebuild_from_ray_results_and_run_no_code(search_run, tmp_path):
    _, results = search_run
    folder = tmp_path / "sent"  # a folder someone sent, with Ray's pickles made to run a command
    shutil.copytree(results / "small", folder)
    marker = tmp_path / "ran"
    payload = pickle.dumps(RunsCode(marker))
    assert pickle.loads(payload) == 0 and marker.exists()  # the payload does run when unpickled
    marker.unlink()
    for pkl in [*folder.rglob("*.pkl"), folder / next(folder.glob("trial_*")).name / "error.pkl"]:
        pkl.write_bytes(payload)
    for state in folder.glob("experiment_state-*.json"):
        state.write_text(json.dumps({"runner_data": {"_type": "CLOUDPICKLE_FALLBACK", "value": payload.hex()}}))
    tables = ("trials", "history", "best_configs")
    before = {name: pd.read_parquet(folder / f"{name}.parquet") for name in tables}
    for name in tables:
        (folder / f"{name}.parquet").unlink()
    (folder / "report.md").unlink()
    assert main(["export", str(folder)]) == 0
    for name in tables:  # exactly as the search wrote them, order included (the baselines stay where they were)
        pd.testing.assert_frame_equal(before[name], pd.read_parquet(folder / f"{name}.parquet"), check_exact=True)
    assert main(["report", str(folder)]) == 0 and "## Baselines" in (folder / "report.md").read_text()
    assert not marker.exists()


@pytest.mark.slow
def test_no_screen_leaves_verdicts_to_the_screen_command(search_run, capsys):
    _, results = search_run
    folder = results / "small"
    effects = pd.read_parquet(folder / "effects.parquet")
    assert (effects["verdict"] == "not screened").all() and effects["search_effect"].isna().all()  # 6 trials: too few
    assert "No screen was run" in (folder / "report.md").read_text()
    assert main(["screen", str(folder), "--seeds", "auto", "--strength", "0.8"]) == 0
    screen = pd.read_parquet(folder / "screen.parquet")
    # 7 augmentations: a folded 8-run design, and one clean run. On 200 images a 1.5-point harm
    # is out of reach after one replicate, so `auto` adds the second of screen.max_seeds (2)
    assert len(screen) == 2 * 16 + 1 and (screen["epochs"] == 2).all()
    assert screen.groupby("seed")["design_row"].apply(lambda rows: sorted(rows[rows >= 0])).tolist() == [list(range(16))] * 2
    assert len(screen[["lr", "freeze_depth"]].drop_duplicates()) == 1  # every run at the best config's settings
    effects = pd.read_parquet(folder / "effects.parquet")
    assert set(effects["verdict"]) <= {"hurts", "helps", "unclear"} and (effects["strength"] == 0.8).all()
    assert effects["ci_low"].lt(effects["ci_high"]).all() and effects["detectable"].gt(0).all()
    assert list(results.glob("small-screen/trial_*"))  # Ray's runs beside the folder
    out = capsys.readouterr().out
    assert "| augmentation | top-1 effect, points | verdict |" in out and "intervals simultaneous across 7 augmentations" in out
    assert "screen after 1 replicate: residual SD" in out  # why the second replicate ran
    assert main(["screen", str(folder), "--base", "worst"]) == 2
    assert "screen.base" in capsys.readouterr().err


def test_resume_without_a_previous_search_says_so(tmp_path, capsys):
    assert main(["--data", "mnist", "--storage", str(tmp_path), "--name", "none", "--resume"]) == 2
    assert "nothing to resume" in capsys.readouterr().err


@pytest.mark.slow
def test_storage_uri_gets_ray_results_and_the_exports(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # exports are staged in ./results/NAME
    (tmp_path / "space.yaml").write_text(SMALL)
    uri = f"file://{tmp_path}/remote"
    assert main(["--space", "space.yaml", "--storage", uri, "--name", "uri", "--num-samples", "3", "--max-epochs", "1", "--no-screen"]) == 0
    remote = tmp_path / "remote" / "uri"
    assert len(pd.read_parquet(remote / "trials.parquet")) == 3
    assert list(remote.glob("experiment_state-*.json")) and list(remote.glob("trial_*"))

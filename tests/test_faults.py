"""Faults: a diverging trial is recorded and the search goes on; a killed search resumes
without losing or repeating trials."""

import ipaddress
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pandas as pd
import psutil
import pytest
from optuna.trial import TrialState

from tune_search.cli import main
from tune_search.trainable.hold import HOLD, hold_spec
from tune_search.tuner import STUDY_NAME

pytestmark = pytest.mark.slow  # trains models and starts Ray

SMALL = """
data: {source: mnist, image_size: 32, train_size: 200, val_size: 100}
space: {augmentations: [hflip, blur], lr: [1.0e-3, 1.0e+30], baseline_lr: 1.0e-3, freeze_depth: [0, max]}
budget: {num_samples: 6, max_epochs: 2}
screen: {enabled: false}
run: {seed: 3}
"""


def test_diverged_trials_are_recorded_and_the_search_goes_on(tmp_path):
    (tmp_path / "space.yaml").write_text(SMALL)
    assert main(["--space", str(tmp_path / "space.yaml"), "--storage", str(tmp_path), "--name", "div"]) == 0
    trials = pd.read_parquet(tmp_path / "div" / "trials.parquet")
    assert len(trials) == 6
    ok = trials[trials["baseline"] != ""]
    assert (ok["status"] == "completed").all() and (ok["lr"] == 1e-3).all()
    diverged = trials[trials["status"] == "diverged"]
    assert len(diverged) >= 1 and (diverged["lr"] > 1e10).all()
    assert diverged["error"].str.contains("training loss became nan").all()
    # Optuna was told these trials failed (its study, as optuna-dashboard reads it)
    journal = optuna.storages.journal.JournalFileBackend(str(tmp_path / "div" / "optuna.journal"))
    study = optuna.load_study(study_name=STUDY_NAME, storage=optuna.storages.JournalStorage(journal))
    assert sum(t.state == TrialState.FAIL for t in study.trials) == len(diverged)
    assert {t.user_attrs["ray_trial_id"] for t in study.trials} == set(trials["trial_id"])  # the journal names each Ray trial


def one_at_a_time(trials: int, studies: str) -> str:
    """A small MNIST space whose trials run one at a time for 3 epochs each."""
    return f"""
data: {{source: mnist, image_size: 32, train_size: 300, val_size: 100}}
space: {{augmentations: [hflip, blur], lr: [1.0e-3, 1.0e-2], freeze_depth: [0, max]}}
budget: {{num_samples: {trials}, max_epochs: 3, grace_period: 3}}
resources: {{max_concurrent: 1}}
{studies}
"""


RESUMABLE = one_at_a_time(6, "screen: {seeds: 1}\ndose: {enabled: false}\nconfirm: {enabled: false}")


def listening_addresses(root: int) -> set[str]:
    """The addresses the processes of `root`'s session (the CLI, its local Ray) listen on."""
    session = os.getsid(root)
    pids = {p.pid for p in psutil.process_iter() if _session(p) == session}
    return {c.laddr.ip.removeprefix("::ffff:") for c in psutil.net_connections("inet") if c.status == psutil.CONN_LISTEN and c.pid in pids}


def _session(process) -> int | None:
    try:
        return os.getsid(process.pid)
    except OSError:
        return None


def _result_lines(folder: Path) -> dict[str, int]:
    return {d.name: len((d / "result.json").read_text().splitlines()) for d in folder.glob("trial_*") if (d / "result.json").is_file()}


def _held(hold: Path, deadline: float, proc=None) -> int:
    """The pid of the trial process the hold hook holds, once it holds."""
    while not (hold / "held").is_file():
        if time.time() > deadline or (proc is not None and proc.poll() is not None):
            raise AssertionError(f"no trial reached the hold point: {sorted(p.name for p in hold.iterdir())}")
        time.sleep(0.05)
    return int((hold / "held").read_text())


def _kill_when(cli: list[str], folder: Path, what: str, hold: Path, check_loopback: bool = False) -> dict[str, str]:
    """Start the CLI with its third run held by the hold hook after its first epoch, and SIGKILL
    the CLI (and its local Ray) there: two runs or more finished, the third mid-way, on any
    machine. Every later run is held there too: a run another slot finished in the last second
    before the kill would be newer than Ray's snapshot and retrained from an older checkpoint,
    by as many epochs as that machine trains in a second. The finished runs' result.json as
    they were."""
    hold.mkdir()
    env = {**os.environ, HOLD: hold_spec(hold, folder.name, epoch=1, nth=3, later="hold")}
    proc = subprocess.Popen(cli, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        pid, deadline = _held(hold, time.time() + 300, proc), time.time() + 60
        # its report recorded (result.json is copied into the storage whole: read until it settles)
        # (a study trains on every slot: the other slots go on while this one is held)
        while not _two_finished_one_held(lines := _result_lines(folder), _pids(folder), pid):
            assert time.time() < deadline, lines
            time.sleep(0.05)
        # the runs finished now are in Ray's snapshot (written every second) by the kill; the
        # other slots hold their runs after epoch 1 (or are still starting one)
        time.sleep(5)
        if check_loopback:
            listening = listening_addresses(proc.pid)
            assert listening and all(ipaddress.ip_address(ip).is_loopback for ip in listening), listening
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return {k: (folder / k / "result.json").read_text() for k, n in lines.items() if n == 3}


def _two_finished_one_held(lines: dict[str, int], pids: dict[str, int], held: int) -> bool:
    finished = sum(n == 3 for n in lines.values())
    return finished >= 2 and any(lines.get(name) == 1 for name, pid in pids.items() if pid == held)


def _pids(folder: Path) -> dict[str, int]:
    """Each trial folder's pid of its first report."""
    return {
        d.name: json.loads(d.joinpath("result.json").read_text().splitlines()[0])["pid"]
        for d in folder.glob("trial_*")
        if d.joinpath("result.json").is_file() and d.joinpath("result.json").read_text().strip()
    }


def _epochs(folder: Path) -> dict[str, list[int]]:
    """Each trial folder's reported epochs, in the order they were reported."""
    return {d.name: [json.loads(line)["epoch"] for line in (d / "result.json").read_text().splitlines()] for d in folder.glob("trial_*")}


def _trained_at_most_one_epoch_twice(epochs: list[int], last: int) -> bool:
    """1..last, with at most the one epoch in flight when the driver was killed trained again
    after the resume (Ray registers a checkpoint after the result that carried it, so the
    snapshot a resume starts from can be one epoch behind that trial's reports)."""
    return epochs == list(range(1, last + 1)) or any(epochs == [*range(1, k + 1), *range(k, last + 1)] for k in range(1, last + 1))


def test_a_killed_search_and_a_killed_screen_resume_without_losing_or_repeating_runs(tmp_path, capsys):
    (tmp_path / "space.yaml").write_text(RESUMABLE)
    args = ["--space", str(tmp_path / "space.yaml"), "--storage", str(tmp_path), "--name", "r"]
    cli = [sys.executable, "-m", "tune_search.cli", *args]
    folder, screen = tmp_path / "r", tmp_path / "r-screen"
    searched = _kill_when(cli, folder, "search", tmp_path / "hold-search", check_loopback=True)
    screened = _kill_when([*cli, "--resume"], screen, "screen", tmp_path / "hold-screen")  # the search finishes, the screen is killed

    capsys.readouterr()
    assert main([*args, "--resume"]) == 0
    # each kill is named by the next command, with the last line the killed one logged
    assert "note: the previous command on this run stopped without a word" in capsys.readouterr().out
    log = (folder / "console.log").read_text().splitlines()
    assert sum("stopped without a word" in line for line in log) == 2 and log[-1].endswith("ended: exit 0"), log
    trials = pd.read_parquet(folder / "trials.parquet")
    assert len(trials) == 6 and trials["trial_id"].is_unique
    assert (trials["epochs"] == 3).all() and (trials["status"] == "completed").all()
    history = pd.read_parquet(folder / "history.parquet")
    assert not history.duplicated(["trial_id", "epoch"]).any() and len(history) == 18
    runs = pd.read_parquet(folder / "screen.parquet")
    assert len(runs) == 8 + 1 and not runs.duplicated(["seed", "design_row", "label"]).any()
    assert (runs["epochs"] == 3).all()
    for where, before in ((folder, searched), (screen, screened)):
        for name, text in before.items():  # finished runs were kept, not trained again
            assert (where / name / "result.json").read_text() == text
    for where, before, count in ((folder, searched, 6), (screen, screened, 9)):
        epochs = _epochs(where)
        assert len(epochs) == count and all(_trained_at_most_one_epoch_twice(e, 3) for e in epochs.values()), epochs
        assert all(epochs[name] == [1, 2, 3] for name in before)  # finished before the kill: never trained again


WORKER = one_at_a_time(3, "screen: {enabled: false}")


def test_a_trial_whose_process_is_killed_loses_at_most_the_epoch_in_flight(tmp_path, monkeypatch):
    (tmp_path / "space.yaml").write_text(WORKER)
    folder, hold = tmp_path / "w", tmp_path / "hold"
    hold.mkdir()
    # the first trial process to report epoch 1 holds there until it is killed: no race
    monkeypatch.setenv(HOLD, hold_spec(hold, "w", epoch=1, nth=1))
    killed: dict[str, int] = {}

    def kill_the_held_trial():
        pid = _held(hold, time.time() + 300)
        deadline = time.time() + 60
        while time.time() < deadline and not killed:
            for name, first in _pids(folder).items() if folder.is_dir() else ():
                if first == pid:  # its epoch-1 report is in its result.json
                    os.kill(pid, signal.SIGKILL)
                    killed[name] = pid
            time.sleep(0.05)

    killer = threading.Thread(target=kill_the_held_trial, daemon=True)
    killer.start()
    assert main(["--space", str(tmp_path / "space.yaml"), "--storage", str(tmp_path), "--name", "w"]) == 0
    killer.join(timeout=5)
    assert killed, "no trial was killed"
    (name,) = killed
    reports = [json.loads(line) for line in (folder / name / "result.json").read_text().splitlines()]
    before = [r["epoch"] for r in reports if r["pid"] == killed[name]]
    after = [r["epoch"] for r in reports if r["pid"] != killed[name]]
    assert before == [1] and after and after[-1] == 3  # held after epoch 1; a new process finished it
    # it restarted from its last checkpoint: at most the epoch in flight at the kill is trained again
    assert after == [2, 3] or after == [1, 2, 3], after
    history = pd.read_parquet(folder / "history.parquet")
    assert not history.duplicated(["trial_id", "epoch"]).any() and len(history) == 9
    for rebuilt in (False, True):  # as the search wrote it, and rebuilt from the trial folders
        if rebuilt:
            assert (folder / name / "error.txt").is_file() and main(["export", str(folder)]) == 0
        trials = pd.read_parquet(folder / "trials.parquet")
        assert len(trials) == 3 and (trials["status"] == "completed").all() and trials["error"].isna().all()


def _checkpoint_names(folder: Path) -> set[str]:
    return {f"{c.parent.name}/{c.name}" for c in folder.glob("trial_*/checkpoint_*")}


def test_a_driver_killed_right_after_each_checkpoint_change_resumes_every_time(tmp_path):
    """The moment a checkpoint appears, and the moment an older one is deleted, are where a
    snapshot that lags behind would name a checkpoint that is gone; kill the driver there
    (alternately), resume, again and again."""
    (tmp_path / "space.yaml").write_text(one_at_a_time(3, "screen: {enabled: false}"))
    args = ["--space", str(tmp_path / "space.yaml"), "--storage", str(tmp_path), "--name", "k"]
    folder, kills, finished = tmp_path / "k", [], False
    for attempt in range(8):
        wanted = ("new", "deleted")[attempt % 2]
        proc = subprocess.Popen(
            [sys.executable, "-m", "tune_search.cli", *args, *(["--resume"] if attempt else [])],
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        seen = _checkpoint_names(folder)
        while proc.poll() is None:
            now = _checkpoint_names(folder)
            if now - seen if wanted == "new" else seen - now:
                break
            seen |= now
            time.sleep(0.005)
        if proc.poll() is not None:
            assert proc.returncode == 0, proc.stderr.read()
            finished = True
            break
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        kills.append(wanted)
    assert kills.count("new") >= 2 and kills.count("deleted") >= 2, kills
    if not finished:
        assert main([*args, "--resume"]) == 0
    trials = pd.read_parquet(folder / "trials.parquet")
    assert len(trials) == 3 and (trials["status"] == "completed").all() and (trials["epochs"] == 3).all()
    history = pd.read_parquet(folder / "history.parquet")
    assert not history.duplicated(["trial_id", "epoch"]).any() and len(history) == 9

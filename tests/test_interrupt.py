"""Ctrl-C (SIGINT) and SIGTERM in a real run: one line saying what to run to resume, exit 130,
no traceback; --resume then finishes with no finished run trained again."""

import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from tests.test_faults import _held, _result_lines, one_at_a_time
from tune_search.cli import interrupted_line, main
from tune_search.trainable.hold import HOLD, hold_spec

SPACE = one_at_a_time(3, "screen: {seeds: 1}\nfocus: {enabled: false}\nsweep: {enabled: false}\ndose: {enabled: false}\nconfirm: {seeds: 2}")


def test_the_interrupted_line_names_the_command_that_resumes():
    line = interrupted_line(["search", "--space", "my space.yaml", "--name", "r"], "screen")
    assert line == "interrupted during the screen; every finished run is kept. Resume with: tune-search --space 'my space.yaml' --name r --resume"
    assert interrupted_line(["screen", "results/r", "--resume"], None).endswith("Resume with: tune-search screen results/r --resume")
    assert "run the same command again: tune-search report results/r" in interrupted_line(["report", "results/r"], None)


def _interrupt(cli: list[str], experiment: str, hold, sig: int, terminal: bool) -> str:
    """Run the CLI with a run of `experiment` held; send `sig` there, and return its stderr (it
    must exit 130). `terminal`: the run is held inside its second epoch, and the signal goes
    to the driver's whole process group, Ray's processes included, as a terminal's Ctrl-C
    does; else the run is held between its first and second epochs, and only the driver gets it."""
    hold.mkdir()
    where = hold_spec(hold, experiment, epoch=2, nth=1, point="before") if terminal else hold_spec(hold, experiment, epoch=1, nth=1)
    env = {**os.environ, HOLD: where}
    proc = subprocess.Popen(cli, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    try:
        _held(hold, time.time() + 300, proc)
        if terminal:
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, err
    return err


@pytest.mark.slow
def test_ctrl_c_in_the_search_the_screen_and_the_confirmation_then_resume(tmp_path):
    (tmp_path / "space.yaml").write_text(SPACE)
    args = ["--space", str(tmp_path / "space.yaml"), "--storage", str(tmp_path), "--name", "i"]
    cli = [sys.executable, "-m", "tune_search.cli", *args]
    resume = f"Resume with: tune-search --space {tmp_path / 'space.yaml'} --storage {tmp_path} --name i --resume"
    finished = {}
    for phase, experiment, sig, terminal, command in (
        ("search", "i", signal.SIGINT, False, cli),
        ("screen", "i-screen", signal.SIGTERM, False, [*cli, "--resume"]),
        ("confirm", "i-confirm", signal.SIGINT, True, [*cli, "--resume"]),
    ):
        err = _interrupt(command, experiment, tmp_path / f"hold-{phase}", sig, terminal)
        assert err.strip().splitlines()[-1] == f"tune-search: interrupted during the {phase}; every finished run is kept. {resume}", err
        assert "Traceback" not in err and "Error" not in err, err
        folder = tmp_path / experiment
        finished[experiment] = {k: (folder / k / "result.json").read_text() for k, n in _result_lines(folder).items() if n == 3}
    assert main([*args, "--resume"]) == 0
    trials = pd.read_parquet(tmp_path / "i" / "trials.parquet")
    assert len(trials) == 3 and trials["trial_id"].is_unique and (trials["epochs"] == 3).all()
    screen = pd.read_parquet(tmp_path / "i" / "screen.parquet")
    assert len(screen) == 8 + 1 and not screen.duplicated(["seed", "design_row", "label"]).any()
    runs = pd.read_parquet(tmp_path / "i" / "confirm_runs.parquet")
    assert not runs.duplicated(["seed", "label"]).any() and (runs.groupby("label").size() == 2).all()
    for experiment, before in finished.items():  # a run finished before an interrupt is never trained again
        for name, text in before.items():
            assert (tmp_path / experiment / name / "result.json").read_text() == text

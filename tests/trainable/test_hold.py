"""The fault tests' hold hook: which arrivals it holds, and which one it names."""

import subprocess
import sys
import time

import pytest

from tune_search.trainable.hold import HOLD, hold_spec

ARRIVE = "from tune_search.trainable.hold import maybe_hold; maybe_hold('x', 1, 'after'); print('passed')"


@pytest.mark.parametrize("later, held", [("run", {2}), ("hold", {2, 3, 4})])
def test_the_nth_arrival_is_named_and_held_and_later_ones_as_asked(tmp_path, later, held):
    env = {HOLD: hold_spec(tmp_path, "x", epoch=1, nth=2, later=later), "PYTHONPATH": "."}
    procs = []
    for _ in range(4):  # one at a time, so that the k-th started is the k-th to arrive
        procs.append(subprocess.Popen([sys.executable, "-c", ARRIVE], env=env, stdout=subprocess.PIPE, text=True))
        deadline = time.time() + 60
        while not (tmp_path / f"arrived-{len(procs)}").exists():
            assert time.time() < deadline and procs[-1].poll() in (None, 0)
            time.sleep(0.02)
    try:
        # the others return (no fixed wait: each is awaited); the held ones are still there
        assert all(procs[k - 1].communicate(timeout=60)[0] == "passed\n" for k in {1, 2, 3, 4} - held)
        assert {k for k, p in enumerate(procs, 1) if p.poll() is None} == held
        assert int((tmp_path / "held").read_text()) == procs[1].pid  # only the nth names itself
    finally:
        for p in procs:
            p.kill()
            p.wait()


def test_other_experiments_epochs_and_points_pass(tmp_path, monkeypatch):
    from tune_search.trainable.hold import maybe_hold

    monkeypatch.setenv(HOLD, hold_spec(tmp_path, "x", epoch=1, nth=1, later="hold"))
    maybe_hold("y", 1, "after")
    maybe_hold("x", 2, "after")
    maybe_hold("x", 1, "before")
    assert not list(tmp_path.iterdir())  # none of them arrived

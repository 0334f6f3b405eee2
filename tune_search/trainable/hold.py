"""A fault tests' hook: hold one trial process at a known point, so that a test kills it (or
its driver) there whatever the machine's speed, instead of racing a poll against training.

Off unless the environment variable `TUNE_SEARCH_HOLD` is set (Ray's local workers inherit the
driver's environment) to `FOLDER:EXPERIMENT:EPOCH:NTH`: the NTH trial process of experiment
EXPERIMENT (Ray's run name, e.g. `r-screen`) to report epoch EPOCH writes its pid into
FOLDER/held once that report returned, and then sleeps until it is killed.
"""

from __future__ import annotations

import itertools
import os
import time
from pathlib import Path

HOLD = "TUNE_SEARCH_HOLD"


def hold_spec(folder: str | Path, experiment: str, epoch: int, nth: int) -> str:
    """The value of TUNE_SEARCH_HOLD for a test."""
    return f"{folder}:{experiment}:{epoch}:{nth}"


def maybe_hold(experiment: str, epoch: int) -> None:
    """Hold here forever when this process is the one TUNE_SEARCH_HOLD names; else return."""
    value = os.environ.get(HOLD)
    if not value:
        return
    folder, wanted, at, nth = value.rsplit(":", 3)
    if experiment != wanted or epoch != int(at):
        return
    for k in itertools.count(1):  # each arrival claims the next number, atomically
        try:
            os.close(os.open(Path(folder) / f"arrived-{k}", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            break
        except FileExistsError:
            continue
    if k != int(nth):
        return
    partial = Path(folder) / ".held.partial"
    partial.write_text(str(os.getpid()))
    partial.replace(Path(folder) / "held")
    while True:
        time.sleep(1)

"""A fault tests' hook: hold one trial process at a known point, so that a test kills it (or
its driver) there whatever the machine's speed, instead of racing a poll against training.

Off unless the environment variable `TUNE_SEARCH_HOLD` is set (Ray's local workers inherit the
driver's environment) to `FOLDER:EXPERIMENT:EPOCH:NTH:POINT:LATER`: the NTH trial process of
experiment EXPERIMENT (Ray's run name, e.g. `r-screen`) to reach epoch EPOCH writes its pid into
FOLDER/held and then sleeps until it is killed; POINT `after` holds it once that epoch's
report returned (between epochs), `before` once the epoch trained but before it is reported
(as a trial is for most of a run: inside an epoch, its last result older than its work).
LATER `hold` holds every process that reaches the point after the NTH as well (without
writing `held`), so that a test killing the driver finds nothing moving on the other slots:
a run finishing in the last second before the kill is newer than Ray's snapshot, and how many
epochs it trained in that second depends on the machine; `run` lets them go on.
"""

from __future__ import annotations

import itertools
import os
import time
from pathlib import Path

HOLD = "TUNE_SEARCH_HOLD"


def hold_spec(folder: str | Path, experiment: str, epoch: int, nth: int, point: str = "after", later: str = "run") -> str:
    """The value of TUNE_SEARCH_HOLD for a test."""
    assert point in ("before", "after") and later in ("run", "hold")
    return f"{folder}:{experiment}:{epoch}:{nth}:{point}:{later}"


def maybe_hold(experiment: str, epoch: int, point: str) -> None:
    """Hold here forever when this process is one TUNE_SEARCH_HOLD names; else return."""
    value = os.environ.get(HOLD)
    if not value:
        return
    folder, wanted, at, nth, where, later = value.rsplit(":", 5)
    if experiment != wanted or epoch != int(at) or point != where:
        return
    for k in itertools.count(1):  # each arrival claims the next number, atomically
        try:
            os.close(os.open(Path(folder) / f"arrived-{k}", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            break
        except FileExistsError:
            continue
    if k < int(nth) or (k > int(nth) and later == "run"):
        return
    if k == int(nth):
        partial = Path(folder) / ".held.partial"
        partial.write_text(str(os.getpid()))
        partial.replace(Path(folder) / "held")
    while True:
        time.sleep(1)

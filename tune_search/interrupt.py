"""Ctrl-C and SIGTERM (a cluster job stopped): the run stops where it is, keeps everything that
finished, and the CLI says what finished and the exact command that resumes (exit 130).

While Ray Tune trains, the first signal asks Tune to stop gracefully (its SIGUSR1: trials are
stopped and the experiment's state is saved once more, what `--resume` restores) and
`Interrupted` is raised once Tune has returned; outside Tune it is raised at once. A second
signal exits at once. Ray's own SIGINT handler is switched off
(TUNE_DISABLE_SIGINT_HANDLER) and `ray.init`'s SIGTERM handler (which exits with a traceback)
is replaced while `catching` is active.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(Exception):
    """The run was interrupted; `phase` names what was training (None: between phases)."""

    def __init__(self, phase: str | None = None):
        super().__init__(phase or "")
        self.phase = phase


_state: dict = {"signals": 0, "phase": None, "tuning": False}


def _on_signal(signum, frame) -> None:
    _state["signals"] += 1
    if _state["signals"] > 1:
        os.write(2, b"tune-search: stopped at once (interrupted twice); the finished runs are kept, --resume continues\n")
        os._exit(130)
    if _state["tuning"]:
        os.kill(os.getpid(), signal.SIGUSR1)  # Ray Tune's graceful stop
        return
    raise Interrupted(_state["phase"])


@contextlib.contextmanager
def catching() -> Iterator[None]:
    """Handle SIGINT and SIGTERM as above (install it after `ray.init`)."""
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    _state.update(signals=0, phase=None, tuning=False)
    previous = {s: signal.signal(s, _on_signal) for s in SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@contextlib.contextmanager
def tuning(phase: str) -> Iterator[None]:
    """Around one Ray Tune run: a signal stops it gracefully; Interrupted once it returned."""
    _state.update(tuning=True, phase=phase)
    try:
        yield
    finally:
        _state["tuning"] = False
    if _state["signals"]:
        raise Interrupted(phase)

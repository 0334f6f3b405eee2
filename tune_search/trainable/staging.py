"""Where a trial writes a checkpoint before Ray copies it into the run's storage.

A trial that ASHA stops, or whose process is killed, while Ray persists its report never
leaves the `with` that would delete that folder: one model, optimizer and random states
(40 MB on Lite0) left behind per stopped trial. So every process stages under one parent
folder, named by its process id, and each trial first removes the folders of processes
that no longer exist.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PARENT = "tune-search-checkpoints"


def alive(pid: int) -> bool:
    """Whether a process of this id runs on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale(parent: Path) -> list[Path]:
    """Remove the staging folders of processes that have ended; returns what was removed."""
    removed = []
    for folder in parent.glob("*-*"):
        pid = folder.name.split("-", 1)[0]
        if pid.isdigit() and not alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def parent_folder() -> Path:
    """This user's parent folder: another user's trials on a shared machine stage in theirs."""
    return Path(tempfile.gettempdir()) / f"{PARENT}-{os.getuid()}"


@contextmanager
def checkpoint_folder(parent: Path | None = None) -> Iterator[Path]:
    """A new empty folder for one checkpoint, removed on leaving the `with`."""
    parent = parent or parent_folder()
    parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=parent))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)

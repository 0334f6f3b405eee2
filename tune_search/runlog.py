"""The run's own log: `console.log` in its results folder, every line a command prints there,
with the time, written as it is printed, and one `ended` line when the command returns.

A run killed from outside (the kernel's out-of-memory killer, `kill -9`, a lost machine)
cannot say so. Its log then ends without an `ended` line, its last line says where it was,
and the next command on the same results folder prints that line.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from tune_search.trainable.staging import alive

LOG = "console.log"
ENDED = "ended: "
TAIL_BYTES = 4096  # enough for the last lines; a long log is never read whole


LINE = re.compile(r"\S+ \S+ \[(\d+)\] (.*)")  # date, time, [the command's process id], what it printed


def _stamp(line: str) -> str:
    return f"{time.strftime('%Y-%m-%d %H:%M:%S')} [{os.getpid()}] {line}\n"


class _Tee(io.TextIOBase):
    """The console stream, and each whole line of it appended to the log once the log is
    known (lines printed before then wait for it). A progress bar's redraws (`\\r`) leave
    only their last state."""

    def __init__(self, stream):
        self._stream = stream
        self._partial = ""
        self._waiting: list[str] = []
        self._log = None

    def write(self, text: str) -> int:
        written = self._stream.write(text)
        *lines, partial = (self._partial + text).split("\n")
        self._partial = partial.rsplit("\r", 1)[-1]  # a bar redrawn for hours keeps one state
        for line in lines:
            line = line.rsplit("\r", 1)[-1].rstrip()
            if line:
                self._append(line)
        return written

    def _append(self, line: str) -> None:
        if self._log is None:
            self._waiting.append(_stamp(line))
            return
        self._write([_stamp(line)])

    def _write(self, lines: list[str]) -> None:
        try:
            self._log.writelines(lines)
            self._log.flush()
        except OSError:  # a full disk stops the log, never the command
            with contextlib.suppress(OSError):
                self._log.close()
            self._log = _Closed()

    def open(self, path: Path) -> None:
        """Start writing to `path` (the lines printed so far first); OSError if it cannot be opened."""
        if self._log is not None:
            return
        self._log = path.open("a", encoding="utf-8")
        self._write(self._waiting)
        self._waiting.clear()

    def close_log(self, last: str) -> None:
        if self._log is None:
            return
        self._write([_stamp(last)])
        with contextlib.suppress(OSError):
            self._log.close()
        self._log = None

    def flush(self) -> None:
        self._stream.flush()

    def isatty(self) -> bool:  # a progress bar draws itself only on a terminal
        return not self._stream.closed and self._stream.isatty()

    @property
    def closed(self) -> bool:  # libraries that wrapped the console (colorama) ask at exit
        return self._stream.closed

    def fileno(self) -> int:
        return self._stream.fileno()

    @property
    def encoding(self) -> str:
        return self._stream.encoding


class _Closed:
    """A log that failed: it takes lines and keeps none."""

    def writelines(self, lines) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


_tee: _Tee | None = None


@contextlib.contextmanager
def capturing() -> Iterator[None]:
    """Around one command: what it prints goes to the console and, once `attach` named the
    results folder, to its log."""
    global _tee
    _tee = _Tee(sys.stdout)
    try:
        with contextlib.redirect_stdout(_tee):
            yield
    finally:
        _tee = None


def unended(path: Path) -> str | None:
    """The last line of a log whose command stopped before its `ended` line; None when it
    ended, or is still running here (`tune-search report` beside a search)."""
    if not path.is_file():
        return None
    with path.open("rb") as f:
        f.seek(max(0, path.stat().st_size - TAIL_BYTES))
        lines = f.read().decode("utf-8", "replace").splitlines()
    match = LINE.fullmatch(lines[-1]) if lines else None
    if match is None or match[2].startswith(ENDED):
        return None
    pid = int(match[1])
    return None if pid != os.getpid() and alive(pid) else lines[-1]


def attach(folder: Path) -> None:
    """Log this command into `folder`'s console.log, first saying when the command before it
    there stopped without a word."""
    if _tee is None or not folder.is_dir():
        return
    path = folder / LOG
    last = unended(path)
    try:
        _tee.open(path)
    except OSError:  # a results folder the user may read but not write: its commands still run
        return
    if last is not None:
        print(
            f"note: the previous command on this run stopped without a word (killed from outside, such as by the out-of-memory killer); its last line: {last}"
        )


def end(code: int, message: str = "") -> None:
    """The log's last line: how the command ended."""
    if _tee is not None:
        _tee.close_log(f"{ENDED}exit {code}{f': {message}' if message else ''}")

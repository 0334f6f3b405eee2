"""Where Ray Tune writes a run, and how: local storage replaces every file whole.

Ray Tune saves its experiment state (trial table, searcher, scheduler) by copying the driver's
staging folder over the previous copy in storage, file by file, truncating each first. A driver
killed during that copy leaves an empty `experiment_state-*.json`, and `Tuner.restore` then
starts the whole run again. On local storage tune-search hands Ray a filesystem whose writes
go to a hidden temporary file beside the target and replace it on close, so storage always
holds a complete earlier or later version of each file.
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.fs
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from tune_search.location import is_remote

_UMASK = os.umask(0)
os.umask(_UMASK)


class ReplaceOnClose(io.FileIO):
    """A file written under a temporary name in the target's folder, renamed over the target
    when closed cleanly and removed when closed after an error: a reader never sees half a
    file, a crash never leaves one."""

    def __init__(self, path: str):
        folder, name = os.path.split(path)
        fd, self._temporary = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".part")
        os.chmod(self._temporary, 0o666 & ~_UMASK)
        self._target = path
        super().__init__(fd, "wb", closefd=True)

    def close(self) -> None:
        if self.closed:
            return
        super().close()
        os.replace(self._temporary, self._target)

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            self.close()
        else:
            super().close()
            os.unlink(self._temporary)


class ReplacingLocalFileSystem(LocalFileSystem):
    """fsspec's local filesystem, with whole-file replacement for writes."""

    def _open(self, path: str, mode: str = "rb", block_size=None, **kwargs: Any):
        if mode != "wb":
            return super()._open(path, mode, block_size, **kwargs)
        path = self._strip_protocol(path)
        self.makedirs(self._parent(path), exist_ok=True)
        return ReplaceOnClose(path)


def storage_filesystem(uri: str) -> pyarrow.fs.FileSystem | None:
    """The filesystem to hand Ray for STORAGE: None (Ray's own) for a URI, the replacing one
    for a local folder."""
    if is_remote(uri):
        return None
    return pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(ReplacingLocalFileSystem(auto_mkdir=True)))


def write_parquet(frame: pd.DataFrame, path: Path) -> None:
    table = pa.Table.from_pandas(frame, preserve_index=False)
    with ReplaceOnClose(str(path)) as out:
        pq.write_table(table, out)


def write_text(text: str, path: Path) -> None:
    with ReplaceOnClose(str(path)) as out:
        out.write(text.encode())

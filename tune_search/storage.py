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
import posixpath
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pandas as pd
import pyarrow as pa
import pyarrow.fs
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from tune_search.location import RunLocation, is_remote
from tune_search.sections import ConfigError

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


def write_parquet(frame: pd.DataFrame | pa.Table, path: Path) -> None:
    table = frame if isinstance(frame, pa.Table) else pa.Table.from_pandas(frame, preserve_index=False)
    with ReplaceOnClose(str(path)) as out:
        pq.write_table(table, out)


def write_text(text: str, path: Path) -> None:
    with ReplaceOnClose(str(path)) as out:
        out.write(text.encode())


def filesystem(uri: str) -> tuple[pyarrow.fs.FileSystem, str]:
    """A storage URI (its query included, as pyarrow reads it: ?endpoint_override=...) or a
    local folder: its filesystem and the path in it."""
    if is_remote(uri):
        return pyarrow.fs.FileSystem.from_uri(uri)
    return pyarrow.fs.LocalFileSystem(), str(Path(uri).resolve())


# A run on a remote storage is read and written through a local staging folder, results/NAME
# (RunLocation.folder); this file in it names the URI it is a copy of.
SOURCE = ".staged-from"
# what a results command reads: the run's own files, and for `export` each trial's JSON
TRIAL_FILES = re.compile(r"trial_[^/]+/(params\.json|result\.json|error\.txt)")


def fetch(location: RunLocation, *, trial_files: bool = False) -> None:
    """Copy a remote run's files (not its checkpoints, trial folders or TensorBoard events;
    with `trial_files`, each trial's JSON too) into its staging folder, replacing an earlier
    copy; a local folder of that name that is not such a copy is refused, never overwritten."""
    folder = location.folder
    if folder.exists() and _source(folder) != _without_query(location.uri):
        raise ConfigError(f"{folder} exists and is not a copy of {location.uri}; move it away to work on the remote run here")
    fs, root = filesystem(location.uri)
    try:
        listed = fs.get_file_info(pyarrow.fs.FileSelector(root, recursive=trial_files, allow_not_found=True))
    except OSError as exc:
        raise ConfigError(f"{location.uri} cannot be read: {str(exc).splitlines()[0]}") from None
    wanted = [i for i in listed if i.type == pyarrow.fs.FileType.File and _wanted(posixpath.relpath(i.path, root), trial_files)]
    if not wanted:
        raise ConfigError(f"{location.uri} is not a tune-search results folder: it holds no files")
    shutil.rmtree(folder, ignore_errors=True)
    for info in wanted:
        target = folder / posixpath.relpath(info.path, root)
        target.parent.mkdir(parents=True, exist_ok=True)
        with fs.open_input_stream(info.path) as stream, ReplaceOnClose(str(target)) as out:
            shutil.copyfileobj(stream, out)
    mark_staging(location)


def _wanted(relative: str, trial_files: bool) -> bool:
    return "/" not in relative or (trial_files and TRIAL_FILES.fullmatch(relative) is not None)


def _without_query(uri: str) -> str:
    """The URI as a place: the same bucket and path with the endpoint given either way."""
    return urlunsplit(urlsplit(uri)._replace(query="", fragment=""))


def _source(folder: Path) -> str | None:
    try:
        return (folder / SOURCE).read_text(encoding="utf-8")
    except OSError:
        return None


def mark_staging(location: RunLocation) -> None:
    """Name the URI the staging folder is a copy of."""
    location.folder.mkdir(parents=True, exist_ok=True)
    write_text(_without_query(location.uri), location.folder / SOURCE)


def publish(location: RunLocation) -> None:
    """Copy the staging folder's files (tables, report, plots, TensorBoard events) beside Ray's
    results in the remote storage."""
    fs, root = filesystem(location.uri)
    made = set()
    for path in sorted(location.folder.rglob("*")):
        if path.is_file() and path.name != SOURCE:
            target = posixpath.join(root, path.relative_to(location.folder).as_posix())
            if (parent := posixpath.dirname(target)) not in made:  # a local filesystem needs it
                fs.create_dir(parent, recursive=True)
                made.add(parent)
            with path.open("rb") as source, fs.open_output_stream(target) as out:
                shutil.copyfileobj(source, out)

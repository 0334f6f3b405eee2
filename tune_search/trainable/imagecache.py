"""Where decoded images live: in memory, or in the decoded-image cache on disk.

The cache holds a data set's images decoded once, as raw uint8 files (N, 3, S, S) under a
folder named by a hash of everything they depend on: the source files (paths, sizes,
modification times) or the built-in generator, the image size, the subset and split
settings and the decoders' versions. A run, its `--resume` and every results command that
trains open the same folder and decode nothing. Images are written a chunk at a time and
read through memory maps, so no process holds the whole set: trials map the files read-only,
the page cache is shared between them, and nothing goes through Ray's object store but the
folder's name. Read-only, not copy-on-write: a private writable map is charged in full
against the machine's commit limit, so a split larger than memory and swap would not map
at all under Linux's default overcommit (measured: a 60 GB map on a 24 GB machine, ENOMEM).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import uuid
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

VERSION = 1  # of the layout and of what the key covers: a change makes every old entry unused
CHUNK_BYTES = 128 << 20  # decoded images written (and copied) per step: the builder's memory beyond its source
META = "meta.json"  # written last: a folder without it is unfinished and never opened
DEFAULT = "~/.cache/tune-search/images"


class NoRoom(ValueError):
    """The cache's disk has too little free space; the message names the folder and sizes."""


def image_bytes(side: int) -> int:
    return 3 * side * side


def chunk_rows(side: int) -> int:
    return max(1, CHUNK_BYTES // image_bytes(side))


def key_of(identity: dict) -> str:
    text = json.dumps({"version": VERSION, **identity}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def fingerprint(paths: list[str]) -> str:
    """One hash over each file's path, size and modification time (nothing is read)."""
    h = hashlib.sha256()
    for path in paths:
        st = os.stat(path)
        h.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


@dataclass
class Part:
    """One finished array of images: in memory, or a raw file read through fresh maps."""

    count: int
    side: int
    tensor: torch.Tensor | None = None
    path: Path | None = None

    def images(self) -> torch.Tensor:
        """All of them: the tensor, or a read-only map of the file (pages are read when
        touched, shared with every other process mapping it, and dropped under memory
        pressure). A write to it stops the process (SIGSEGV): nothing in a trial writes to
        its images, every batch is a copy."""
        if self.tensor is not None:
            return self.tensor
        if self.count == 0:  # an empty file cannot be mapped
            return torch.zeros(0, 3, self.side, self.side, dtype=torch.uint8)
        return read_only(np.memmap(self.path, dtype=np.uint8, mode="r", shape=(self.count, 3, self.side, self.side)))

    def rows(self, index: np.ndarray) -> torch.Tensor:
        """A copy of the given rows; a file is mapped for this call only, so what was read
        leaves this process's memory when it returns."""
        if self.tensor is not None:
            return self.tensor[torch.from_numpy(index)]
        mapped = np.memmap(self.path, dtype=np.uint8, mode="r", shape=(self.count, 3, self.side, self.side))
        try:
            return torch.from_numpy(np.array(mapped[index]))
        finally:
            del mapped


def read_only(mapped: np.ndarray) -> torch.Tensor:
    """A tensor over a read-only map, without torch's warning that it cannot protect the
    array: the kernel does (a write stops the process)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "The given NumPy array is not writable", UserWarning)
        return torch.from_numpy(mapped)


class _MemoryWriter:
    def __init__(self, side: int):
        self.side, self.chunks = side, []

    def append(self, images: torch.Tensor) -> None:
        self.chunks.append(images)

    def finish(self) -> Part:
        tensor = torch.cat(self.chunks) if self.chunks else torch.zeros(0, 3, self.side, self.side, dtype=torch.uint8)
        self.chunks = []
        return Part(len(tensor), self.side, tensor=tensor)


class _FileWriter:
    def __init__(self, path: Path, side: int):
        self.path, self.side, self.count = path, side, 0
        self.file = open(path, "wb")  # noqa: SIM115 - closed in finish

    def append(self, images: torch.Tensor) -> None:
        assert images.dtype == torch.uint8 and tuple(images.shape[1:]) == (3, self.side, self.side)
        self.file.write(memoryview(images.contiguous().numpy()).cast("B"))
        self.count += len(images)

    def finish(self) -> Part:
        self.file.close()
        return Part(self.count, self.side, path=self.path)


@dataclass
class Store:
    """Where one data set's images are written while it is built: memory (`folder` None) or
    a cache folder being filled."""

    folder: Path | None = None

    def writer(self, name: str, side: int):
        return _MemoryWriter(side) if self.folder is None else _FileWriter(self.folder / f"{name}.u8", side)

    def drop(self, part: Part) -> None:
        if part.path is not None:
            part.path.unlink(missing_ok=True)


def readable_size(n: float) -> str:
    return next(f"{n / scale:.1f} {unit}" for scale, unit in ((1e9, "GB"), (1e6, "MB"), (1e3, "kB"), (1, "bytes")) if n >= scale or unit == "bytes")


def check_room(root: Path, needed: int, what: str) -> None:
    """Refuse (NoRoom), before anything is decoded, a cache its disk cannot hold."""
    probe = root
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if needed > free:
        raise NoRoom(
            f"data.cache {root}: {what} need {readable_size(needed)} of disk and {readable_size(free)} is free there;"
            " set data.cache to a folder on a disk with room, or lower data.image_size or data.train_size / data.val_size"
        )


def is_complete(folder: Path) -> bool:
    return (folder / META).is_file()


def read_meta(folder: Path) -> dict:
    return json.loads((folder / META).read_text())


def open_part(folder: Path, name: str, count: int, side: int) -> Part:
    return Part(count, side, path=folder / f"{name}.u8")


@contextmanager
def building(root: Path, key: str):
    """A fresh folder to build entry `key` in, renamed into place (with its meta file written
    last) only when the block finishes: a killed build leaves no half-written entry. Builds of
    one key take turns (a file lock), so a second process waits and then finds it built."""
    from filelock import FileLock

    root.mkdir(parents=True, exist_ok=True)
    final = root / key
    with FileLock(str(root / f"{key}.lock")):
        if is_complete(final):
            yield None
            return
        partial = root / f".{key}.{uuid.uuid4().hex[:8]}.partial"
        partial.mkdir()
        try:
            yield partial
            if final.exists():  # an unfinished entry left by a killed build of an older layout
                shutil.rmtree(final)
            partial.rename(final)
        finally:
            shutil.rmtree(partial, ignore_errors=True)


def write_meta(folder: Path, meta: dict) -> None:
    partial = folder / f"{META}.partial"
    partial.write_text(json.dumps(meta, indent=1))
    partial.replace(folder / META)


def progress(total: int, what: str):
    """A progress bar on a terminal, nothing elsewhere."""
    from tqdm import tqdm

    return tqdm(total=total, desc=what, unit="img", unit_scale=True, file=sys.stderr, disable=None, leave=False)

"""Where a run lives: Ray's storage (a local folder or a URI such as s3://bucket/path?query),
the run's name in it, and the local results folder its tables and report are written to."""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit


def is_remote(storage: str) -> bool:
    return bool(urlsplit(storage).scheme) and "://" in storage


def resolve_storage(storage: str) -> str:
    """A URI as given; a local folder as an absolute path."""
    return storage if is_remote(storage) else str(Path(storage).expanduser().resolve())


def join(storage: str, name: str) -> str:
    """`name` inside `storage`: a path segment appended to a URI's path (its query, such as
    ?endpoint_override=..., stays at the end), or to a local folder."""
    if not is_remote(storage):
        return str(Path(storage) / name)
    parts = urlsplit(storage)
    return urlunsplit(parts._replace(path=posixpath.join(parts.path or "/", name)))


@dataclass(frozen=True)
class RunLocation:
    """A run called `name` in `storage` (absolute, see `resolve_storage`)."""

    storage: str
    name: str

    @classmethod
    def of(cls, storage: str, name: str) -> RunLocation:
        return cls(resolve_storage(storage), name)

    @classmethod
    def at(cls, results: str) -> RunLocation:
        """The run whose results are at `results`: a URI STORAGE/NAME (its query, such as
        ?endpoint_override=..., kept on STORAGE) or a local folder."""
        if not is_remote(results):
            return cls.beside(Path(results))
        parts = urlsplit(results)
        path = parts.path.rstrip("/")
        if not posixpath.basename(path):
            raise ValueError(f"{results} names no run; give STORAGE/NAME")
        return cls(urlunsplit(parts._replace(path=posixpath.dirname(path))), posixpath.basename(path))

    @classmethod
    def beside(cls, folder: Path) -> RunLocation:
        """The location of a local results folder: its studies' runs go beside it."""
        return cls(str(folder.resolve().parent), folder.resolve().name)

    @property
    def remote(self) -> bool:
        return is_remote(self.storage)

    @property
    def uri(self) -> str:
        """Ray's experiment folder of the search."""
        return join(self.storage, self.name)

    @property
    def folder(self) -> Path:
        """The local results folder: the run's own folder, or for a remote storage the
        staging folder results/NAME whose files are copied beside Ray's at the end."""
        return (Path("results") / self.name).resolve() if self.remote else Path(self.storage) / self.name

    @property
    def board(self) -> Path:
        """TensorBoard's one logdir for the search and every study."""
        return self.folder / "tensorboard"

    def study_name(self, suffix: str) -> str:
        return f"{self.name}-{suffix}"

    def study_uri(self, suffix: str) -> str:
        """Ray's experiment folder of one study (NAME-screen, NAME-dose, ...)."""
        return join(self.storage, self.study_name(suffix))

    def study_folder(self, suffix: str) -> Path | None:
        """The local folder of one study's runs; None on a remote storage."""
        return None if self.remote else Path(self.storage) / self.study_name(suffix)

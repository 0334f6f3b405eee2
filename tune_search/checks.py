"""Checks on the machine and the results folder, made before Ray starts, so that a run
that cannot succeed stops with one message instead of failing inside its trials."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from tune_search.config import ConfigError, SearchConfig, load_config
from tune_search.location import resolve_storage
from tune_search.results import ResultsFolder

# sections that decide what a search trains; resources may differ on the machine that resumes
SEARCH_SECTIONS = ("data", "model", "space", "budget", "run")
NOT_COMPARED = ("verbose", "keep_checkpoints")  # how a run shows and keeps itself, not what it trains


def check_resources(cfg: SearchConfig, address: str | None) -> None:
    """A local Ray can only give trials what this machine has; a cluster's resources are
    checked by Ray itself."""
    if address or os.environ.get("RAY_ADDRESS"):
        return
    gpus, cpus = cfg.resources.gpus_per_trial, cfg.resources.cpus_per_trial
    have_gpus, have_cpus = torch.cuda.device_count(), os.cpu_count() or 1
    if gpus != "auto" and gpus > have_gpus:
        raise ConfigError(
            f"resources.gpus_per_trial {gpus:g}: this machine has {have_gpus} GPU(s); use at most {have_gpus}, "
            "auto, or --address for a Ray cluster that has them"
        )
    if cpus != "auto" and cpus > have_cpus:
        raise ConfigError(
            f"resources.cpus_per_trial {cpus:g}: this machine has {have_cpus} CPU(s); use at most {have_cpus}, auto, or --address for a Ray cluster"
        )


def check_writable(folder: Path, what: str) -> None:
    """Create `folder` and write a file in it, or say which setting points where."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check-"):
            pass
    except OSError as exc:
        raise ConfigError(f"{what} {folder} cannot be written: {exc.strerror or exc}") from None


def check_remote_storage(storage: str) -> None:
    """A storage URI (`s3://BUCKET/PATH`, `gs://...`, any URI pyarrow opens, its endpoint in the
    URI's query or the environment as the AWS tools read it) whose bucket exists (object stores)
    or whose folder can be made (any other), and which takes a file; or one line saying which
    of these fails."""
    import uuid
    from urllib.parse import urlsplit

    import pyarrow.fs

    parts = urlsplit(storage)
    where = f"run.storage {storage}"
    if parts.scheme in ("s3", "gs", "gcs") and not parts.netloc:
        raise ConfigError(f"{where} names no bucket; use {parts.scheme}://BUCKET/PATH")
    try:
        filesystem, path = pyarrow.fs.FileSystem.from_uri(storage)
    except Exception as exc:  # pyarrow raises ArrowInvalid, OSError, ... for a URI it cannot open
        raise ConfigError(f"{where} cannot be opened: {str(exc).splitlines()[0]}") from None
    bucket = path.split("/", 1)[0] if parts.scheme in ("s3", "gs", "gcs") else None
    try:
        if bucket is not None and filesystem.get_file_info(bucket).type == pyarrow.fs.FileType.NotFound:
            raise ConfigError(f"{where}: bucket {bucket!r} does not exist; create it first")
        if bucket is None:
            filesystem.create_dir(path, recursive=True)
    except OSError as exc:
        raise ConfigError(f"{where}: {path!r} cannot be reached: {str(exc).splitlines()[0]}") from None
    probe = f"{path.rstrip('/')}/.write-check-{uuid.uuid4().hex}"
    try:
        with filesystem.open_output_stream(probe) as out:
            out.write(b"")
        filesystem.delete_file(probe)
    except OSError as exc:
        raise ConfigError(f"{where}: {bucket or path!r} cannot be written: {str(exc).splitlines()[0]}") from None


def _as_place(key: str, value):
    """A storage compared as the place it names: `.` and the same folder's absolute path are one."""
    return resolve_storage(value) if key == "storage" and isinstance(value, str) else value


def check_resumable(cfg: SearchConfig, folder: Path, state_present: bool) -> None:
    """`--resume` restores Ray's pickled state: only from a folder this search wrote, with the
    same settings (its config.yaml), and with that state present."""
    if not state_present:
        raise ConfigError(f"--resume: nothing to resume in {cfg.run.storage}/{cfg.run.name}: no Ray Tune experiment state there")
    saved = ResultsFolder(folder).config
    if not saved.is_file():
        raise ConfigError(f"--resume: {folder} has no config.yaml; resume only a search tune-search started")
    before = load_config(saved)
    changed = [
        f"{section}.{key} ({value!r} -> {getattr(getattr(cfg, section), key)!r})"
        for section in SEARCH_SECTIONS
        for key, value in getattr(before, section).model_dump().items()
        if key not in NOT_COMPARED and _as_place(key, getattr(getattr(cfg, section), key)) != _as_place(key, value)
    ]
    if changed:
        raise ConfigError(
            f"--resume: {saved} was written with other settings: {', '.join(changed)}; pass the same space file and flags as the interrupted search"
        )

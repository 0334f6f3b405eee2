"""What every designed study shares: the protocol the pipeline, the CLI, the results folder and
the report loop over, the context a study trains in, and the steps common to their runs.

A study is a list of fixed trial configs, trained at full budget as one Ray Tune experiment
(`tune_search.tuner.run_study`) into a runs table, then analysed by pure functions.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import pandas as pd

from tune_search.checkpoints import prune_checkpoints
from tune_search.config import ConfigError, SearchConfig
from tune_search.constants import BASELINES, FINISHED
from tune_search.export import config_from_row, runs_table
from tune_search.location import RunLocation
from tune_search.trainable.augment import is_augmentation_key, strength_key, switch_key
from tune_search.trainable.trial import RUN_KEYS, SPEC_KEYS

if TYPE_CHECKING:
    from tune_search.space import Space
    from tune_search.trainable.data import Dataset
    from tune_search.trainable.trial import TrialSpec

Tables = Mapping[str, pd.DataFrame]


class Folder(Protocol):
    """What a study reads and writes of its results folder (`tune_search.results.ResultsFolder`)."""

    path: Path

    def file(self, table: str) -> Path: ...

    def read(self, table: str) -> pd.DataFrame | None: ...

    def write(self, table: str, frame: pd.DataFrame) -> Path: ...

    def read_all(self) -> dict[str, pd.DataFrame]: ...


@dataclass(frozen=True)
class Flag:
    """One flag of a study's results command: `--seeds` sets `screen.seeds`, ..."""

    flag: str
    kind: Callable[[str], Any] | type
    key: str | None  # the dotted key in the space file it overrides; None: a command option
    help: str | None = None


@dataclass(frozen=True)
class StudyContext:
    """What the studies of one results folder train with."""

    folder: Folder
    cfg: SearchConfig
    space: Space
    spec: TrialSpec
    data: Dataset
    location: RunLocation  # the run the studies belong to: their runs go to STORAGE/NAME-<study>
    resume: bool = False  # continue the studies a killed driver left unfinished


class Study(abc.ABC):
    """One designed study: its configs, its run, its pure analysis, its report section and
    console lines. A new study is one subclass in its own module, listed in `STUDIES`."""

    name: ClassVar[str]  # its runs go to NAME-<name>
    tables: ClassVar[Mapping[str, str]]  # the tables it writes: name -> what it holds
    command: ClassVar[str | None] = None  # the results command that runs it; None: it follows one
    help: ClassVar[str] = ""
    flags: ClassVar[tuple[Flag, ...]] = ()
    follows: ClassVar[str | None] = None  # runs right after this study when `enabled`

    def enabled(self, cfg: SearchConfig) -> bool:
        """Whether it runs after a search (or after the study it follows) by default."""
        return False

    def check(self, cfg: SearchConfig) -> None:
        """Refuse, before Ray starts, settings this study cannot run with (ConfigError)."""

    @abc.abstractmethod
    def run(self, ctx: StudyContext) -> None:
        """Train the study and write its runs table(s)."""

    def analyse(self, tables: Tables, cfg: SearchConfig, classes: Sequence[str]) -> dict[str, pd.DataFrame]:
        """Its analysis tables from the tables present (its runs, and those of the studies
        before it in `STUDIES`): pure, never written here."""
        return {}

    def section(self, tables: Tables, folder: Path) -> list[str]:
        """Its report section's markdown lines (its plots written into `folder`)."""
        return []

    def console(self, tables: Tables) -> str | None:
        """What the console prints of it at the end of a run."""
        return None

    def headline(self, tables: Tables) -> list[str]:
        """Lines for the top of the report, before every section: the answer first."""
        return []

    def closing(self, tables: Tables) -> str | None:
        """The console's last lines, after the baseline table."""
        return None

    def files(self, tables: Tables, cfg: SearchConfig, folder: Path) -> dict[str, str]:
        """Files besides tables it writes into the results folder `folder`: name -> text."""
        return {}


# configs -------------------------------------------------------------------------------------


def base_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """A trial config's non-augmentation settings, every augmentation off."""
    return {k: v for k, v in config.items() if not is_augmentation_key(k) and k not in RUN_KEYS and k not in SPEC_KEYS}


def with_augmentations(base: Mapping[str, Any], on: Mapping[str, float], names: Sequence[str]) -> dict[str, Any]:
    config = dict(base)
    for name in names:
        config[switch_key(name)] = name in on
        if name in on:
            config[strength_key(name)] = float(on[name])
    return config


def study_base(folder: Folder, base: str) -> dict[str, Any]:
    """The non-augmentation settings a study runs at: the best config's, or the "all
    layers" baseline's."""
    if base == "best":
        best = folder.read("best_configs")
        if best is None or best.empty:
            raise ConfigError(f"{folder.file('best_configs')} has no successful trial to study")
        return base_settings(config_from_row(best.iloc[0]))
    trials = folder.read("trials")
    match = trials[(trials["baseline"] == BASELINES[1]) & trials["status"].isin(FINISHED)] if trials is not None else []
    if not len(match):
        raise ConfigError(f"screen.base: baseline needs the search's '{BASELINES[1]}' baseline, which {folder.path} lacks")
    return base_settings(config_from_row(match.iloc[0]))


def screen_strengths(cfg: SearchConfig, space: Space) -> dict[str, float]:
    """Each searched augmentation's strength in the screen: screen.strength (one value or
    one per augmentation), else the baselines' strength; a declared switch is on at 1."""
    chosen = cfg.screen.strength
    default = chosen if isinstance(chosen, float) else space.reference_strength
    named = chosen if isinstance(chosen, dict) else {}
    return {n: 1.0 if n in space.switches else float(named.get(n, default)) for n in space.augmentations}


def screened(runs: pd.DataFrame, names: Sequence[str]) -> list[str]:
    """The augmentations of `names` that a study's runs switched on."""
    return [n for n in names if runs[switch_key(n)].any()]


# running -------------------------------------------------------------------------------------


def estimate(folder: Folder, runs: list[tuple[int, float]], slots: int) -> str:
    """`runs` as (freeze depth, epochs of the search's images), timed by the search's own
    trials at that depth (or at any depth when none ran there)."""
    trials = folder.read("trials")
    if trials is None:
        return ""
    done = trials[(trials["epochs"] > 0) & trials["status"].isin(FINISHED)]
    if not len(done):
        return ""
    per_epoch = done["time_s"] / done["epochs"]
    overall = float(per_epoch.median())
    by_depth = per_epoch.groupby(done["freeze_depth"]).median()
    seconds = sum(float(by_depth.get(depth, overall)) * epochs for depth, epochs in runs)
    return f", about {math.ceil(seconds / max(slots, 1) / 60)} min on {slots} slot{'s' * (slots != 1)}"


def slots(cfg: SearchConfig) -> int:
    """How many runs the running Ray trains at once."""
    import ray

    from tune_search.tuner import trial_resources

    cpus, gpus = trial_resources(cfg.resources, ray.cluster_resources())
    by_cpu = int(ray.cluster_resources().get("CPU", 1) // cpus)
    by_gpu = int(ray.cluster_resources().get("GPU", 0) // gpus) if gpus else by_cpu
    return max(1, min(by_cpu, by_gpu, cfg.resources.max_concurrent or by_cpu))


def train(ctx: StudyContext, configs: list[dict], suffix: str, phase: str | None = None):
    """Train `configs` into STORAGE/NAME-<suffix>: Ray's results and the finished runs' table."""
    from tune_search.tuner import run_study

    results = run_study(ctx.cfg, ctx.data, ctx.spec, configs, location=ctx.location, suffix=suffix, resume=ctx.resume, phase=phase)
    return results, runs_table(results)  # a failed run is not in the table; the console named it


def prune(ctx: StudyContext, *suffixes: str, keep: set[str] = frozenset()) -> None:
    """A finished study's checkpoints served its resume; they go unless run.keep_checkpoints,
    but for the runs in `keep`, whose trained weights stay (the rest of their state goes)."""
    from tune_search.trainable.trial import keep_weights_only

    if ctx.cfg.run.keep_checkpoints:
        return
    for suffix in suffixes:
        prune_checkpoints(ctx.location.study_uri(suffix), keep, slim=keep_weights_only)


def clean_model(results, label: str, *, where: Callable[[Mapping], bool] = lambda run: True):
    """(the run's config, its checkpoint's state) of the first finished run labelled `label`
    that `where` accepts; None when there is none, or its checkpoint is gone."""
    from tune_search.trainable.trial import load_checkpoint, run_of

    for result in results:
        config = run_of(result.config)
        if config["label"] == label and where(config) and result.error is None and result.checkpoint is not None:
            try:
                with result.checkpoint.as_directory() as path:
                    return config, load_checkpoint(path)
            except FileNotFoundError:  # a finished study resumed: its checkpoints were pruned
                return None
    return None

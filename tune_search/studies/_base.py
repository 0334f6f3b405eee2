"""What every designed study shares: the protocol the pipeline, the CLI, the results folder and
the report loop over, and the context a study trains in (their configs: run_configs.py; their
training: training.py).

A study is a list of fixed trial configs, trained at full budget as one Ray Tune experiment
(`tune_search.tuner.run_study`) into a runs table, then analysed by pure functions.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import pandas as pd

from tune_search.location import RunLocation
from tune_search.schemas import Column, Table
from tune_search.sections import SearchConfigBase

if TYPE_CHECKING:
    from tune_search.export import Recommendation
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
    cfg: SearchConfigBase
    space: Space
    spec: TrialSpec
    data: Dataset
    location: RunLocation  # the run the studies belong to: their runs go to STORAGE/NAME-<study>
    resume: bool = False  # continue the studies a killed driver left unfinished


class Study(abc.ABC):
    """One designed study: its configs, its run, its pure analysis, its report section and
    console lines. A new study is one subclass in its own module, listed in `STUDIES`."""

    name: ClassVar[str]  # its runs go to NAME-<name>
    tables: ClassVar[Mapping[str, Table]]  # the tables it writes: name -> what it holds and its declared columns
    command: ClassVar[str | None] = None  # the results command that runs it; None: it follows one
    help: ClassVar[str] = ""
    flags: ClassVar[tuple[Flag, ...]] = ()
    follows: ClassVar[str | None] = None  # runs right after this study when `enabled`
    # its space-file section(s): key -> a `tune_search.sections.Section` model; SearchConfigBase has them
    sections: ClassVar[Mapping[str, type]] = {}
    # its columns of effects.parquet (the one table per augmentation that studies share): it
    # returns them, keyed by `augmentation`, as "effects" from `analyse`; the registry joins them
    effect_columns: ClassVar[tuple[Column, ...]] = ()
    effect_blank: ClassVar[Mapping[str, object]] = {}  # a column's value where it has no row (else null)

    def enabled(self, cfg: SearchConfigBase) -> bool:
        """Whether it runs after a search (or after the study it follows) by default."""
        return False

    def consistent(self, cfg: SearchConfigBase) -> None:
        """Refuse, while the space file is read, its section's values that the rest of the
        file contradicts (ValueError naming the key)."""

    def check(self, cfg: SearchConfigBase) -> None:
        """Refuse, before Ray starts, settings this study cannot run with (ConfigError)."""

    def trains(self, cfg: SearchConfigBase) -> Sequence[tuple[str, str, int]]:
        """The (model, weights, freeze depth) it trains that the search's space may not reach:
        the memory check measures a trial at each of them too."""
        return ()

    @abc.abstractmethod
    def run(self, ctx: StudyContext) -> None:
        """Train the study and write its runs table(s)."""

    def analyse(self, tables: Tables, cfg: SearchConfigBase, classes: Sequence[str]) -> dict[str, pd.DataFrame]:
        """Its analysis tables from the tables present (its runs, and those of the studies
        before it in `STUDIES`): pure, never written here. Under "effects", its own
        `effect_columns` only, which the registry joins into effects.parquet."""
        return {}

    def recommendation(self, tables: Tables) -> Recommendation | None:
        """What it recommends training with, from its analysis tables: best_configs.parquet's
        owner appends it as the last row (`source` says which study, `n_seeds` how many runs)."""
        return None

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

    def files(self, tables: Tables, cfg: SearchConfigBase, folder: Path) -> dict[str, str]:
        """Files besides tables it writes into the results folder `folder`: name -> text."""
        return {}

"""A results folder (STORAGE/NAME): the one place that knows its file names."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from tune_search.export import CONFIG_COLUMNS, HISTORY_COLUMNS, TRIAL_COLUMNS
from tune_search.schemas import SEARCH_TABLES, Table
from tune_search.sections import ConfigError
from tune_search.storage import write_parquet, write_text
from tune_search.studies import EFFECTS, STUDIES

# the search's tables and effects.parquet, then each study's own
TABLES: dict[str, Table] = SEARCH_TABLES | {"effects": EFFECTS} | {name: table for study in STUDIES for name, table in study.tables.items()}

# columns the analysis and the studies read from the search's tables
NEEDED = {"trials": TRIAL_COLUMNS, "best_configs": (*CONFIG_COLUMNS, "top1", "epochs"), "history": HISTORY_COLUMNS[:2]}


def _named(name: str, doc: str) -> property:
    """A results folder's file that is not a table."""
    return property(lambda folder: folder.path / name, doc=doc)


@dataclass(frozen=True)
class ResultsFolder:
    path: Path

    def file(self, table: str) -> Path:
        if table not in TABLES:
            raise KeyError(f"unknown table {table!r}; known: {', '.join(TABLES)}")
        return self.path / f"{table}.parquet"

    def has(self, table: str) -> bool:
        return self.file(table).is_file()

    def read(self, table: str) -> pd.DataFrame | None:
        """The table, None when absent; ConfigError naming the file when it is not a readable
        Parquet file with the columns tune-search reads."""
        if not self.has(table):
            return None
        try:
            frame = TABLES[table].from_arrow(pd.read_parquet(self.file(table)))
        except Exception as exc:  # pyarrow raises several kinds for a damaged file
            raise ConfigError(
                f"{self.file(table)} is not a readable Parquet file ({type(exc).__name__}); `tune-search export` rebuilds the search's tables"
            ) from None
        missing = [c for c in NEEDED.get(table, ()) if c not in frame.columns]
        if missing:
            raise ConfigError(f"{self.file(table)} lacks the columns {', '.join(missing)}")
        return frame

    def read_all(self) -> dict[str, pd.DataFrame]:
        """Every table present, by name."""
        return {table: frame for table in TABLES if (frame := self.read(table)) is not None}

    def classes(self) -> list[str]:
        """The class names an earlier analysis wrote (per_class.parquet), else none."""
        per_class = self.read("per_class")
        return list(dict.fromkeys(per_class["class"])) if per_class is not None and len(per_class) else []

    def require(self, *tables: str) -> None:
        """Refuse a folder that lacks one of these tables, or holds one that cannot be read."""
        for table in tables:
            if not self.has(table):
                raise ConfigError(f"{self.path} is not a finished tune-search results folder: {self.file(table).name} is missing")
            self.read(table)

    def write_tables(self, tables: dict[str, pd.DataFrame]) -> None:
        for table, frame in tables.items():
            self.write(table, frame)

    def write(self, table: str, frame: pd.DataFrame) -> Path:
        """The table in its declared schema (`TABLES`), per-class values keyed by the class
        names in facts.json."""
        self.path.mkdir(parents=True, exist_ok=True)
        classes = self.read_facts().get("data", {}).get("classes") or []
        write_parquet(TABLES[table].to_arrow(table, frame, classes), self.file(table))
        return self.file(table)

    config = _named("config.yaml", "The resolved configuration, every key, as a space file.")
    facts = _named("facts.json", "What the search resolved about its data and model, as JSON (the report reads it).")
    report = _named("report.md", "The report, rebuilt from the Parquet files.")
    journal = _named("optuna.journal", "The search's Optuna study, written as it runs (optuna-dashboard reads it).")

    def write_facts(self, facts: dict) -> None:
        write_text(json.dumps(facts, indent=1) + "\n", self.facts)

    def read_facts(self) -> dict:
        """The facts, {} when absent or unreadable (a folder from before they were written)."""
        try:
            facts = json.loads(self.facts.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return facts if isinstance(facts, dict) else {}

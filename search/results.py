"""A results folder (STORAGE/NAME): the one place that knows its file names."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from search.export import write_parquet

TABLES = {
    "trials": "the search's trials",
    "history": "the search's trials, epoch by epoch",
    "best_configs": "the best trials",
    "effects": "verdicts per augmentation",
    "screen": "the screen's runs",
    "per_class": "the screen's effects per class",
    "affinity": "affinity and diversity per augmentation",
    "dose_runs": "the dose-response runs",
    "dose": "dose-response per augmentation and strength",
    "ablation_runs": "the ablation's runs",
    "ablation": "the ablation's paired effects",
}


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
        return pd.read_parquet(self.file(table)) if self.has(table) else None

    def write(self, table: str, frame: pd.DataFrame) -> Path:
        self.path.mkdir(parents=True, exist_ok=True)
        write_parquet(frame, self.file(table))
        return self.file(table)

    @property
    def config(self) -> Path:
        return self.path / "config.yaml"

    @property
    def report(self) -> Path:
        return self.path / "report.md"

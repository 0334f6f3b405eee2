import math

import pandas as pd
import pyarrow.parquet as pq
import pytest

from tune_search.export import (
    TRIAL_COLUMNS,
    TrialRecord,
    baseline_summary,
    best_configs,
    config_from_row,
    history_table,
    search_tables,
    trials_table,
)
from tune_search.render import markdown_table
from tune_search.results import ResultsFolder
from tune_search.trainable.augment import NAMES


def history(top1s):
    n = len(top1s)
    return pd.DataFrame(
        {
            "epoch": range(1, n + 1),
            "top1": top1s,
            "top5": [min(1.0, t + 0.2) for t in top1s],
            "val_loss": [1.0] * n,
            "train_loss": [1.2] * n,
            "time_this_iter_s": [2.0] * n,
            "trial_id": ["x"] * n,
        }
    )


BASE = {"lr": 1e-3, "freeze_depth": 0, "weight_decay": 0.0, "batch_size": 64, "label_smoothing": 0.0}
RECORDS = [
    TrialRecord("t1", {**BASE, "baseline": "head only", "freeze_depth": 9}, history([0.5, 0.6, 0.62])),
    TrialRecord("t2", {**BASE, "aug_hflip": True, "aug_hflip_strength": 0.4}, history([0.7, 0.8, 0.85])),
    TrialRecord("t3", {**BASE, "aug_crop": True, "aug_crop_strength": 0.9}, history([0.2])),
    TrialRecord("t4", {**BASE, "lr": 0.5}, history([0.1]), error="Diverged: training loss became nan"),
    TrialRecord("t5", {**BASE}, pd.DataFrame(), error="RuntimeError: out of memory"),
    TrialRecord("t6", {**BASE, "aug_blur": True, "aug_blur_strength": 0.2}, history([0.7, 0.86, 0.84])),
]


def test_trials_table_columns_and_statuses():
    t = trials_table(RECORDS, max_epochs=3)
    assert tuple(t.columns) == TRIAL_COLUMNS
    assert t["status"].tolist() == ["completed", "completed", "early_stopped", "diverged", "errored", "completed"]
    assert t.loc[1, "top1"] == 0.85 and t.loc[5, "best_top1"] == 0.86 and t.loc[5, "top1"] == 0.84
    assert t.loc[0, "time_s"] == 6.0 and t.loc[2, "epochs"] == 1 and t.loc[4, "epochs"] == 0
    assert t.loc[1, "aug_hflip"] and t.loc[1, "aug_hflip_strength"] == 0.4
    assert not t.loc[0, "aug_hflip"] and math.isnan(t.loc[0, "aug_hflip_strength"])


def test_parquet_schema_has_nulls_for_strengths_that_are_off(tmp_path):
    tables = search_tables(RECORDS, max_epochs=3, top_k=2)
    ResultsFolder(tmp_path).write_tables(tables)
    schema = pq.read_schema(tmp_path / "trials.parquet")
    assert str(schema.field("aug_hflip").type) == "bool"
    assert str(schema.field("aug_hflip_strength").type) == "double"
    assert str(schema.field("epochs").type) == "int64" and str(schema.field("status").type) in ("string", "large_string")
    table = pq.read_table(tmp_path / "trials.parquet")
    assert table.column("aug_hflip_strength").null_count == len(RECORDS) - 1
    h = pd.read_parquet(tmp_path / "history.parquet")
    assert list(h.columns) == ["trial_id", "epoch", "top1", "top5", "val_loss", "train_loss", "time_s", "train_s", "eval_s", "data_s"]
    assert len(h) == 3 + 3 + 1 + 1 + 3 and set(h["trial_id"]) == {"t1", "t2", "t3", "t4", "t6"}
    assert len(pd.read_parquet(tmp_path / "best_configs.parquet")) == 2 == len(tables["best_configs"])
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind


def test_best_configs_rank_by_best_top1_and_skip_failures():
    best = best_configs(trials_table(RECORDS, 3), k=3)
    assert best["trial_id"].tolist() == ["t6", "t2", "t1"]


def test_config_from_row_round_trips_a_trial():
    t = trials_table(RECORDS, 3)
    config = config_from_row(t.iloc[1])
    assert config["aug_hflip"] and config["aug_hflip_strength"] == 0.4 and config["lr"] == 1e-3
    assert "aug_crop_strength" not in config and set(k for k in config if not k.endswith("_strength")) >= {f"aug_{n}" for n in NAMES}
    assert trials_table([TrialRecord("again", config, history([0.9]))], 1).iloc[0, 11:-1].equals(t.iloc[1, 11:-1])


def test_baseline_summary_table():
    t = trials_table(RECORDS, 3)
    summary = baseline_summary(t, best_configs(t, 1))
    assert summary[""].tolist() == ["head only", "best found"]
    assert summary["top-1"].tolist() == [0.62, 0.84]
    text = markdown_table(summary)
    assert text.splitlines()[0].startswith("|") and "| head only  | 0.620 | 0.820 |" in text


def test_history_of_no_trials_is_an_empty_typed_table():
    assert list(history_table([]).columns)[:2] == ["trial_id", "epoch"]


@pytest.mark.parametrize("k", [1, 10])
def test_best_configs_k(k):
    assert len(best_configs(trials_table(RECORDS, 3), k)) == min(k, 4)

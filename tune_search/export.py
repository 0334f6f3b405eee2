"""Trial records to Parquet tables: pure functions over DataFrames, plus atomic writes."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from tune_search.constants import BASELINES, FINISHED
from tune_search.runs import BUNDLE, run_of
from tune_search.schemas import SEARCH_TABLES
from tune_search.trainable.augment import NAMES, names_in, strength_key, strengths_in, switch_key, switched_on
from tune_search.trainable.hyperparameters import HYPERPARAMETERS, settings_in
from tune_search.trainable.hyperparameters import KEYS as HYPERPARAMETER_KEYS
from tune_search.trainable.trial import SPEC_KEYS

HISTORY_METRICS = ("top1", "top5", "val_loss", "train_loss")
CONFIG_COLUMNS = (*HYPERPARAMETER_KEYS, *(c for n in NAMES for c in (switch_key(n), strength_key(n))))
TRIAL_COLUMNS = tuple(SEARCH_TABLES["trials"].schema().names)
HISTORY_COLUMNS = tuple(SEARCH_TABLES["history"].schema().names)


@dataclass(frozen=True)
class TrialRecord:
    trial_id: str
    config: Mapping[str, Any]
    history: pd.DataFrame  # one row per reported epoch: epoch, top1, top5, val_loss, train_loss, time_this_iter_s, train_s, eval_s, data_s
    error: str | None = None


def records_from_results(results: Iterable) -> list[TrialRecord]:
    """TrialRecords from a Ray Tune ResultGrid (or any iterable of Results)."""
    records = []
    for result in results:
        history = result.metrics_dataframe if result.metrics_dataframe is not None else pd.DataFrame()
        trial_id = result.metrics.get("trial_id") or Path(result.path).name
        error = None if result.error is None else f"{type(result.error).__name__}: {result.error}".strip()
        records.append(_record(str(trial_id), dict(result.config), history, error))
    return records


def _record(trial_id: str, config: Mapping[str, Any], history: pd.DataFrame, error: str | None) -> TrialRecord:
    """One trial as the tables count it: an epoch trained again after its process died (it
    restarts from the checkpoint before) counts once, as it was last trained."""
    if "epoch" in history:
        history = history.drop_duplicates("epoch", keep="last").reset_index(drop=True)
    return TrialRecord(trial_id, config, history, error or _diverged(history))


def _diverged(history: pd.DataFrame) -> str | None:
    """A trial whose training loss became NaN reports why in its last result and ends."""
    if "diverged" not in history or not history["diverged"].notna().any():
        return None
    return f"Diverged: {history['diverged'].dropna().iloc[-1]}"


def records_from_folder(folder: Path) -> list[TrialRecord]:
    """TrialRecords from the JSON Ray Tune writes in each trial folder (params.json,
    result.json, error.txt), never from its pickles: a folder someone sent runs no code.
    An error counts when it came after the trial's last result: a trial restarted from its
    checkpoint after a crash keeps the error file of the crash."""
    records = []
    for trial in sorted(p for p in folder.glob("trial_*") if p.is_dir()):
        try:
            config = json.loads((trial / "params.json").read_text())
            results = trial / "result.json"
            lines = [json.loads(line) for line in results.read_text().splitlines() if line.strip()] if results.is_file() else []
        except (OSError, ValueError) as exc:
            raise ValueError(f"{trial}: unreadable params.json or result.json ({exc})") from None
        if not isinstance(config, dict) or not all(isinstance(line, dict) for line in lines):
            raise ValueError(f"{trial}: params.json or result.json does not hold Ray Tune's records")
        history = pd.DataFrame(lines)
        error = _last_failure(trial / "error.txt", str(lines[-1].get("date", "")) if lines else "")
        trial_id = str(lines[-1].get("trial_id", "")) if lines else ""
        records.append(_record(trial_id or trial.name.removeprefix("trial_"), config, history, error))
    return records


FAILURE = re.compile(r"^Failure # \d+ \(occurred at (\S+)\)$", re.M)


def _last_failure(error_file: Path, last_result_date: str) -> str | None:
    """The last failure Ray recorded in error.txt, when it came at or after the last result
    (both stamped %Y-%m-%d_%H-%M-%S, so they compare as strings)."""
    if not error_file.is_file():
        return None
    text = error_file.read_text(errors="replace")
    failures = list(FAILURE.finditer(text))
    if failures and failures[-1].group(1) < last_result_date:
        return None
    block = text[failures[-1].end() :] if failures else text
    lines = [line.strip() for line in block.splitlines() if line.strip()]
    return lines[-1] if lines else "error (error.txt holds no message)"


def _status(record: TrialRecord, epochs: int, max_epochs: int) -> str:
    if record.error is not None:
        return "diverged" if "Diverged" in record.error else "errored"
    return "completed" if epochs >= max_epochs else "early_stopped"


def _last(history: pd.DataFrame, column: str) -> float:
    if column not in history or history.empty:
        return math.nan
    return float(history[column].iloc[-1])


def config_columns(config: Mapping[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = settings_in(config)
    for name in names_in(config.keys()):
        on = switched_on(config.get(switch_key(name), False))
        row[switch_key(name)] = on
        row[strength_key(name)] = float(config[strength_key(name)]) if on else math.nan
    return row


RUN_METRICS = ("top1", "top5", "val_loss", "train_loss", "per_class_top1", "node_id")


def runs_table(results: Iterable) -> pd.DataFrame:
    """A designed study's runs from a Ray ResultGrid, one row per finished run: study,
    design_row, seed, label, the config columns (with explain's bundle switch, model,
    weights, oversampling and budget where the configs carry them) and the final metrics."""
    rows = []
    for result in results:
        if result.error is not None or not result.metrics or result.metrics.get("diverged"):
            continue
        config = run_of(result.config)
        rows.append(
            {
                "study": config["study"],
                "design_row": int(config["design_row"]),
                "seed": int(config["seed"]),
                "label": str(config["label"]),
                **config_columns(config),
                **{k: config[k] for k in (BUNDLE, "cell", *SPEC_KEYS) if k in config},  # explain's
                "epochs": int(result.metrics.get("epoch", 0)),
                **{k: result.metrics.get(k) for k in RUN_METRICS},
                "trial_id": str(result.metrics.get("trial_id", "")),
            }
        )
    frame = pd.DataFrame(rows)
    return frame.sort_values(["seed", "design_row", "label"], kind="stable").reset_index(drop=True) if len(frame) else frame


def trials_table(records: Iterable[TrialRecord], max_epochs: int) -> pd.DataFrame:
    records = list(records)
    rows = []
    for r in records:
        h = r.history
        epochs = int(h["epoch"].max()) if "epoch" in h and not h.empty else 0
        rows.append(
            {
                "trial_id": r.trial_id,
                "status": _status(r, epochs, max_epochs),
                "baseline": str(r.config.get("baseline", "")),
                "epochs": epochs,
                **{m: _last(h, m) for m in HISTORY_METRICS},
                "best_top1": float(h["top1"].max()) if "top1" in h and not h.empty else math.nan,
                "time_s": float(h["time_this_iter_s"].sum()) if "time_this_iter_s" in h else 0.0,
                "node_id": str(h["node_id"].iloc[-1]) if "node_id" in h and not h.empty else None,
                **config_columns(r.config),
                "error": r.error,
            }
        )
    declared = names_in(dict.fromkeys(k for r in records for k in r.config))  # the space file's own entries too
    frame = pd.DataFrame(rows, columns=SEARCH_TABLES["trials"].schema(declared).names)
    return frame.astype({"epochs": "int64", **{h.name: "int64" for h in HYPERPARAMETERS if h.integer}})


def history_table(records: Iterable[TrialRecord]) -> pd.DataFrame:
    # train_s and eval_s split each epoch's time_s between training and validation; data_s
    # is the part of train_s spent preparing batches (indexing, augmentation)
    columns = list(HISTORY_COLUMNS)
    frames = []
    for r in records:
        if r.history.empty or "epoch" not in r.history:
            continue
        h = r.history.rename(columns={"time_this_iter_s": "time_s"})
        frames.append(h.reindex(columns=columns[1:]).assign(trial_id=r.trial_id)[columns])
    if not frames:
        return pd.DataFrame({c: pd.Series(dtype="float64") for c in columns}).astype({"trial_id": "string"})
    return pd.concat(frames, ignore_index=True).astype({"epoch": "int64"})


SEARCHED, CONFIRMED = "search", "confirm"  # best_configs' `source`: a search trial, or the confirmation's recommendation


def best_configs(trials: pd.DataFrame, k: int) -> pd.DataFrame:
    """The k best trials that did not fail, by best validation top-1, in trials' columns, then
    `source` (search) and `n_seeds` (1).

    Ties go to the trial that trained longer (its number is the less noisy)."""
    ok = trials[trials["status"].isin(FINISHED)]
    best = ok.sort_values(["best_top1", "epochs"], ascending=False, kind="stable").head(k).reset_index(drop=True)
    return best.assign(source=SEARCHED, n_seeds=1)


@dataclass(frozen=True)
class Recommendation:
    """What a study recommends training with: its config, and the mean top-1 of the runs that
    measured it (`trial_id`: the run whose trained weights are kept)."""

    config: Mapping[str, Any]
    top1: float
    n_seeds: int
    epochs: int
    trial_id: str
    source: str = CONFIRMED


def with_recommendation(best: pd.DataFrame, recommendation: Recommendation | None) -> pd.DataFrame:
    """best_configs.parquet: the search's rows, then the recommendation's as its last row (an
    earlier one replaced), so `--config-from best_configs.parquet --row N` re-trains it."""
    searched = best[best["source"].fillna(SEARCHED) == SEARCHED] if "source" in best else best.assign(source=SEARCHED, n_seeds=1)
    searched = searched[searched["trial_id"] != "recommended"].reset_index(drop=True)  # a folder from before `source`
    if recommendation is None:
        return searched
    r = recommendation
    mine = {"trial_id": r.trial_id, "status": "completed", "baseline": "", "epochs": r.epochs, "top1": r.top1, "node_id": None, "error": None}
    row = {c: math.nan for c in searched.columns} | mine | {"source": r.source, "n_seeds": r.n_seeds, **config_columns(r.config)}
    frame = pd.DataFrame([row], columns=list(dict.fromkeys([*searched.columns, *row])))
    return pd.concat([searched, frame.astype(searched.dtypes.to_dict())], ignore_index=True)


def config_from_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """The flat trial config that re-runs one row of trials.parquet or best_configs.parquet;
    ValueError naming the column when the row cannot be one."""
    missing = [c for c in CONFIG_COLUMNS if c not in row]
    if missing:
        shown = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
        raise ValueError(f"lacks the config columns {shown} (a trials.parquet or best_configs.parquet has them)")
    try:
        config: dict[str, Any] = settings_in(row)
        for name in names_in(row.keys()):
            on = switched_on(row.get(switch_key(name)))
            config[switch_key(name)] = on
            if on:
                config[strength_key(name)] = float(row[strength_key(name)])
    except (TypeError, ValueError) as exc:
        raise ValueError(f"holds a value that is not a number: {exc}") from None
    bad = [f"{h.name} {config[h.name]}" for h in HYPERPARAMETERS if not h.valid(config[h.name])]
    bad += [f"{strength_key(n)} {s}" for n, s in strengths_in(config).items() if not 0 <= s <= 1]
    if bad:
        raise ValueError(f"holds values a trial cannot train with: {', '.join(bad)}")
    return config


def baseline_summary(trials: pd.DataFrame, best: pd.DataFrame) -> pd.DataFrame:
    """top-1 and top-5 of the three baselines and of the best found config, at their last
    epoch; no top-5 column where it was not measured (5 classes or fewer)."""
    rows = []
    for name in BASELINES:
        match = trials[trials["baseline"] == name]
        if len(match):
            rows.append({"": name, "top-1": match["top1"].iloc[0], "top-5": match["top5"].iloc[0]})
    if len(best):
        rows.append({"": "best found", "top-1": best["top1"].iloc[0], "top-5": best["top5"].iloc[0]})
    table = pd.DataFrame(rows, columns=["", "top-1", "top-5"])
    return table if table["top-5"].notna().any() else table.drop(columns="top-5")


def _started(record: TrialRecord) -> tuple[float, str]:
    """When a trial's first kept result began (Ray's timestamp), then its id: one order for
    the tables whether the records come from Ray's results or from its trial folders."""
    h = record.history
    if "timestamp" not in h or h.empty:
        return math.inf, record.trial_id
    return float(h["timestamp"].min() - (h["time_this_iter_s"].iloc[0] if "time_this_iter_s" in h else 0.0)), record.trial_id


def search_tables(records: list[TrialRecord], *, max_epochs: int, top_k: int) -> dict[str, pd.DataFrame]:
    """The search's tables (trials, history, best_configs) from its trial records, trials in
    the order they started."""
    records = sorted(records, key=_started)
    trials = trials_table(records, max_epochs)
    return {"trials": trials, "history": history_table(records), "best_configs": best_configs(trials, top_k)}

"""report.md and its PNG plots, rebuilt from the Parquet files of a results folder: the search
in a line, its data and model, each study's section (in registry order), then what the
search itself saw, its baselines and its best config."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from tune_search import render
from tune_search.analysis import common_fidelity
from tune_search.export import baseline_summary, best_configs, config_from_row
from tune_search.results import ResultsFolder
from tune_search.storage import write_text
from tune_search.studies import STUDIES, Tables
from tune_search.trainable.augment import strengths_in
from tune_search.trainable.hyperparameters import describe_settings


def _facts_lines(facts: dict) -> list[str]:
    """The data and model the search ran on, in words."""
    lines = []
    if data := facts.get("data"):
        counts = data["train_per_class"]
        if len(set(counts)) == 1:
            per_class = f"{counts[0]} each"
        else:
            fewest = data["classes"][counts.index(min(counts))]
            per_class = f"{min(counts)} ({fewest}) to {max(counts)}"
        lines.append(
            f"- data: {data['origin']}; {data['train_images']} train / {data['val_images']} validation images, "
            f"{len(data['classes'])} classes, {data['image_size']} px; train images per class: {per_class}"
        )
        if data["skipped"]:
            lines.append(f"- skipped {len(data['skipped'])} files (listed in facts.json), e.g. `{data['skipped'][0]}`")
    if model := facts.get("model"):
        depth = model["max_freeze_depth"]
        lines.append(f"- model: {model['name']} (weights: {model['weights']}), freeze depths 0 to {depth} ({depth} trains the classifier only)")
    return ["## Data and model", "", *lines, ""] if lines else []


def _search_effects(effects: pd.DataFrame | None) -> list[str]:
    """The search's own estimates, when it had enough trials: not verdicts."""
    if effects is None or not effects["search_method"].notna().any():
        return []
    own = ["effect", "ci_low", "ci_high", "verdict", "n_on", "n_off", "importance", "method"]
    search = effects[["augmentation", *(f"search_{c}" for c in own)]].rename(columns=lambda c: c.removeprefix("search_"))
    table = pd.DataFrame(
        {
            "augmentation": search["augmentation"],
            "search effect [95 %], points": [render.row_interval(r) for _, r in search.iterrows()],
            "search verdict": search["verdict"],
            "on / off": [f"{a} / {b}" for a, b in zip(search["n_on"], search["n_off"])],
            "importance": search["importance"].round(3),
        }
    )
    return [
        "## What the search saw",
        "",
        f"Not verdicts: the search samples where it expects good configs, not a design. {search['method'].iloc[0]}.",
        "",
        render.markdown_table(table),
        "",
    ]


def _lr_and_depth(trials: pd.DataFrame, history: pd.DataFrame, folder: Path) -> list[str]:
    epoch = common_fidelity(trials)
    at = history[history["epoch"] == epoch].merge(trials[["trial_id", "lr", "freeze_depth"]], on="trial_id")
    if not len(at):
        return []
    at = at.assign(top1=100 * at["top1"])  # points, as every other plot
    ylabel = f"validation top-1 at epoch {epoch}, %"
    render.scatter(
        at,
        "freeze_depth",
        "top1",
        folder / "freeze_depth.png",
        xlabel="freeze depth (backbone stages frozen)",
        ylabel=ylabel,
        title="Search: top-1 by freeze depth, every trial",
    )
    render.scatter(
        at, "lr", "top1", folder / "lr.png", xlabel="learning rate (AdamW)", ylabel=ylabel, title="Search: top-1 by learning rate, every trial", logx=True
    )
    return ["## Learning rate and freeze depth", "", f"Every search trial at epoch {epoch}:", "", "![freeze depth](freeze_depth.png) ![lr](lr.png)", ""]


def _baselines_and_best(trials: pd.DataFrame) -> list[str]:
    best = best_configs(trials, 1)
    lines = ["## Baselines", "", render.markdown_table(baseline_summary(trials, best)), ""]
    if len(best):
        config = config_from_row(best.iloc[0])
        augs = ", ".join(f"{n} {s:.2f}" for n, s in strengths_in(config).items()) or "none"
        lines += [
            "## Best config",
            "",
            f"{describe_settings(config)}; augmentations: {augs}."
            f" top-1 {best.iloc[0]['top1']:.4f} after {best.iloc[0]['epochs']} epoch{'s' * int(best.iloc[0]['epochs'] != 1)}.",
            "",
        ]
    return lines


def build_report(results: ResultsFolder, tables: Tables | None = None) -> Path:
    """Write report.md and its plots into the results folder from its tables (`tables`, as the
    analysis just made them, else the Parquet files there)."""
    tables = results.read_all() if tables is None else tables
    folder = results.path
    trials = tables["trials"]
    statuses = ", ".join(f"{n} {s}" for s, n in trials["status"].value_counts().items())
    lines = [f"# tune-search report: {folder.name}", "", f"Search: {len(trials)} trials ({statuses}).", ""]
    for study in STUDIES:
        lines += study.headline(tables)
    lines += _facts_lines(results.read_facts())
    for study in STUDIES:
        lines += study.section(tables, folder)
    lines += _search_effects(tables.get("effects"))
    lines += _lr_and_depth(trials, tables["history"], folder)
    lines += _baselines_and_best(trials)
    write_text("\n".join(lines), results.report)
    return results.report

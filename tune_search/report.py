"""report.md and its PNG plots, rebuilt from the Parquet files of a results folder."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from tune_search.analysis import common_fidelity  # noqa: E402
from tune_search.explain import crop_sensitivity_summary, sentence  # noqa: E402
from tune_search.export import baseline_summary, best_configs, config_from_row, markdown_table  # noqa: E402
from tune_search.results import ResultsFolder  # noqa: E402
from tune_search.screen import additivity  # noqa: E402
from tune_search.storage import write_text  # noqa: E402
from tune_search.space import BASELINE_AUGMENTATIONS, BASELINES  # noqa: E402
from tune_search.trainable.augment import strengths_in, switch_key  # noqa: E402
from tune_search.trainable.hyperparameters import KEYS as HYPERPARAMETER_KEYS  # noqa: E402
from tune_search.trainable.hyperparameters import describe_settings  # noqa: E402


def _pts(x: float) -> str:
    return f"{100 * x:+.1f}"


def _interval(row) -> str:
    if math.isnan(row["ci_low"]):
        return "n/a"
    return f"{_pts(row['effect'])} [{_pts(row['ci_low'])}, {_pts(row['ci_high'])}]"


def forest_plot(effects: pd.DataFrame, path: Path, *, title: str, ablation: pd.DataFrame | None = None) -> None:
    """Each augmentation's effect on top-1 with its 95 % interval, harmful ones in red."""
    fig, ax = plt.subplots(figsize=(7, 0.42 * len(effects) + 1.6))
    names = list(effects["augmentation"])
    y = list(range(len(names)))
    colours = {"hurts": "tab:red", "helps": "tab:green"}
    shift = 0.15 if ablation is not None and len(ablation) else 0.0
    labelled = set()
    for i, (_, row) in enumerate(effects.iterrows()):
        verdict = row["verdict"]
        err = [[100 * (row["effect"] - row["ci_low"])], [100 * (row["ci_high"] - row["effect"])]]
        label = None if verdict in labelled else f"screen: {verdict}"
        labelled.add(verdict)
        ax.errorbar(100 * row["effect"], i - shift, xerr=err, fmt="o", color=colours.get(verdict, "tab:grey"), capsize=3, label=label)
    if shift:
        ab = ablation.set_index("augmentation").reindex(names)
        err = [100 * (ab["effect"] - ab["ci_low"]), 100 * (ab["ci_high"] - ab["effect"])]
        ax.errorbar(100 * ab["effect"], [v + shift for v in y], xerr=err, fmt="s", color="tab:blue", capsize=3, label="ablation of the best config")
    ax.legend(loc="best", fontsize=8)
    ax.axvline(0, color="black", lw=1)
    ax.set_yticks(y, names)
    ax.invert_yaxis()
    ax.set_xlabel("change in top-1 when switched on (percentage points), 95 % interval")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _affinity_readable(affinity: pd.DataFrame) -> pd.DataFrame:
    """Affinity in points of top-1, diversity as the rise in final train loss with its interval."""
    return pd.DataFrame(
        {
            "augmentation": affinity["augmentation"],
            "strength": affinity["strength"].map(lambda v: f"{v:g}"),
            "affinity, points of top-1": [f"{100 * v:+.1f}" for v in affinity["affinity"]],
            "diversity: train-loss rise [95 %]": [
                f"{d:+.3f}" + ("" if math.isnan(lo) else f" [{lo:+.3f}, {hi:+.3f}]")
                for d, lo, hi in zip(
                    affinity["diversity"],
                    affinity.get("diversity_ci_low", pd.Series(math.nan, index=affinity.index)),
                    affinity.get("diversity_ci_high", pd.Series(math.nan, index=affinity.index)),
                )
            ],
        }
    ).sort_values("affinity, points of top-1", key=lambda c: c.map(float))


def _dose_points(dose: pd.DataFrame) -> pd.DataFrame:
    """The dose table as a person reads it: effects in points with their intervals."""
    def span(mid: str, low: str, high: str) -> list[str]:
        return [f"{100 * m:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]" for m, lo, hi in zip(dose[mid], dose[low], dose[high])]

    return pd.DataFrame(
        {
            "augmentation": dose["augmentation"],
            "strength": dose["strength"].map(lambda v: f"{v:g}"),
            "measured effect [95 %], points": span("effect", "ci_low", "ci_high"),
            "fitted [95 % band], points": span("fitted", "fit_low", "fit_high"),
            "seeds": dose["n_seeds"],
        }
    )


def dose_plot(dose: pd.DataFrame, effects: pd.DataFrame, path: Path) -> None:
    """Measured effect per strength (mean over seeds, paired) with the fitted curve and its band."""
    fig, ax = plt.subplots(figsize=(6, 3.8))
    harmful = effects.set_index("augmentation")
    for name, group in dose.groupby("augmentation", sort=False):
        group = group.sort_values("strength")
        # the points are means over seeds (their own intervals, on few seeds, are in the table)
        colour = ax.plot(group["strength"], 100 * group["effect"], "o", label=name)[0].get_color()
        ax.plot([0, *group["strength"]], [0, *(100 * group["fitted"])], color=colour, lw=1)
        ax.fill_between([0, *group["strength"]], [0, *(100 * group["fit_low"])], [0, *(100 * group["fit_high"])], color=colour, alpha=0.12)
        start = harmful.at[name, "harmful_above"] if name in harmful.index else math.nan
        if not math.isnan(start):
            ax.axvline(start, color=colour, ls="--", lw=1)
    ax.axhline(0, color="black", lw=1)
    title = "Dose-response: measured effect (dots), fitted curve with its 95 % band;\ndashed line: the strength where the harm passes the threshold"
    _save(fig, ax, path, xlabel="strength (0 = off)", ylabel="change in top-1 (points)", title=title, size=9)


def _save(fig, ax, path: Path, *, xlabel: str, ylabel: str, title: str, size: int = 10) -> None:
    """Label a line plot, add its legend and grid, and write it."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=size)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def scatter(frame: pd.DataFrame, x: str, y: str, path: Path, *, xlabel: str, ylabel: str, title: str, logx: bool = False, labels=None) -> None:
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    ax.scatter(frame[x], frame[y], s=22, alpha=0.8)
    if labels is not None:
        for label, xv, yv in zip(frame[labels], frame[x], frame[y]):
            ax.annotate(label, (xv, yv), fontsize=8, xytext=(3, 3), textcoords="offset points")
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


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
    return lines + [""] if lines else []


def _sentence(row, per_class: pd.DataFrame | None) -> str:
    text = (
        f"- **{row['augmentation']}** (strength {row['strength']:.2g}) costs {-100 * row['effect']:.1f} points of top-1 "
        f"(95 % interval {-100 * row['ci_high']:.1f} to {-100 * row['ci_low']:.1f}; Holm-adjusted p = {row['p_holm']:.2g})"
    )
    if per_class is not None and len(per_class):
        mine = per_class[per_class["augmentation"] == row["augmentation"]].nsmallest(3, "change")
        text += "; most harmed classes: " + ", ".join(f"{r['class']} {_pts(r['change'])}" for _, r in mine.iterrows())
    start = row.get("harmful_above", math.nan)
    if isinstance(start, float) and not math.isnan(start):
        low, high = row.get("harmful_above_low", math.nan), row.get("harmful_above_high", math.nan)
        high_text = f"{high:.2f}" if not math.isnan(high) else "beyond the strengths tried"
        text += f"; it costs more than the dose threshold above strength {start:.2f} (95 % interval {low:.2f} to {high_text})"
    return text + "."


def _screen_section(folder: Path, effects: pd.DataFrame, per_class, ablation, trials: pd.DataFrame, screen_runs: pd.DataFrame | None) -> list[str]:
    lines = ["## Verdicts", ""]
    if effects["verdict"].eq("not screened").all():
        return lines + ["No screen was run (`--no-screen`): run `tune-search screen RESULTS_DIR` for verdicts. The search's own estimates are below.", ""]
    first = effects.iloc[0]
    reach = effects["detectable"].max()
    harmful = effects[effects["verdict"] == "hurts"].sort_values("effect")
    helpful = effects[effects["verdict"] == "helps"]
    lines += [
        f"From the screen: {int(first['n_runs'])} runs at full budget in a two-level design (each augmentation on in half of them), "
        f"main effects by least squares with {first['df']:.0f} residual degrees of freedom, Holm-corrected across "
        f"{len(effects)} augmentations. This screen detects a harm of {100 * reach:.1f} points or more with 80 % power: "
        f"`unclear` means smaller than that, if any.",
        "",
    ]
    if len(harmful):
        lines += ["Harmful:", ""] + [_sentence(r, per_class) for _, r in harmful.iterrows()] + [""]
    else:
        lines += [f"No augmentation is clearly harmful (none costs {100 * reach:.1f} points or more, at 80 % power).", ""]
    if len(helpful):
        lines += ["Helpful: " + ", ".join(f"**{r['augmentation']}** {_interval(r)}" for _, r in helpful.iterrows()) + " points.", ""]
    table = pd.DataFrame(
        {
            "augmentation": effects["augmentation"],
            "strength": effects["strength"].round(2),
            "top-1 effect [95 %], points": [_interval(r) for _, r in effects.iterrows()],
            "Holm p": effects["p_holm"].map(lambda p: f"{p:.2g}"),
            "verdict": effects["verdict"],
            "top-5 effect, points": effects["top5_effect"].map(_pts),
            "harmful above strength": effects["harmful_above"].map(lambda v: "" if math.isnan(v) else f"{v:.2f}"),
        }
    )
    order = effects["effect"].argsort().to_numpy()
    forest_plot(effects.iloc[order], folder / "effects.png", title="Screen: what switching each augmentation on does to top-1", ablation=ablation)
    lines += [markdown_table(table.iloc[order]), "", "![effects](effects.png)", ""]
    if ablation is not None and len(ablation):
        for _, r in ablation[ablation["agrees"] == False].iterrows():  # noqa: E712
            lines.append(f"- The screen and the ablation of the best config disagree on **{r['augmentation']}**: screen says {r['screen_verdict']}, ablation says {r['verdict']} ({_interval(r)} points).")
        lines.append("")
    lines += _additivity(trials, screen_runs, effects)
    return lines


def _additivity(trials: pd.DataFrame, screen_runs: pd.DataFrame | None, effects: pd.DataFrame) -> list[str]:
    """With the screen at the "all layers" baseline's settings: do the main effects add up to
    the baseline table's all + aug drop?"""
    if screen_runs is None:
        return []
    rows = {b: trials[trials["baseline"] == b] for b in BASELINES[1:]}
    if any(not len(r) for r in rows.values()):
        return []
    plain, bundled = rows[BASELINES[1]].iloc[0], rows[BASELINES[2]].iloc[0]
    first = screen_runs.iloc[0]
    if not all(first[k] == plain[k] for k in HYPERPARAMETER_KEYS):
        return []
    names = list(effects.loc[effects["verdict"] != "not screened", "augmentation"])
    bundle = [n for n in BASELINE_AUGMENTATIONS if n in names and bool(bundled[switch_key(n)])]
    result = additivity(screen_runs, names, bundle, float(bundled["top1"]))
    verdict = "the effects add up" if result["adds_up"] else "the augmentations interact: the measured drop is not the sum of their effects"
    return [
        "### Do the effects add up to the baseline table's drop?",
        "",
        f"The screen ran at the all-layers baseline's settings. Its fit predicts top-1 {result['predicted']:.3f} with "
        f"{', '.join(bundle)} on (95 % prediction interval for one run {result['prediction_low']:.3f} to {result['prediction_high']:.3f}) "
        f"and {result['predicted_none']:.3f} with none on; the search's all + aug baseline measured {result['measured']:.3f} "
        f"(all layers without augmentation: {float(plain['top1']):.3f}): {verdict}.",
        "",
    ]


def crop_plot(sensitivity: pd.DataFrame, path: Path) -> None:
    """Share of validation images whose prediction a crop changes, by kept area: all classes
    and the three most sensitive."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    overall = crop_sensitivity_summary(sensitivity)
    ax.plot(100 * overall["area"], 100 * overall["changed"], "o-", color="black", label="all classes")
    worst = sensitivity.groupby("class")["changed"].mean().nlargest(3).index
    for name in worst:
        mine = sensitivity[sensitivity["class"] == name]
        ax.plot(100 * mine["area"], 100 * mine["changed"], ".--", label=str(name))
    _save(fig, ax, path, xlabel="kept area of the image (%)", ylabel="predictions changed (%)", title="Crops: how often the clean model changes its answer")


def _explain_section(folder: Path, results: ResultsFolder) -> list[str]:
    explain, explain_cells, sensitivity = results.read("explain"), results.read("explain_cells"), results.read("crop_sensitivity")
    if explain is None:
        return []
    lines = ["## Why it hurts: the thread's explanations tested", ""]
    runs = results.read("explain_runs")
    bundle = [c.removeprefix("aug_") for c in runs.columns if c.startswith("aug_") and not c.endswith("_strength") and runs.loc[runs["bundle"].astype(bool), c].any()] if runs is not None else []
    lines += [f"The bundle: {', '.join(bundle)}, switched off and on in each cell below, {runs['seed'].nunique()} seeds per cell; verdicts Holm-corrected across the explanations, `contradicted` also when the whole interval lies within the negligible band.", ""]
    lines += [f"- {sentence(row)}" for row in explain.to_dict("records")]
    lines.append("")
    if explain_cells is not None and len(explain_cells):
        table = pd.DataFrame(
            {
                "cell": explain_cells["cell"],
                "top-1 without": explain_cells["top1_without"].round(3),
                "with the bundle": explain_cells["top1_with"].round(3),
                "bundle effect [95 %], points": [_interval(r.rename({"bundle_effect": "effect"})) for _, r in explain_cells.iterrows()],
            }
        )
        lines += [markdown_table(table), ""]
    if sensitivity is not None and len(sensitivity):
        crop_plot(sensitivity, folder / "crop.png")
        overall = crop_sensitivity_summary(sensitivity).set_index("area")["changed"]
        shown = ", ".join(f"{100 * a:.0f} % kept: {100 * v:.0f} %" for a, v in overall.items() if round(10 * a) % 2 == 1)
        lines += [f"Crops and the clean model: share of validation images whose prediction changes ({shown}).", "", "![crops](crop.png)", ""]
    return lines


def build_report(folder: Path) -> Path:
    """Write report.md and its plots into `folder` from the Parquet files there."""
    results = ResultsFolder(folder)
    trials, history = results.read("trials"), results.read("history")
    effects, ablation = results.read("effects"), results.read("ablation")
    affinity, per_class, dose = results.read("affinity"), results.read("per_class"), results.read("dose")
    lines = [f"# tune-search report: {folder.name}", ""]
    statuses = ", ".join(f"{n} {s}" for s, n in trials["status"].value_counts().items())
    lines += [f"Search: {len(trials)} trials ({statuses}).", ""]
    lines += _facts_lines(results.read_facts())

    if effects is not None:
        lines += _screen_section(folder, effects, per_class, ablation, trials, results.read("screen"))
    if dose is not None and len(dose):
        dose_plot(dose, effects, folder / "dose.png")
        lines += ["## Where harm starts", "", markdown_table(_dose_points(dose)), "", "![dose-response](dose.png)", ""]

    if affinity is not None and affinity["affinity"].notna().any():
        in_points = affinity.assign(affinity=100 * affinity["affinity"])
        scatter(in_points, "affinity", "diversity", folder / "affinity.png", xlabel="affinity: clean model's top-1 change on augmented images (points)", ylabel="diversity: rise in final train loss", labels="augmentation", title="Why: how far it moves the images (x), how much harder it makes training (y)")
        lines += ["## Why: affinity and diversity", "", markdown_table(_affinity_readable(affinity)), "", "![affinity](affinity.png)", ""]
        lines += ["Low affinity: the augmentation moves images away from what the clean model learned (e.g. a crop that cuts the object out). Diversity: how much it raises the final training loss.", ""]

    lines += _explain_section(folder, results)

    if per_class is not None and len(per_class):
        lines += ["## For which classes", ""]
        verdicts = effects.set_index("augmentation")["verdict"] if effects is not None else pd.Series(dtype=str)
        order = list(effects.sort_values("effect")["augmentation"]) if effects is not None else []
        groups = dict(list(per_class.groupby("augmentation", sort=False)))
        for name in [n for n in order if n in groups] + [n for n in groups if n not in order]:
            worst = groups[name].nsmallest(3, "change")
            cells = ", ".join(f"{r['class']} {_pts(r['change'])}" for _, r in worst.iterrows())
            lines.append(f"- {name} ({verdicts.get(name, 'not screened')}): most harmed classes {cells} (points of per-class top-1)")
        lines.append("")

    if effects is not None and effects["search_method"].notna().any():
        own = ["effect", "ci_low", "ci_high", "verdict", "n_on", "n_off", "importance", "method"]
        search = effects[["augmentation", *(f"search_{c}" for c in own)]].rename(columns=lambda c: c.removeprefix("search_"))
        table = pd.DataFrame({"augmentation": search["augmentation"], "search effect [95 %], points": [_interval(r) for _, r in search.iterrows()], "search verdict": search["verdict"], "on / off": [f"{a} / {b}" for a, b in zip(search["n_on"], search["n_off"])], "importance": search["importance"].round(3)})
        lines += ["## What the search saw", "", f"Not verdicts: the search samples where it expects good configs, not a design. {search['method'].iloc[0]}.", "", markdown_table(table), ""]

    epoch = common_fidelity(trials)
    at = history[history["epoch"] == epoch].merge(trials[["trial_id", "lr", "freeze_depth"]], on="trial_id")
    if len(at):
        scatter(at, "freeze_depth", "top1", folder / "freeze_depth.png", xlabel="freeze depth (backbone stages frozen)", ylabel=f"validation top-1 at epoch {epoch}", title="Search: top-1 by freeze depth, every trial")
        scatter(at, "lr", "top1", folder / "lr.png", xlabel="learning rate (AdamW)", ylabel=f"validation top-1 at epoch {epoch}", title="Search: top-1 by learning rate, every trial", logx=True)
        lines += ["## Learning rate and freeze depth", "", f"Every search trial at epoch {epoch}:", "", "![freeze depth](freeze_depth.png) ![lr](lr.png)", ""]

    best = best_configs(trials, 1)
    lines += ["## Baselines", "", markdown_table(baseline_summary(trials, best)), ""]
    if len(best):
        config = config_from_row(best.iloc[0])
        augs = ", ".join(f"{n} {s:.2f}" for n, s in strengths_in(config).items()) or "none"
        lines += [
            "## Best config",
            "",
            f"{describe_settings(config)}; augmentations: {augs}. "
            f"top-1 {best.iloc[0]['top1']:.4f} after {best.iloc[0]['epochs']} epochs.",
            "",
        ]
    write_text("\n".join(lines), results.report)
    return results.report

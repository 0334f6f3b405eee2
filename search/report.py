"""report.md and its PNG plots, rebuilt from the Parquet files of a results folder."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from search.analysis import common_fidelity  # noqa: E402
from search.export import baseline_summary, best_configs, config_from_row, markdown_table, write_text  # noqa: E402


def _read(folder: Path, name: str) -> pd.DataFrame | None:
    path = folder / f"{name}.parquet"
    return pd.read_parquet(path) if path.is_file() else None


def _pts(x: float) -> str:
    return f"{100 * x:+.1f}"


def _interval(row) -> str:
    if math.isnan(row["ci_low"]):
        return "n/a"
    return f"{_pts(row['effect'])} [{_pts(row['ci_low'])}, {_pts(row['ci_high'])}]"


def forest_plot(effects: pd.DataFrame, ablation: pd.DataFrame | None, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6.5, 0.4 * len(effects) + 1.4))
    names = list(effects["augmentation"])
    y = range(len(names))
    sets = [("search" if "n_on" in effects else "ablation", effects, 0.15, "tab:blue")]
    if ablation is not None and len(ablation):
        sets.append(("ablation", ablation.set_index("augmentation").reindex(names).reset_index(), -0.15, "tab:red"))
    for label, frame, shift, colour in sets:
        ys = [v + shift for v in y]
        err = [(frame["effect"] - frame["ci_low"]) * 100, (frame["ci_high"] - frame["effect"]) * 100]
        ax.errorbar(frame["effect"] * 100, ys, xerr=err, fmt="o", color=colour, label=label, capsize=3)
    ax.axvline(0, color="grey", lw=1)
    ax.set_yticks(list(y), names)
    ax.invert_yaxis()
    ax.set_xlabel("effect on top-1 (points), 95 % interval; < 0 hurts")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def scatter(frame: pd.DataFrame, x: str, y: str, path: Path, *, xlabel: str, ylabel: str, logx: bool = False, labels=None) -> None:
    fig, ax = plt.subplots(figsize=(5, 3.6))
    ax.scatter(frame[x], frame[y], s=22, alpha=0.8)
    if labels is not None:
        for label, xv, yv in zip(frame[labels], frame[x], frame[y]):
            ax.annotate(label, (xv, yv), fontsize=8, xytext=(3, 3), textcoords="offset points")
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _sentence(row) -> str:
    text = f"- **{row['augmentation']}** costs {-100 * row['effect']:.1f} points of top-1 (95 % interval {-100 * row['ci_high']:.1f} to {-100 * row['ci_low']:.1f})"
    if not math.isnan(row.get("harmful_above", math.nan) or math.nan):
        text += f", and turns harmful above strength {row['harmful_above']:.2f}"
    return text + "."


def build_report(folder: Path) -> Path:
    """Write report.md and its plots into `folder` from the Parquet files there."""
    trials = pd.read_parquet(folder / "trials.parquet")
    history = pd.read_parquet(folder / "history.parquet")
    effects, ablation = _read(folder, "effects"), _read(folder, "ablation")
    affinity, per_class = _read(folder, "affinity"), _read(folder, "per_class")
    lines = [f"# tune-search report: {folder.name}", ""]
    statuses = ", ".join(f"{n} {s}" for s, n in trials["status"].value_counts().items())
    lines += [f"{len(trials)} trials ({statuses}).", ""]
    if (folder / "config.yaml").is_file():  # the resolved config's notes on the data and model
        notes = [ln[2:] for ln in (folder / "config.yaml").read_text().splitlines() if ln.startswith("# ") and ln != "# resolved"]
        lines += [f"    {ln}" for ln in notes] + [""]

    lines += ["## Verdicts", ""]
    has_ablation = ablation is not None and len(ablation) > 0
    if effects is None and not has_ablation:
        lines += ["No effects: the search has too few trials and no ablation was run (`tune-search ablate`).", ""]
    else:
        names = list(effects["augmentation"] if effects is not None else ablation["augmentation"])
        table = pd.DataFrame({"augmentation": names})
        if effects is not None:
            table["search effect [95 %], points"] = [_interval(r) for _, r in effects.iterrows()]
            table["search verdict"] = effects["verdict"].to_numpy()
            table["on / off"] = [f"{a} / {b}" for a, b in zip(effects["n_on"], effects["n_off"])]
            table["importance"] = effects["importance"].round(3).to_numpy()
            table["harmful above strength"] = [f"{v:.2f}" if not math.isnan(v) else "" for v in effects["harmful_above"]]
        if has_ablation:
            ab = ablation.set_index("augmentation")
            table["ablation effect [95 %], points"] = [_interval(ab.loc[n]) if n in ab.index else "" for n in names]
            table["ablation verdict"] = [ab.loc[n, "verdict"] if n in ab.index else "" for n in names]
        plotted = effects if effects is not None else ablation
        forest_plot(plotted, ablation if effects is not None else None, folder / "effects.png")
        lines += [markdown_table(table), "", "![effects](effects.png)", ""]
        if effects is not None:
            lines += [f"Search effects: {effects['method'].iloc[0]}.", ""]
        else:
            lines += ["The search had too few trials for its own effect estimates; the verdicts come from the ablation.", ""]
        confirmed, source = (ablation, "the ablation") if has_ablation else (effects, "the search")
        harmful = confirmed[confirmed["verdict"] == "hurts"]
        if len(harmful):
            lines += [f"Harmful according to {source}:", ""]
            if effects is not None and confirmed is not effects:
                harmful = harmful.merge(effects[["augmentation", "harmful_above"]], on="augmentation", how="left")
            lines += [_sentence(r) for _, r in harmful.iterrows()] + [""]
        else:
            lines += [f"No augmentation is clearly harmful according to {source}.", ""]
        if has_ablation:
            for _, r in ablation[ablation["agrees"] == False].iterrows():  # noqa: E712
                lines.append(
                    f"- The search and the ablation disagree on **{r['augmentation']}**: "
                    f"search says {r['search_verdict']}, ablation says {r['verdict']}."
                )
            lines.append("")

    if affinity is not None and affinity["affinity"].notna().any():
        scatter(affinity, "affinity", "diversity", folder / "affinity.png", xlabel="affinity (top-1 change on augmented val)", ylabel="diversity (final train loss)", labels="augmentation")
        lines += ["## Why: affinity and diversity", "", markdown_table(affinity.round(3)), "", "![affinity](affinity.png)", ""]
        lines += ["Low affinity: the augmentation moves images away from what the clean model learned (e.g. a crop that cuts the object out).", ""]

    if per_class is not None and len(per_class):
        lines += ["## For which classes", ""]
        for name, group in per_class.groupby("augmentation", sort=False):
            worst = group.nsmallest(3, "change")
            cells = ", ".join(f"{r['class']} {_pts(r['change'])}" for _, r in worst.iterrows())
            lines.append(f"- {name}: most harmed classes {cells} (points of per-class top-1)")
        lines.append("")

    epoch = common_fidelity(trials)
    at = history[history["epoch"] == epoch].merge(trials[["trial_id", "lr", "freeze_depth"]], on="trial_id")
    if len(at):
        scatter(at, "freeze_depth", "top1", folder / "freeze_depth.png", xlabel="freeze depth", ylabel=f"top-1 at epoch {epoch}")
        scatter(at, "lr", "top1", folder / "lr.png", xlabel="learning rate", ylabel=f"top-1 at epoch {epoch}", logx=True)
        lines += ["## Learning rate and freeze depth", "", f"Every trial at epoch {epoch}:", "", "![freeze depth](freeze_depth.png) ![lr](lr.png)", ""]

    best = best_configs(trials, 1)
    lines += ["## Baselines", "", markdown_table(baseline_summary(trials, best)), ""]
    if len(best):
        config = config_from_row(best.iloc[0])
        augs = ", ".join(f"{k[4:-9]} {v:.2f}" for k, v in config.items() if k.endswith("_strength")) or "none"
        lines += [
            "## Best config",
            "",
            f"lr {config['lr']:.3g}, freeze depth {config['freeze_depth']}, weight decay {config['weight_decay']:g}, "
            f"batch size {config['batch_size']}, label smoothing {config['label_smoothing']:g}; augmentations: {augs}. "
            f"top-1 {best.iloc[0]['top1']:.4f} after {best.iloc[0]['epochs']} epochs.",
            "",
        ]
    path = folder / "report.md"
    write_text("\n".join(lines), path)
    return path

"""How numbers, tables and plots look, for the report and the console alike: effects in points
of top-1 with their intervals, markdown tables, and the plot helpers the studies share."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import pandas as pd


def points(x: float) -> str:
    """A difference of fractions as signed points: 0.012 -> +1.2."""
    return "n/a" if x is None or math.isnan(x) else f"{100 * x:+.1f}"


def effect_interval(effect: float, low: float, high: float) -> str:
    """`-2.4 [-3.0, -1.7]` in points; `n/a` without an interval."""
    if math.isnan(low):
        return "n/a"
    return f"{points(effect)} [{points(low)}, {points(high)}]"


def row_interval(row: Mapping) -> str:
    """A table row's effect, ci_low and ci_high as `effect_interval`."""
    return effect_interval(row["effect"], row["ci_low"], row["ci_high"])


def markdown_table(frame: pd.DataFrame, digits: int = 3) -> str:
    cells = [[str(c) for c in frame.columns]]
    for row in frame.itertuples(index=False):
        cells.append([f"{v:.{digits}f}" if isinstance(v, float) else str(v) for v in row])
    widths = [max(len(r[i]) for r in cells) for i in range(len(cells[0]))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def pyplot():
    """matplotlib's pyplot on the file-only backend (imported when a plot is drawn)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, ax, path: Path, *, xlabel: str, ylabel: str, title: str, size: int = 10) -> None:
    """Label a line plot, add its legend and grid, and write it."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=size)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    pyplot().close(fig)


def scatter(frame: pd.DataFrame, x: str, y: str, path: Path, *, xlabel: str, ylabel: str, title: str, logx: bool = False, labels=None, interval=None) -> None:
    """Points of `y` against `x`, each labelled from column `labels` when given, with the
    95 % interval of `y` from the two columns `interval` (low, high) as error bars."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    ax.scatter(frame[x], frame[y], s=22, alpha=0.8)
    if interval is not None:
        low, high = (frame[c].to_numpy(float) for c in interval)
        ax.errorbar(frame[x], frame[y], yerr=[frame[y] - low, high - frame[y]], fmt="none", ecolor="grey", elinewidth=0.8, capsize=2)
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    if labels is not None:
        from adjustText import adjust_text

        ax.margins(0.12)  # room for the labels inside the axes
        texts = [ax.text(xv, yv, label, fontsize=8) for label, xv, yv in zip(frame[labels], frame[x], frame[y])]
        # moved apart from each other and the points, kept inside the axes, each joined to its point
        adjust_text(texts, x=frame[x].to_numpy(float), y=frame[y].to_numpy(float), ax=ax, ensure_inside_axes=True,
                    arrowprops={"arrowstyle": "-", "color": "grey", "lw": 0.5})  # fmt: skip
    fig.savefig(path, dpi=110)
    plt.close(fig)

"""Where a finished run's wall time went, phase by phase: each Ray Tune experiment's span
(its first trial's start to its last result, from the result.json files Ray wrote), the
seconds its trials trained, and the time outside every phase (imports, data, Ray's start,
set-up between phases, exports, the analysis and the report), from console.log.

    .venv/bin/python bench/phases.py results/default [--wall SECONDS]

`--wall` is the command's wall time measured outside it (with `time`), imports included;
without it the wall starts at console.log's first line, after the imports.
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime
from pathlib import Path


def trial_spans(experiment: Path) -> list[tuple[float, float, float]]:
    """(start, end, seconds trained) of every trial in an experiment folder with results."""
    spans = []
    for result in experiment.glob("trial_*/result.json"):
        rows = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        if rows:
            first, last = rows[0], rows[-1]
            start = first["timestamp"] - first["time_this_iter_s"]
            spans.append((start, float(last["timestamp"]), float(last["time_total_s"])))
    return spans


def console_times(folder: Path) -> tuple[float, float]:
    """The first and last line's time in console.log (whole seconds)."""
    lines = [line for line in (folder / "console.log").read_text().splitlines() if line[:4].isdigit()]
    stamp = lambda line: datetime.strptime(line[:19], "%Y-%m-%d %H:%M:%S").timestamp()  # noqa: E731
    return stamp(lines[0]), stamp(lines[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folder", type=Path, help="a run's results folder")
    p.add_argument("--wall", type=float, help="the command's wall seconds, measured outside it")
    args = p.parse_args()
    folder = args.folder.resolve()
    experiments = [folder, *sorted(f for f in folder.parent.glob(f"{folder.name}-*") if f.is_dir())]
    phases = [(e.name, spans) for e in experiments if (spans := trial_spans(e))]
    phases.sort(key=lambda phase: min(s for s, _, _ in phase[1]))
    first, last = console_times(folder)
    last = max(last, *(e for _, spans in phases for _, e, _ in spans))
    wall = args.wall if args.wall else last - first
    print("| phase | trials | span s | trial s (summed) | gap before s |")
    print("|---|---|---|---|---|")
    previous, inside = first, 0.0
    for name, spans in phases:
        start, end = min(s for s, _, _ in spans), max(e for _, e, _ in spans)
        print(f"| {name} | {len(spans)} | {end - start:.0f} | {sum(t for _, _, t in spans):.0f} | {start - previous:.0f} |")
        previous, inside = end, inside + end - start
    print(f"\nwall {wall:.0f} s; inside phases {inside:.0f} s; outside {wall - inside:.0f} s "
          f"({(wall - inside) / wall:.0%}), of which after the last phase {last - previous:.0f} s"
          + ("" if args.wall is None else f" and before console.log's first line {wall - (last - first):.0f} s"))  # fmt: skip


if __name__ == "__main__":
    main()

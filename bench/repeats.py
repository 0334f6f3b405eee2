"""Repeated design rows at one seed: the screen's and the focus's analysis (`screen_effects`)
on null augmentations, when a row the folded Plackett-Burman design repeats reproduces its
twin's top-1 (as deterministic training at one seed does) against when every run has noise of
its own. With one or two augmentations the design repeats every row (2: 8 runs, 4 configs).

    .venv/bin/python bench/repeats.py [--fits 2000] [--sd 1.0]

No training: each distinct config at a seed gets the planted truth (no effect) plus a seed
shift and noise, `--sd` points per run.
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np
import pandas as pd

from tune_search.studies.screen import screen_effects, screening_design
from tune_search.trainable.augment import strength_key, switch_key


def runs(names: list[str], rng, *, identical: bool, seeds: int, sd: float) -> pd.DataFrame:
    rows = []
    for seed in range(seeds):
        shift, drawn = rng.normal(0, sd), {}
        for row, levels in enumerate(screening_design(len(names))):
            noise = drawn.setdefault(tuple(levels), rng.normal(0, sd)) if identical else rng.normal(0, sd)
            run = {"seed": seed, "design_row": row, "label": "", "top1": 0.9 + shift + noise, "top5": np.nan}
            for name, level in zip(names, levels, strict=True):
                run[switch_key(name)], run[strength_key(name)] = bool(level > 0), 1.0 if level > 0 else 0.0
            rows.append(run)
    return pd.DataFrame(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--fits", type=int, default=2000)
    p.add_argument("--sd", type=float, default=1.0, help="per-run noise, points of top-1")
    p.add_argument("--alpha", type=float, default=0.0075, help="the look's alpha (the focus's with 4 looks)")
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    rng = np.random.default_rng(0)
    names = ["brightness", "contrast"]
    print("| repeated rows | replicates | any false hurts / helps | mean half-width, points |\n|---|---|---|---|")
    for identical in (False, True):
        for seeds in (1, 2, 4):
            false, half = 0, []
            for _ in range(args.fits):
                effects = screen_effects(runs(names, rng, identical=identical, seeds=seeds, sd=args.sd / 100), names, alpha=args.alpha)
                false += bool(effects["verdict"].isin(["hurts", "helps"]).any())
                half.append(float(((effects["ci_high"] - effects["ci_low"]) / 2).mean()))
            print(f"| {'identical' if identical else 'own noise'} | {seeds} | {false / args.fits:.3f} | {100 * np.mean(half):.2f} |")
    print(f"\n(alpha {args.alpha}, per-run SD {args.sd} points, {args.fits} fits a row)")


if __name__ == "__main__":
    main()

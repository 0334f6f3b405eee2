"""The whole procedure's error rates, by simulation through the real analysis functions: the
screen (its looks), the focused screen (its looks) and the confirmation, on a planted truth with
harms as large as measured on real runs and interactions among them.

    .venv/bin/python bench/procedure.py [--runs 400] [--sd 0.8]

No training: each run's top-1 is the planted truth of its config plus a seed shift and noise
(`--sd` points per run), and every stage's configs come from the studies' own config builders,
its verdicts from their own analysis functions (`screen.screen_effects`, `focus.focus_effects`,
`confirm.pairwise` / `arm_table`) with the error shares the product spends (`studies.errors`).
Prints the rates docs/statistics.md quotes: any false hurts / helps / better / worse over the
whole procedure, coverage of every interval family, the share of truly null augmentations
called harmless, the power for a 1-point help, the runs used.
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from tune_search.config import SearchConfig
from tune_search.studies.confirm import arm_table, arms, confirm_configs, pairwise
from tune_search.studies.errors import stage_alpha
from tune_search.studies.focus import candidates, focus_configs, focus_effects
from tune_search.studies.recipe import decisions, recipe_config
from tune_search.studies.screen import family_alpha, screen_configs, screen_effects, screening_design
from tune_search.trainable.augment import NAMES, strengths_in

BASE = {"lr": 1.25e-3, "freeze_depth": 7, "weight_decay": 0.0, "batch_size": 64, "label_smoothing": 0.0}
# points of top-1 when switched on alone: the demo's large harms, one 1-point help, six nulls
MAIN = {"rotate": -24.0, "blur": -11.0, "crop": -2.5, "erasing": -2.3, "affine": -2.3, "hflip": 1.0}
# harms do not add up: two large ones together cost less than their sum (points, added when both are on)
INTERACTIONS = {("rotate", "blur"): 8.0, ("rotate", "crop"): 2.0, ("blur", "affine"): 1.5, ("crop", "erasing"): 1.0}
HELP = "hflip"


@dataclass(frozen=True)
class Truth:
    """The planted top-1 of every config: main effects and pairwise interactions, in points."""

    main: dict
    interactions: dict

    def __call__(self, config: dict) -> float:
        on = set(strengths_in(config))
        points = 75.0 + sum(self.main.get(n, 0.0) for n in on) + sum(v for (a, b), v in self.interactions.items() if a in on and b in on)
        return points / 100


TRUTHS = {"demo": Truth(MAIN, INTERACTIONS), "null": Truth({}, {})}  # null: no augmentation matters at all


def measure(configs: list[dict], truth: Truth, rng: np.random.Generator, sd: float, shifts: dict) -> pd.DataFrame:
    """The configs' runs: truth, plus each seed's shift (every run of a seed alike), plus noise."""
    rows = []
    for c in configs:
        shift = shifts.setdefault(c["seed"], rng.normal(0, sd / 100))
        rows.append({**c, "top1": truth(c) + shift + rng.normal(0, sd / 100), "top5": math.nan, "truth": truth(c)})
    return pd.DataFrame(rows)


def true_effects(runs: pd.DataFrame, names: list[str], analyse) -> pd.Series:
    """What a stage estimates, exactly: its analysis applied to the noise-free runs."""
    exact = runs.assign(top1=runs["truth"] + 1e-7 * np.sin(np.arange(len(runs))))  # a residual of ~0, never exactly 0
    return analyse(exact).set_index("augmentation")["effect"]


@dataclass
class Outcome:
    false_screen: bool = False
    false_focus: bool = False
    false_confirm: bool = False
    covered: dict[str, bool] = field(default_factory=dict)  # per family: every interval covered its truth
    intervals: dict[str, tuple[int, int]] = field(default_factory=dict)  # per family: (covering, all)
    final: dict[str, str] = field(default_factory=dict)  # each augmentation's deciding verdict
    runs: int = 0
    recommended_true_top1: float = math.nan
    best_true_top1: float = math.nan


def _wrong(verdict: str, true: float) -> bool:
    return (verdict in ("hurts", "worse") and true >= 0) or (verdict in ("helps", "better") and true <= 0)


def _cover(table: pd.DataFrame, true: pd.Series, key: str = "augmentation") -> tuple[int, int]:
    t = table.set_index(key)
    inside = (t["ci_low"] <= true.reindex(t.index)) & (true.reindex(t.index) <= t["ci_high"])
    return int(inside.sum()), len(t)


def one_procedure(cfg: SearchConfig, rng: np.random.Generator, sd: float, truth: Truth = TRUTHS["demo"]) -> Outcome:
    out = Outcome()
    shifts: dict = {}
    names = list(NAMES)
    strengths = dict.fromkeys(names, 0.5)
    # the screen, looks and all
    alpha = family_alpha(cfg)
    runs = measure(screen_configs(BASE, strengths, [0], clean_seed=None), truth, rng, sd, shifts)
    for seed in range(1, cfg.screen.max_seeds):
        if not (screen_effects(runs, names, alpha=alpha, negligible=cfg.screen.negligible)["verdict"] == "unclear").any():
            break
        runs = pd.concat([runs, measure(screen_configs(BASE, strengths, [seed], clean_seed=None), truth, rng, sd, shifts)], ignore_index=True)
    screen = screen_effects(runs, names, alpha=alpha, negligible=cfg.screen.negligible)
    true = true_effects(runs, names, lambda r: screen_effects(r, names, alpha=alpha, negligible=cfg.screen.negligible))
    out.false_screen = any(_wrong(v, true[n]) for n, v in zip(screen["augmentation"], screen["verdict"]))
    out.intervals["screen"] = _cover(screen, true)
    out.runs += len(runs)
    effects = screen.assign(harmful_above_low=math.nan)
    # the focused screen, looks and all
    kept = candidates(effects)
    focus = None
    if kept:
        mine = {n: strengths[n] for n in kept}
        base = 1000
        runs = measure(focus_configs(BASE, mine, names, [base]), truth, rng, sd, shifts)
        for k in range(1, cfg.focus.max_seeds):
            if not (focus_effects(runs, cfg)["verdict"] == "unclear").any():
                break
            runs = pd.concat([runs, measure(focus_configs(BASE, mine, names, [base + k]), truth, rng, sd, shifts)], ignore_index=True)
        focus = focus_effects(runs, cfg)
        true = true_effects(runs, kept, lambda r: focus_effects(r, cfg))
        out.false_focus = any(_wrong(v, true[n]) for n, v in zip(focus["augmentation"], focus["verdict"]))
        out.intervals["focus"] = _cover(focus, true)
        out.runs += len(runs)
    table = decisions(effects, focus, None, cfg.recipe)
    out.final = dict(zip(table["augmentation"], table["verdict"]))
    # the confirmation: the recipe against the other arms, the best config being the search's
    recipe = recipe_config(BASE, table, names)
    best = {
        **BASE,
        **{f"aug_{n}": n in ("hflip", "vflip", "contrast", "rotate") for n in names},
        **{f"aug_{n}_strength": 0.5 for n in ("hflip", "vflip", "contrast", "rotate")},
    }
    chosen = arms(recipe, best, {n: 0.5 for n in ("hflip", "crop", "blur", "sharpen", "contrast", "affine")}, table, names)
    runs = measure(confirm_configs(chosen, list(range(cfg.confirm.seeds))), truth, rng, sd, shifts)
    pairs = pairwise(runs, negligible=cfg.screen.negligible, alpha=stage_alpha(cfg, "confirm"))
    means = runs.groupby("label")["truth"].first()
    true_pairs = pairs["a"].map(means) - pairs["b"].map(means)
    out.false_confirm = any(_wrong(v, t) for v, t in zip(pairs["verdict"], true_pairs))
    inside = (pairs["ci_low"] <= true_pairs) & (true_pairs <= pairs["ci_high"])
    out.intervals["confirm"] = (int(inside.sum()) // 2, len(pairs) // 2)  # each unordered pair once
    summary = arm_table(runs, pairs, cfg.screen.negligible)
    out.recommended_true_top1 = float(means[summary.loc[summary["recommended"], "arm"].iloc[0]])
    out.best_true_top1 = float(means.max())
    out.runs += len(runs)
    out.covered = {k: a == b for k, (a, b) in out.intervals.items()}
    return out


def rates(outcomes: list[Outcome], truth: Truth = TRUTHS["demo"]) -> dict[str, float]:
    n = len(outcomes)
    nulls = [o.final.get(a) for o in outcomes for a in NAMES if a not in truth.main]
    families = sorted({k for o in outcomes for k in o.intervals})
    out = {
        "procedures": n,
        "any false hurts/helps/better/worse": np.mean([o.false_screen or o.false_focus or o.false_confirm for o in outcomes]),
        "false in the screen": np.mean([o.false_screen for o in outcomes]),
        "false in the focused screen": np.mean([o.false_focus for o in outcomes]),
        "false in the confirmation": np.mean([o.false_confirm for o in outcomes]),
        **{f"{k}: every interval covers": np.mean([o.covered[k] for o in outcomes if k in o.covered]) for k in families},
        **{
            f"{k}: intervals covering": sum(o.intervals[k][0] for o in outcomes if k in o.intervals)
            / max(1, sum(o.intervals[k][1] for o in outcomes if k in o.intervals))
            for k in families
        },
        "null augmentations called harmless": np.mean([v == "harmless" for v in nulls]),
        "null augmentations unclear": np.mean([v == "unclear" for v in nulls]),
        **({"power: 1-point help called helps": np.mean([o.final.get(HELP) == "helps" for o in outcomes])} if HELP in truth.main else {}),
        "recommended within 1 point of the best arm (truth)": np.mean([o.recommended_true_top1 >= o.best_true_top1 - 0.01 for o in outcomes]),
        "median runs": float(np.median([o.runs for o in outcomes])),
    }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=400, help="procedures simulated")
    parser.add_argument("--sd", type=float, default=0.8, help="seed noise per run, points of top-1")
    parser.add_argument("--truth", choices=list(TRUTHS), default="demo", help="demo: the demo's harms, interactions and a 1-point help; null: nothing matters")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    cfg = SearchConfig()
    rng = np.random.default_rng(args.seed)
    started = time.perf_counter()
    truth = TRUTHS[args.truth]
    outcomes = [one_procedure(cfg, rng, args.sd, truth) for _ in range(args.runs)]
    print(f"| {args.truth} truth: {args.runs} procedures, seed noise {args.sd} points per run, {len(screening_design(len(NAMES)))}-run screen | rate |")
    print("|---|---|")
    for k, v in rates(outcomes, truth).items():
        print(f"| {k} | {v:.3f} |" if isinstance(v, float) else f"| {k} | {v} |")
    print(f"\n({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()

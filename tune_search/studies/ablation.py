"""The ablation: the best config re-trained with each augmentation switched the other way,
over several seeds, compared paired by seed in one pooled fit with the screen's four verdicts."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pandas as pd
from pydantic import Field

from tune_search import render
from tune_search.export import config_from_row
from tune_search.runs import RUN_KEYS
from tune_search.schemas import BOOL, FLOAT, FRACTION, INT, INTERVAL, PROBABILITY, RUNS, STRENGTH, STRING, Table, columns
from tune_search.sections import ConfigError, SearchConfigBase, Section
from tune_search.stats import block_fit, contrast, simultaneous
from tune_search.studies._base import Flag, Study, StudyContext, Tables
from tune_search.studies.training import prune, train
from tune_search.trainable.augment import strength_key, switch_key

ABLATION_COLUMNS = (
    "augmentation", "switched", "strength", "effect", "ci_low", "ci_high", "p_value", "p_adjusted", "p_equivalence_adjusted",
    "verdict", "n_seeds", "df", "top1_with", "top1_without", "screen_verdict", "agrees",
)  # fmt: skip


class AblationConfig(Section):
    seeds: Annotated[int, Field(ge=2)] = 3
    strength: Annotated[float, Field(gt=0, le=1)] = 0.5  # for augmentations the best config has off


def ablation_configs(best: Mapping[str, Any], augmentations: Sequence[str], *, strength: float, seeds: int) -> list[dict[str, Any]]:
    """The best config, and each augmentation switched the other way (off if it was on; on
    at `strength` if it was off), each over `seeds` seeds."""
    base = {k: v for k, v in best.items() if k not in RUN_KEYS}
    out = []
    for seed in range(seeds):
        out.append({**base, "study": "ablation", "design_row": -1, "seed": seed, "label": ""})
        for name in augmentations:
            flipped = dict(base)
            if best.get(switch_key(name)):
                flipped[switch_key(name)] = False
                flipped.pop(strength_key(name), None)
            else:
                flipped[switch_key(name)], flipped[strength_key(name)] = True, strength
            out.append({**flipped, "study": "ablation", "design_row": -1, "seed": seed, "label": name})
    return out


def paired_effects(runs: pd.DataFrame, augmentations: list[str], screen: pd.DataFrame | None = None, *, negligible: float = 0.01) -> pd.DataFrame:
    """ablation.parquet: per augmentation, top-1 with it minus top-1 without it, from one fit
    of every run on its variant (the best config as reference) and seed blocks, so the seeds
    pair the runs and every interval rests on all runs' residual error; intervals simultaneous
    across the augmentations, each with the screen's four verdicts read off it
    (`stats.simultaneous`, harmless within ±`negligible`). `runs` has columns label (the switched augmentation;
    empty for the best config), seed, top1 and aug_<name> for every augmentation; `screen`
    is effects.parquet, to compare with the screen's verdicts."""
    base = runs[runs["label"] == ""].set_index("seed")
    variants = [n for n in augmentations if (runs["label"] == n).any()]
    if not len(base) or not variants or runs["seed"].nunique() < 2:
        return pd.DataFrame(columns=list(ABLATION_COLUMNS))
    frame = pd.DataFrame({f"v{i}": (runs["label"] == n).astype(float).to_numpy() for i, n in enumerate(variants)})
    frame["seed"], frame["_y"] = runs["seed"].to_numpy(), runs["top1"].to_numpy(float)
    fit = block_fit(frame, "_y", [f"v{i}" for i in range(len(variants))])
    columns = list(fit.model.exog_names)
    was_on = {n: bool(base[switch_key(n)].iloc[0]) for n in variants}
    estimates = []
    for i, name in enumerate(variants):
        weights = np.zeros(len(columns))
        weights[columns.index(f"v{i}")] = -1.0 if was_on[name] else 1.0  # with it minus without it
        estimates.append(contrast(fit, weights))
    effect = np.array([e.effect for e in estimates])
    se = np.array([e.se for e in estimates])
    judged = simultaneous(effect, se, float(fit.df_resid), negligible)
    p_adjusted, p_equivalence, said = judged.p_adjusted, judged.p_equivalence_adjusted, judged.said
    screened = screen[screen["verdict"] != "not screened"] if screen is not None else None
    screen_verdicts = dict(zip(screened["augmentation"], screened["verdict"])) if screened is not None else {}
    rows = []
    for i, (name, e) in enumerate(zip(variants, estimates)):
        flipped = runs[runs["label"] == name].set_index("seed")
        seeds = base.index.intersection(flipped.index)
        with_aug, without = (base, flipped) if was_on[name] else (flipped, base)
        theirs = screen_verdicts.get(name, "")
        rows.append(
            {
                "augmentation": name,
                "switched": "off" if was_on[name] else "on",
                "strength": float(with_aug[strength_key(name)].iloc[0]),
                "effect": e.effect,
                "ci_low": float(judged.ci_low[i]),
                "ci_high": float(judged.ci_high[i]),
                "p_value": e.p_value,
                "p_adjusted": float(p_adjusted[i]),
                "p_equivalence_adjusted": float(p_equivalence[i]),
                "verdict": said[i],
                "n_seeds": len(seeds),
                "df": e.df,
                "top1_with": float(with_aug.loc[seeds, "top1"].mean()),
                "top1_without": float(without.loc[seeds, "top1"].mean()),
                "screen_verdict": theirs,
                "agrees": (theirs == said[i]) if theirs else None,
            }
        )
    return pd.DataFrame(rows, columns=list(ABLATION_COLUMNS))


class Ablation(Study):
    name = "ablation"
    sections = {"ablation": AblationConfig}
    command = "ablate"
    help = "ablate the best config of a finished search"
    flags = (Flag("--seeds", int, "ablation.seeds"), Flag("--strength", float, "ablation.strength"))
    tables = {
        "ablation_runs": Table("the ablation's runs", RUNS),
        "ablation": Table(
            "the ablation's paired effects",
            [
                *columns("augmentation, switched", STRING),
                *columns("strength", FLOAT, STRENGTH),
                *INTERVAL,
                *columns("p_value, p_adjusted, p_equivalence_adjusted", FLOAT, PROBABILITY),
                *columns("verdict", STRING),
                *columns("n_seeds", INT),
                *columns("df", FLOAT),
                *columns("top1_with, top1_without", FLOAT, FRACTION),
                *columns("screen_verdict", STRING),
                *columns("agrees", BOOL),
            ],
        ),
    }

    def run(self, ctx: StudyContext) -> None:
        """The best config and each augmentation switched the other way, ablation.seeds times;
        write ablation_runs.parquet."""
        cfg, best = ctx.cfg, ctx.folder.read("best_configs")
        if best is None or best.empty:
            raise ConfigError(f"{ctx.folder.file('best_configs')} has no successful trial to ablate")
        augs = list(ctx.space.augmentations)
        configs = ablation_configs(config_from_row(best.iloc[0]), augs, strength=cfg.ablation.strength, seeds=cfg.ablation.seeds)
        print(
            f"ablation: {len(configs)} runs of {cfg.budget.max_epochs} epochs (the best config and {len(augs)} switched augmentations,"
            f" {cfg.ablation.seeds} seed{'s' * (cfg.ablation.seeds != 1)} each)"
        )
        _, runs = train(ctx, configs, "ablation")
        if runs.empty:
            raise RuntimeError("every ablation run failed; see Ray's log above")
        ctx.folder.write("ablation_runs", runs)
        prune(ctx, "ablation")

    def analyse(self, tables: Tables, cfg: SearchConfigBase, classes: Sequence[str]) -> dict[str, pd.DataFrame]:
        runs = tables.get("ablation_runs")
        if runs is None:
            return {}
        return {"ablation": paired_effects(runs, list(cfg.space.augmentation_names), tables.get("effects"), negligible=cfg.screen.negligible)}

    def section(self, tables: Tables, folder: Path) -> list[str]:
        ablation = tables.get("ablation")
        if ablation is None or not len(ablation):
            return []
        lines = [
            f"- The screen and the ablation of the best config disagree on **{r['augmentation']}**: screen says {r['screen_verdict']},"
            f" ablation says {r['verdict']} ({render.row_interval(r)} points)."
            for _, r in ablation[ablation["agrees"] == False].iterrows()  # noqa: E712
        ]
        return lines + [""] if lines else []

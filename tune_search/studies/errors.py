"""How the whole procedure spends its error rate: the chance of any false `hurts` / `helps` /
`better` / `worse` over the screen, the focused screen and the confirmation together, every
look included, stays at `stats.ALPHA`.

A union bound: each verdict-making stage that the config runs gets a share of ALPHA (`SHARES`),
and a stage that looks again after each replicate splits its share over its most looks; within
a look the verdicts are simultaneous (`stats.simultaneous`, Bonferroni), so each verdict is
read off the interval printed beside it. The simulation in `bench/rates.py` measures the rates
this gives (docs/statistics.md).
"""

from __future__ import annotations

from tune_search.sections import SearchConfigBase
from tune_search.stats import ALPHA

# the focused screen decides most verdicts, equivalence ones included (the hardest to reach):
# it gets the largest share; the screen only has to find the large harms, and the confirmation
# compares arms that mostly differ by whole points
SHARES = {"screen": 1, "focus": 3, "confirm": 1}


def stages(cfg: SearchConfigBase) -> tuple[str, ...]:
    """The verdict-making stages the config runs after a search, in order."""
    if not cfg.screen.enabled:
        return ()
    return ("screen", *(("focus",) if cfg.focus.enabled else ()), *(("confirm",) if cfg.confirm.enabled else ()))


def stage_alpha(cfg: SearchConfigBase, stage: str) -> float:
    """The share of ALPHA one stage spends over all its looks (ALPHA for a stage run alone)."""
    running = stages(cfg)
    return ALPHA * SHARES[stage] / sum(SHARES[s] for s in running) if stage in running else ALPHA


def look_alpha(cfg: SearchConfigBase, stage: str) -> float:
    """What one look of `stage` spends: its share over its most looks (`seeds: auto`)."""
    section = getattr(cfg, stage)
    looks = section.max_seeds if getattr(section, "seeds", None) == "auto" else 1
    return stage_alpha(cfg, stage) / looks

"""What a run's config says beside how it trains: which baseline, study, design row, seed,
label or cell it is, and where a designed study's trial config keeps its run."""

from __future__ import annotations

from collections.abc import Mapping

BUNDLE = "bundle"  # explain: whether the run has the augmentation bundle on
# what a run is, not how it trains: its baseline name, or its study, design row, seed and cell
RUN_KEYS = ("baseline", "seed", "study", "design_row", "label", "cell", BUNDLE)
STUDY_RUN = "run"  # a designed study's trial config holds its run's flat config under this key


def run_of(config: Mapping) -> Mapping:
    """The flat config of a trial: a search trial's config as Tune gives it, a designed
    study's run from under its one key (Tune grid-searches over whole runs)."""
    return config.get(STUDY_RUN, config)

"""The whole procedure (screen, focused screen and confirmation, every look) simulated through
the real analysis functions (bench/procedure.py): its error control, coverage, and reach."""

import math

import numpy as np
import pytest
from bench.procedure import TRUTHS, one_procedure, rates

from tune_search.config import SearchConfig

pytestmark = pytest.mark.slow  # ~1 minute of statsmodels fits, no training

RUNS = 150
MARGIN = 2 * math.sqrt(0.05 * 0.95 / RUNS)


@pytest.mark.parametrize("truth", ["demo", "null"])
def test_any_false_verdict_over_the_whole_procedure_stays_at_5_percent_and_intervals_cover(truth):
    rng = np.random.default_rng(21)
    measured = rates([one_procedure(SearchConfig(), rng, 1.0, TRUTHS[truth]) for _ in range(RUNS)], TRUTHS[truth])
    assert measured["any false hurts/helps/better/worse"] <= 0.05 + MARGIN
    for family in ("screen", "focus", "confirm"):
        assert measured[f"{family}: every interval covers"] >= 0.95 - MARGIN, (family, measured)


def test_null_augmentations_are_mostly_called_harmless_and_a_one_point_help_is_found():
    """Seed noise 1 point per run, the demo's harms and interactions: at least 75 % of the truly
    null augmentations end harmless, a 1-point help ends helps in most procedures, and the
    recommendation is never more than a point below the best arm's truth."""
    rng = np.random.default_rng(22)
    measured = rates([one_procedure(SearchConfig(), rng, 1.0) for _ in range(RUNS)])
    assert measured["null augmentations called harmless"] >= 0.75, measured
    assert measured["power: 1-point help called helps"] >= 0.8, measured
    assert measured["recommended within 1 point of the best arm (truth)"] == 1.0

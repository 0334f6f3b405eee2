"""The proof that verdicts are right: a small search and its screen on the planted-harm data
set call the large planted harms harmful, no harmless augmentation harmful, and blame the
classes the harm was planted in."""

import pandas as pd
import pytest

from tests.conftest import PLANTED_SEARCHED as SEARCHED
from tune_search.trainable.planted import CLASSES, HARMLESS, PLANTED_HARMS

pytestmark = pytest.mark.slow  # trains models and starts Ray

# which pair of classes each planted harm was planted in
TARGETS = {"color": {"red", "orange"}, "blur": {"checker", "flat"}}


def test_the_screen_calls_planted_harms_harmful_and_no_harmless_one(planted_run):
    screen = pd.read_parquet(planted_run / "screen.parquet")
    assert len(screen) == 16 + 1 and screen["design_row"].max() == 15
    effects = pd.read_parquet(planted_run / "effects.parquet").set_index("augmentation")
    assert set(effects.index) == set(SEARCHED)
    for name in TARGETS:  # the two large planted harms (hflip's is smaller at this budget)
        assert effects.loc[name, "verdict"] == "hurts", effects.loc[name].to_dict()
    assert effects.loc["hflip", "effect"] < 0 and "hflip" in PLANTED_HARMS
    for name in HARMLESS:
        assert effects.loc[name, "verdict"] != "hurts", effects.loc[name].to_dict()
    assert effects["detectable"].notna().all() and effects["search_method"].isna().all()  # 3 trials: no search effects


def test_the_harm_lands_in_the_classes_it_was_planted_in(planted_run):
    per_class = pd.read_parquet(planted_run / "per_class.parquet")
    assert set(per_class["class"]) == set(CLASSES)
    for name, classes in TARGETS.items():
        rows = per_class[per_class["augmentation"] == name]
        assert set(rows.nsmallest(2, "change")["class"]) & classes, (name, rows.to_dict("records"))


def test_report_leads_with_verdicts_and_explains_them(planted_run):
    text = (planted_run / "report.md").read_text()
    assert text.index("## Verdicts") < text.index("## Why") < text.index("## Baselines")
    for name in TARGETS:
        assert f"- **{name}** (strength 1) costs" in text
    affinity = pd.read_parquet(planted_run / "affinity.parquet").set_index("augmentation")
    assert affinity["affinity"].notna().all()
    # the clean model loses more on blurred and recoloured images than on brightened ones
    assert affinity.loc["blur", "affinity"] < affinity.loc["brightness", "affinity"]
    assert affinity.loc["color", "affinity"] < affinity.loc["brightness", "affinity"]
    assert (planted_run / "effects.png").is_file() and (planted_run / "affinity.png").is_file()

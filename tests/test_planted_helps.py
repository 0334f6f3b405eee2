"""The proof that a helpful augmentation is recommended: on the planted-help data (validation
glyphs mirrored and brightness-shifted, training glyphs not) the default pipeline
calls hflip `helps`, keeps it at a strength the sweep measured, and confirms the recommendation
better than no augmentation."""

import pandas as pd
import pytest

from tune_search.cli import main

pytestmark = pytest.mark.slow  # trains models and starts Ray

SPACE = """
data: {source: planted-helps, image_size: 32, train_size: 400, val_size: 400}
space: {augmentations: [hflip, brightness, blur], strength: [0.5, 1.0], lr: 0.003, freeze_depth: 5, batch_size: 32}
budget: {num_samples: 3, max_epochs: 3, grace_period: 1}
dose: {enabled: false}
confirm: {policies: []}  # the policy arm is tested on the polarity run (test_planted_declared)
"""


@pytest.fixture(scope="module")
def helped(tmp_path_factory):
    root = tmp_path_factory.mktemp("helps")
    (root / "space.yaml").write_text(SPACE)
    assert main(["--space", str(root / "space.yaml"), "--storage", str(root), "--name", "helps"]) == 0
    return root / "helps"


def test_the_covering_augmentation_helps_and_is_kept_at_a_measured_strength(helped):
    recipe = pd.read_parquet(helped / "recipe.parquet").set_index("augmentation")
    assert recipe.loc["hflip", "verdict"] == "helps" and recipe.loc["hflip", "decision"] == "kept", recipe.to_dict("index")
    sweep = pd.read_parquet(helped / "sweep.parquet")
    chosen = sweep[(sweep["augmentation"] == "hflip") & sweep["chosen"]]
    assert len(chosen) == 1 and recipe.loc["hflip", "strength"] == chosen["strength"].item()
    measured = sweep[sweep["augmentation"] == "hflip"].set_index("strength")["effect"]
    assert measured[chosen["strength"].item()] >= measured.max() - 0.01  # within the margin of the best measured


def test_the_recommendation_is_the_best_measured_arm_and_beats_no_augmentation(helped):
    arms = pd.read_parquet(helped / "confirm_arms.parquet")
    recommended = arms[arms["recommended"]]
    assert len(recommended) == 1 and "hflip" in recommended["augmentations"].item()
    assert recommended["top1"].item() >= arms["top1"].max() - 0.01
    confirm = pd.read_parquet(helped / "confirm.parquet").set_index("arm")
    assert confirm.loc["none", "verdict"] == "better" and confirm.loc["none", "ci_low"] > 0
    assert not (confirm["verdict"] == "worse").any()  # no arm measured better than the recommendation
    text = (helped / "report.md").read_text()
    assert "hflip" in text.split("## The answer")[1].split("\n\n")[1]  # the headline names it

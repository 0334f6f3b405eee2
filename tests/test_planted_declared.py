"""Declared augmentations in a real run: on the planted-polarity data (classes told apart by
polarity) a declared RandomInvert is called `hurts` and left out of the recommendation, a
declared mild perspective warp is not called `hurts`, and the confirmation trains the
TrivialAugmentWide policy arm beside the recipe."""

import pandas as pd
import pytest

from tune_search.cli import main

pytestmark = pytest.mark.slow  # trains models and starts Ray

SPACE = """
data: {source: planted-polarity, image_size: 32, train_size: 400, val_size: 400}
space:
  augmentations:
    - hflip
    - invert: {transform: RandomInvert, at_full: {p: 0.5}, scales: {p: 0.0}}
    - perspective: {transform: RandomPerspective, at_full: {distortion_scale: 0.2, p: 0.5}, scales: {distortion_scale: 0.0}}
  strength: [0.5, 1.0]
  lr: 0.003
  freeze_depth: 5
  batch_size: 32
budget: {num_samples: 3, max_epochs: 3, grace_period: 1}
dose: {enabled: false}
confirm: {seeds: 3}
"""


@pytest.fixture(scope="module")
def declared_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("declared")
    (root / "space.yaml").write_text(SPACE)
    assert main(["--space", str(root / "space.yaml"), "--storage", str(root), "--name", "polarity"]) == 0
    return root / "polarity"


def test_a_declared_augmentation_that_destroys_the_label_hurts_and_is_left_out(declared_run):
    recipe = pd.read_parquet(declared_run / "recipe.parquet").set_index("augmentation")
    assert recipe.loc["invert", "verdict"] == "hurts" and recipe.loc["invert", "decision"] == "dropped", recipe.to_dict("index")
    assert recipe.loc["perspective", "verdict"] != "hurts", recipe.to_dict("index")
    arms = pd.read_parquet(declared_run / "confirm_arms.parquet")
    assert "invert" not in arms.loc[arms["recommended"], "augmentations"].item()


def test_declared_columns_are_typed_in_every_table(declared_run):
    trials = pd.read_parquet(declared_run / "trials.parquet")
    assert trials["aug_invert"].dtype == bool and trials["aug_perspective_strength"].dtype == float
    runs = pd.read_parquet(declared_run / "confirm_runs.parquet")
    assert runs["aug_trivialaugmentwide"].dtype == bool


def test_the_confirmation_trains_the_policy_arm_and_the_report_compares_with_it(declared_run):
    runs = pd.read_parquet(declared_run / "confirm_runs.parquet")
    policy = runs[runs["label"] == "policy TrivialAugmentWide"]
    assert len(policy) == 3 and policy["aug_trivialaugmentwide"].all() and not policy["aug_invert"].any()
    confirm = pd.read_parquet(declared_run / "confirm.parquet").set_index("arm")
    if not pd.read_parquet(declared_run / "confirm_arms.parquet").set_index("arm").loc["policy TrivialAugmentWide", "recommended"]:
        assert "policy TrivialAugmentWide" in confirm.index
        assert "vs TrivialAugmentWide:" in (declared_run / "report.md").read_text()

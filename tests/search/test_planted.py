"""The proof that verdicts are right: a small search and its ablation on the planted-harm
data set find every planted harm, call no harmless augmentation harmful, and blame the
classes the harm was planted in."""

import pandas as pd
import pytest

from search.cli import main
from trainable.planted import CLASSES, HARMLESS, PLANTED_HARMS

SEARCHED = ["hflip", "color", "blur", "brightness", "contrast"]
SPACE = f"""
data: {{source: planted, image_size: 32}}
space: {{augmentations: [{", ".join(SEARCHED)}], strength: [0.5, 1.0], lr: 0.003, freeze_depth: 0, batch_size: 32}}
budget: {{num_samples: 6, max_epochs: 6, grace_period: 1}}
ablation: {{seeds: 4, strength: 1.0}}
"""
# which pair of classes each planted harm was planted in
TARGETS = {"hflip": {"L", "J"}, "color": {"red", "orange"}, "blur": {"checker", "flat"}}


@pytest.fixture(scope="module")
def planted_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("planted")
    (root / "space.yaml").write_text(SPACE)
    assert main(["--space", str(root / "space.yaml"), "--storage", str(root), "--name", "planted", "--ablate"]) == 0
    return root / "planted"


def test_every_planted_harm_hurts_and_no_harmless_one_does(planted_run):
    ablation = pd.read_parquet(planted_run / "ablation.parquet").set_index("augmentation")
    assert set(ablation.index) == set(SEARCHED)
    for name in SEARCHED:
        if name in PLANTED_HARMS:
            assert ablation.loc[name, "verdict"] == "hurts", ablation.loc[name].to_dict()
        else:
            assert name in HARMLESS and ablation.loc[name, "verdict"] != "hurts", ablation.loc[name].to_dict()


def test_the_harm_lands_in_the_classes_it_was_planted_in(planted_run):
    per_class = pd.read_parquet(planted_run / "per_class.parquet")
    assert set(per_class["class"]) == set(CLASSES)
    for name, classes in TARGETS.items():
        rows = per_class[per_class["augmentation"] == name]
        worst = set(rows.nsmallest(2, "change")["class"])
        assert worst & classes, (name, rows.to_dict("records"))


def test_report_says_what_each_harm_costs(planted_run):
    text = (planted_run / "report.md").read_text()
    for name in TARGETS:
        assert f"- **{name}** costs" in text
    affinity = pd.read_parquet(planted_run / "affinity.parquet").set_index("augmentation")
    assert affinity["affinity"].notna().all() and (affinity["diversity"] > 0).all()
    assert (planted_run / "effects.png").is_file() and (planted_run / "affinity.png").is_file()

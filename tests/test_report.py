import numpy as np
import pandas as pd
import pytest

from tests.studies.test_ablation import AUGS, runs_with
from tests.studies.test_dose import dose_runs
from tests.studies.test_screen import NAMES, simulate
from tests.test_analysis import planted_table
from tests.test_export import RECORDS
from tune_search.analysis import estimate_effects
from tune_search.export import search_tables
from tune_search.report import build_report
from tune_search.results import ResultsFolder
from tune_search.studies import by_name, effects_table, with_effects
from tune_search.studies.ablation import paired_effects
from tune_search.studies.dose import dose_curve, dose_starts, dose_table, harmful_above
from tune_search.studies.screen import per_class_effects, screen_effects


@pytest.mark.slow
def test_report_from_parquet_files_only(tmp_path):
    folder = ResultsFolder(tmp_path)
    folder.write_tables(search_tables(RECORDS, max_epochs=3, top_k=3))
    search = estimate_effects(planted_table(n=80), ["hflip", "crop", "blur", "color"], n_boot=200)
    screen_runs = simulate({"hflip": -0.05, "blur": -0.02}, rng=np.random.default_rng(3))
    screened = screen_effects(screen_runs, NAMES)
    per_class = per_class_effects(screen_runs, NAMES, ["ant", "bee", "cat"])
    blur_dose = dose_runs(lambda s: -0.04 * s)
    harmful = {"blur": harmful_above(dose_curve(blur_dose, "blur"), 0.005)}
    effects = with_effects(with_effects(effects_table(NAMES, search), by_name["screen"], screened), by_name["dose"], dose_starts(harmful))
    folder.write("effects", effects)
    folder.write("per_class", per_class)
    folder.write("dose", dose_table(blur_dose, ["blur"], 0.005))
    folder.write("dose_runs", blur_dose)
    folder.write("screen", screen_runs)
    runs = runs_with({"hflip": -0.10, "blur": 0.0, "contrast": 0.0})
    folder.write("ablation", paired_effects(runs, AUGS, effects))
    folder.write(
        "affinity",
        pd.DataFrame(
            {"augmentation": AUGS, "strength": [0.7, 0.3, 0.7], "affinity": [-0.4, -0.1, 0.0], "diversity": [0.5, 0.3, 0.3], "clean_train_loss": [0.3] * 3}
        ),
    )
    data = {
        "origin": "a folder",
        "train_images": 9,
        "val_images": 6,
        "image_size": 32,
        "classes": ["ant", "bee", "cat"],
        "train_per_class": [4, 2, 3],
        "skipped": ["x.txt: not an image"],
    }
    folder.write_facts({"data": data, "model": {"name": "resnet18", "weights": "auto", "max_freeze_depth": 4}})
    text = build_report(ResultsFolder(tmp_path)).read_text()
    assert "train images per class: 2 (bee) to 4" in text and "skipped 1 files" in text and "freeze depths 0 to 4 (4 trains" in text
    harmful = [line for line in text.splitlines() if line.startswith("- **")]
    assert [h.split("**")[1] for h in harmful] == ["hflip", "blur"]  # most harmful first
    assert text.index("- hflip (hurts): ant") < text.index("- blur (hurts): ")
    verdicts = text.index("## Verdicts")
    assert verdicts < text.index("## Why") < text.index("## What the search saw") < text.index("## Baselines")
    assert "- **hflip** (strength 0.5) costs 5." in text and "most harmed classes (false-discovery corrected): ant" in text
    assert "- **blur** (strength 0.5) costs" in text and "above strength" in text
    assert "disagree on **blur**" in text  # the ablation of the best config did not see blur hurt
    assert "| head only  | 0.620 | 0.820 |" in text and "## Best config" in text
    for png in ("effects.png", "dose.png", "affinity.png", "freeze_depth.png", "lr.png"):
        assert (tmp_path / png).stat().st_size > 5000 and f"]({png})" in text


def test_report_without_a_screen_says_how_to_get_verdicts(tmp_path):
    folder = ResultsFolder(tmp_path)
    folder.write_tables(search_tables(RECORDS, max_epochs=3, top_k=3))
    search = estimate_effects(planted_table(n=80), ["hflip", "crop", "blur", "color"], n_boot=200)
    folder.write("effects", effects_table(["hflip", "crop", "blur", "color"], search))
    text = build_report(ResultsFolder(tmp_path)).read_text()
    assert "No screen was run" in text and "tune-search screen" in text and "## What the search saw" in text

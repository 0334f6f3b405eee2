import pandas as pd

from search.ablation import paired_effects
from search.analysis import estimate_effects
from search.export import write_exports, write_parquet
from search.report import build_report
from tests.search.test_ablation import AUGS, runs_with
from tests.search.test_analysis import planted_table
from tests.search.test_export import RECORDS


def test_report_from_parquet_files_only(tmp_path):
    write_exports(tmp_path, RECORDS, max_epochs=3, top_k=3)
    table = planted_table(n=80)
    effects = estimate_effects(table, ["hflip", "crop", "blur", "color"], n_boot=200)
    write_parquet(effects, tmp_path / "effects.parquet")
    runs = runs_with({"hflip": -0.10, "blur": -0.05, "contrast": 0.0})
    write_parquet(paired_effects(runs, AUGS, effects), tmp_path / "ablation.parquet")
    write_parquet(pd.DataFrame({"augmentation": AUGS, "strength": [0.7, 0.3, 0.7], "affinity": [-0.4, -0.1, 0.0], "diversity": [0.5, 0.3, 0.3], "clean_train_loss": [0.3] * 3}), tmp_path / "affinity.parquet")
    path = build_report(tmp_path)
    text = path.read_text()
    assert "- **hflip** costs 10.0 points of top-1" in text
    assert "disagree on **blur**" in text  # the search never saw blur hurt
    assert "| head only  | 0.620 | 0.820 |" in text and "## Best config" in text
    for png in ("effects.png", "affinity.png", "freeze_depth.png", "lr.png"):
        assert (tmp_path / png).stat().st_size > 5000 and f"]({png})" in text

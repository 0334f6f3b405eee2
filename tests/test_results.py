import pandas as pd
import pytest

from tune_search.results import TABLES, ResultsFolder


def test_tables_round_trip_and_unknown_names_are_refused(tmp_path):
    folder = ResultsFolder(tmp_path / "run")
    assert folder.read("screen") is None and not folder.has("screen")
    frame = pd.DataFrame({"label": ["clean"], "top1": [0.625], "per_class_top1": [[0.5, 0.75]]})
    path = folder.write("screen", frame)
    assert path == tmp_path / "run" / "screen.parquet" and folder.has("screen")
    read = folder.read("screen")
    assert list(read.columns) == TABLES["screen"].schema().names  # every declared column, filled or not
    pd.testing.assert_frame_equal(read[list(frame.columns)].astype({"per_class_top1": object}), frame)
    assert not list((tmp_path / "run").glob(".*"))  # the temporary file was renamed, not left
    with pytest.raises(KeyError, match="known: trials"):
        folder.file("scren")
    assert set(TABLES) >= {"trials", "history", "effects", "screen", "dose", "ablation"}

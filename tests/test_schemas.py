"""Every results table has one declared Arrow schema, written even when a column is empty,
with units in the field metadata, class names on per-class values, and docs/schemas.md
showing exactly these declarations."""

import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tune_search.results import TABLES, ResultsFolder
from tune_search.schemas import SEARCH_TABLES

DOCS = Path(__file__).parent.parent / "docs" / "schemas.md"


def test_every_table_has_a_declared_schema_with_unique_columns():
    for table in TABLES:
        names = TABLES[table].schema().names
        assert len(names) == len(set(names)), table


@pytest.mark.parametrize("table", list(TABLES))
def test_an_empty_table_is_written_in_its_whole_schema(tmp_path, table):
    path = ResultsFolder(tmp_path).write(table, pd.DataFrame())
    assert pq.read_schema(path).remove_metadata() == TABLES[table].schema().remove_metadata()
    assert pq.read_table(path).num_rows == 0


def test_tables_of_two_runs_concatenate_whatever_each_left_empty(tmp_path):
    one = ResultsFolder(tmp_path / "one").write("trials", pd.DataFrame({"trial_id": ["a"], "status": ["completed"], "error": [None], "top1": [0.5]}))
    two = ResultsFolder(tmp_path / "two").write("trials", pd.DataFrame({"trial_id": ["b"], "status": ["errored"], "error": ["ValueError: x"], "epochs": [1]}))
    both = pa.concat_tables([pq.read_table(one), pq.read_table(two)]).to_pandas()
    assert list(both["trial_id"]) == ["a", "b"] and both["error"].isna().tolist() == [True, False]
    assert pq.read_schema(one).field("error").type == pa.string() and pq.read_schema(one).field("epochs").type == pa.int64()


def test_units_are_in_the_field_metadata(tmp_path):
    path = ResultsFolder(tmp_path).write("effects", pd.DataFrame({"augmentation": ["blur"], "effect": [-0.02]}))
    fields = pq.read_schema(path)
    assert fields.field("effect").metadata == {b"unit": b"difference of fractions"}
    assert fields.field("p_adjusted").metadata == {b"unit": b"probability"}
    assert fields.field("augmentation").metadata is None
    assert TABLES["trials"].unit_metadata()["top1"] == "fraction" and TABLES["history"].unit_metadata()["time_s"] == "seconds"


def test_per_class_values_carry_the_class_names(tmp_path):
    folder = ResultsFolder(tmp_path)
    tmp_path.joinpath("facts.json").write_text(json.dumps({"data": {"classes": ["ant", "bee"]}}))
    path = folder.write("screen", pd.DataFrame({"label": ["clean"], "per_class_top1": [[0.5, 0.75]]}))
    assert pq.read_table(path).column("per_class_top1").to_pylist() == [[("ant", 0.5), ("bee", 0.75)]]
    assert folder.read("screen")["per_class_top1"].iloc[0] == [0.5, 0.75]  # the analysis reads them in class order


def test_a_column_the_schema_does_not_declare_is_refused():
    with pytest.raises(ValueError, match=r"screen: columns \['verdikt'\] are not in its declared schema"):
        TABLES["screen"].to_arrow("screen", pd.DataFrame({"verdikt": ["x"]}))


@pytest.mark.parametrize("table", list(TABLES))
def test_the_docs_never_show_a_table_other_than_it_is_declared(table):
    """The search's tables are always documented; a study's are where docs/schemas.md names them
    (a study added later is listed by `--list-tables` from its declarations, with no doc to edit),
    and what the docs show is its declaration."""
    text = DOCS.read_text()
    shown = TABLES[table].markdown()
    if table in SEARCH_TABLES or f"`{table}.parquet`" in text:
        assert f"`{table}.parquet`" in text and shown in text, f"docs/schemas.md lacks {table}'s table:\n{shown}"


def test_list_tables_prints_every_declared_table(capsys):
    from tune_search.cli import main

    assert main(["--list-tables"]) == 0
    out = capsys.readouterr().out
    for name, table in TABLES.items():
        assert f"{name}.parquet: {table.what}\n\n{table.markdown()}" in out


def test_effects_are_joined_from_the_columns_each_study_declares_and_no_other():
    import pandas as pd

    from tune_search.studies import by_name, effects_table, with_effects

    effects = effects_table(["blur", "hflip"], None)
    assert list(effects.columns) == [c.name for c in TABLES["effects"].columns]
    assert effects["verdict"].tolist() == ["not screened"] * 2
    screened = with_effects(effects, by_name["screen"], pd.DataFrame({"augmentation": ["blur"], "verdict": ["hurts"], "effect": [-0.03]}))
    assert screened["verdict"].tolist() == ["hurts", "not screened"] and screened["effect"].iloc[0] == -0.03
    dosed = with_effects(screened, by_name["dose"], pd.DataFrame({"augmentation": ["blur"], "harmful_above": [0.3]}))
    assert dosed["harmful_above"].iloc[0] == 0.3 and dosed["verdict"].tolist() == ["hurts", "not screened"]
    with pytest.raises(ValueError, match=r"study dose returned effects columns it does not declare: \['verdict'\]"):
        with_effects(dosed, by_name["dose"], pd.DataFrame({"augmentation": ["blur"], "verdict": ["helps"]}))

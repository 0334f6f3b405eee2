from pathlib import Path

import pytest

from tune_search.location import RunLocation, join, resolve_storage


def test_a_local_storage_resolves_to_an_absolute_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_storage("a/../b") == str(tmp_path / "b")
    here = RunLocation.of("runs", "demo")
    assert not here.remote and here.uri == str(tmp_path / "runs" / "demo") and here.folder == tmp_path / "runs" / "demo"
    assert here.study_uri("screen") == str(tmp_path / "runs" / "demo-screen") and here.study_folder("screen") == tmp_path / "runs" / "demo-screen"


def test_a_uri_is_joined_on_its_path_and_keeps_its_query(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert join("s3://bucket/runs", "demo") == "s3://bucket/runs/demo"
    assert join("s3://bucket", "demo") == "s3://bucket/demo"
    assert join("s3://bucket/q?endpoint_override=127.0.0.1:9000&scheme=http", "demo") == "s3://bucket/q/demo?endpoint_override=127.0.0.1:9000&scheme=http"
    there = RunLocation.of("s3://bucket/runs/", "demo")
    assert there.remote and there.uri == "s3://bucket/runs/demo" and there.study_uri("dose") == "s3://bucket/runs/demo-dose"
    assert there.study_folder("dose") is None and there.folder == tmp_path / "results" / "demo"  # staged locally, copied at the end


def test_a_results_folder_puts_its_studies_beside_it(tmp_path):
    beside = RunLocation.beside(tmp_path / "runs" / "demo")
    assert (beside.storage, beside.name) == (str(tmp_path / "runs"), "demo")
    assert beside.study_folder("explain") == Path(tmp_path / "runs" / "demo-explain")


def test_a_results_uri_splits_into_its_storage_and_name_query_kept():
    at = RunLocation.at("s3://bucket/team/demo?endpoint_override=127.0.0.1:9000&scheme=http")
    assert (at.storage, at.name) == ("s3://bucket/team?endpoint_override=127.0.0.1:9000&scheme=http", "demo")
    assert at.uri == "s3://bucket/team/demo?endpoint_override=127.0.0.1:9000&scheme=http"
    assert RunLocation.at("s3://bucket/demo/").uri == "s3://bucket/demo"
    with pytest.raises(ValueError, match="names no run"):
        RunLocation.at("s3://bucket")


def test_a_local_results_path_is_the_folder_itself(tmp_path):
    assert RunLocation.at(str(tmp_path / "runs" / "demo")).folder == tmp_path / "runs" / "demo"

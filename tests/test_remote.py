"""A storage URI against a real S3-compatible server on loopback (moto's threaded server, as
Ray's own storage tests use it)."""

import boto3
import pytest
from moto.server import ThreadedMotoServer

from tune_search.checks import check_remote_storage
from tune_search.cli import main
from tune_search.config import ConfigError


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """An S3 server on 127.0.0.1 with the bucket `runs`; the endpoint given the AWS way."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    patch = pytest.MonkeyPatch()
    for key, value in env.items():
        patch.setenv(key, value)
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="runs")
    yield endpoint
    patch.undo()
    server.stop()


def test_a_bucket_that_exists_and_takes_a_file_passes(s3):
    check_remote_storage("s3://runs/tune-search")
    host = s3.removeprefix("http://")  # the endpoint in the URI's query, as pyarrow documents it
    check_remote_storage(f"s3://runs/tune-search?endpoint_override={host}&scheme=http")
    keys = [o["Key"] for o in boto3.client("s3", endpoint_url=s3).list_objects_v2(Bucket="runs").get("Contents", [])]
    assert not [k for k in keys if "write-check" in k]  # the probe is gone (pyarrow may leave the folder's marker)


@pytest.mark.parametrize(
    "storage, message",
    [("s3://", "names no bucket; use s3://BUCKET/PATH"), ("s3://missing/runs", "bucket 'missing' does not exist")],
    ids=["no-bucket", "missing-bucket"],
)
def test_a_bucket_missing_from_the_uri_or_the_server_is_refused_by_name(s3, storage, message):
    with pytest.raises(ConfigError, match=message):
        check_remote_storage(storage)


def test_the_cli_refuses_it_before_ray_starts_with_exit_2(s3, capsys, monkeypatch):
    import ray

    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("Ray started"))
    assert main(["--storage", "s3://missing/runs", "--num-samples", "3"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bucket 'missing' does not exist" in err and "Traceback" not in err

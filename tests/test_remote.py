"""A storage URI against a real S3-compatible server on loopback (moto's threaded server, as
Ray's own storage tests use it)."""

import io
import logging
import os
import shutil
import signal
import subprocess
import sys
import time

import boto3
import pandas as pd
import pytest
from moto.server import ThreadedMotoServer

from tune_search.checks import check_remote_storage
from tune_search.cli import main
from tune_search.config import ConfigError
from tune_search.trainable.hold import HOLD, hold_spec


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """An S3 server on 127.0.0.1 with the bucket `runs`; the endpoint given the AWS way."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # a line per request otherwise
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


def test_a_local_folder_that_is_not_a_copy_of_the_uri_is_never_overwritten(s3, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    boto3.client("s3", endpoint_url=s3).put_object(Bucket="runs", Key="other/demo/config.yaml", Body=b"run: {}\n")
    (tmp_path / "results" / "demo").mkdir(parents=True)
    (tmp_path / "results" / "demo" / "trials.parquet").write_bytes(b"a local run's")
    assert main(["report", "s3://runs/other/demo"]) == 2
    assert (tmp_path / "results" / "demo" / "trials.parquet").read_bytes() == b"a local run's"
    assert main(["report", "s3://runs/other/none"]) == 2  # nothing there


S3_SPACE = """
data: {source: mnist, image_size: 32, train_size: 200, val_size: 100}
space: {augmentations: [hflip, blur], lr: [1.0e-3, 1.0e-2], freeze_depth: [0, max]}
budget: {num_samples: 4, max_epochs: 2, grace_period: 2, top_k: 2}
resources: {max_concurrent: 1}
screen: {seeds: 1}
dose: {enabled: false}
confirm: {enabled: false}
"""


def _keys(endpoint: str, prefix: str) -> list[str]:
    pages = boto3.client("s3", endpoint_url=endpoint).get_paginator("list_objects_v2").paginate(Bucket="runs", Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def _parquet(endpoint: str, key: str) -> pd.DataFrame:
    body = boto3.client("s3", endpoint_url=endpoint).get_object(Bucket="runs", Key=key)["Body"].read()
    return pd.read_parquet(io.BytesIO(body))


@pytest.mark.slow
def test_a_search_on_s3_is_killed_resumed_screened_and_read_back_from_the_uri(s3, tmp_path, monkeypatch):
    """The endpoint in the URI's query (no AWS_ENDPOINT_URL for the first driver): a search
    killed mid-way resumes from the bucket, screens, prunes its checkpoints there and copies
    its tables beside Ray's; then, with no local copy left, `report` and `export` take the URI."""
    monkeypatch.chdir(tmp_path)  # a remote run's staging folder is results/NAME
    (tmp_path / "space.yaml").write_text(S3_SPACE)
    storage = f"s3://runs/team?endpoint_override={s3.removeprefix('http://')}&scheme=http"
    args = ["--space", "space.yaml", "--storage", storage, "--name", "s3run"]
    # the second run to report epoch 1 (its checkpoint uploaded) is held there, and every later
    # one too: the search cannot end before the kill, however fast the machine trains
    (hold := tmp_path / "hold").mkdir()
    env = {k: v for k, v in os.environ.items() if k != "AWS_ENDPOINT_URL"} | {HOLD: hold_spec(hold, "s3run", epoch=1, nth=2, later="hold")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tune_search.cli", *args], env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + 300
    try:
        while not (hold / "held").is_file():
            assert time.time() < deadline and proc.poll() is None, f"no run reached the hold point: {proc.stderr.read() if proc.poll() is not None else ''}"
            time.sleep(0.1)
        checkpointed = {k.split("/")[2] for k in _keys(s3, "team/s3run/trial_") if "/checkpoint_" in k}
        assert len(checkpointed) >= 2 and proc.poll() is None, checkpointed
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert main([*args, "--resume"]) == 0

    trials = _parquet(s3, "team/s3run/trials.parquet")
    assert len(trials) == 4 and (trials["status"] == "completed").all() and trials["trial_id"].is_unique
    history = _parquet(s3, "team/s3run/history.parquet")
    assert len(history) == 8 and not history.duplicated(["trial_id", "epoch"]).any()
    screen = _parquet(s3, "team/s3run/screen.parquet")
    assert len(screen) == 9 and (screen["epochs"] == 2).all()
    keys = _keys(s3, "team/")
    assert {"team/s3run/report.md", "team/s3run/effects.parquet", "team/s3run/config.yaml"} <= set(keys)
    assert any(k.startswith("team/s3run/tensorboard/screen/") for k in keys)
    # pruned in the bucket: only the top_k search trials keep a checkpoint, one each
    checkpoints = {k.rsplit("/", 2)[0] for k in keys if "/checkpoint_" in k}
    assert {c.split("/")[1] for c in checkpoints} == {"s3run"} and len(checkpoints) == 2
    best = _parquet(s3, "team/s3run/best_configs.parquet")
    assert {c.split("/")[2].removeprefix("trial_") for c in checkpoints} == set(best.loc[best["source"] == "search", "trial_id"])

    shutil.rmtree(tmp_path / "results")  # another machine: nothing local
    before = boto3.client("s3", endpoint_url=s3).head_object(Bucket="runs", Key="team/s3run/report.md")["LastModified"]
    time.sleep(1.1)
    assert main(["report", f"s3://runs/team/s3run?endpoint_override={s3.removeprefix('http://')}&scheme=http"]) == 0
    assert boto3.client("s3", endpoint_url=s3).head_object(Bucket="runs", Key="team/s3run/report.md")["LastModified"] > before
    assert main(["export", "s3://runs/team/s3run"]) == 0  # the endpoint the AWS way
    assert _parquet(s3, "team/s3run/trials.parquet").equals(trials)
    assert _parquet(s3, "team/s3run/history.parquet").equals(history)
    assert main(["screen", "s3://runs/team/s3run", "--resume"]) == 0  # a study command: its finished runs kept
    assert _parquet(s3, "team/s3run/screen.parquet").equals(screen)

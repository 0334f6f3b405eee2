"""A real two-node Ray cluster on 127.0.0.1 (`ray start`), a search submitted with
`ray job submit`, trials on both nodes, complete exports; the cluster is stopped after."""

import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest

pytestmark = pytest.mark.slow  # trains models and starts Ray

REPO = Path(__file__).parents[1]
BIN = Path(sys.executable).parent
SPACE = """
data: {source: mnist, image_size: 32, train_size: 1000, val_size: 200}
space: {augmentations: [hflip, blur]}
budget: {num_samples: 6, max_epochs: 2, grace_period: 2}
screen: {seeds: 1}
confirm: {enabled: false}  # the studies' spread over nodes is the screen's to show
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray(*args: str, env: dict, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "ray"), *args], env=env, capture_output=True, text=True, timeout=timeout)


def wait_for_nodes(address: str, count: int, env: dict, timeout: float = 60) -> None:
    """Block until the cluster's GCS lists `count` live nodes: a search submitted earlier
    would plan its trials without the late node."""
    probe = f"import ray; ray.init(address={address!r}, logging_level='ERROR'); print(sum(n['Alive'] for n in ray.nodes()))"
    deadline = time.monotonic() + timeout
    while True:
        out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=timeout)
        if out.returncode == 0 and out.stdout.strip().splitlines()[-1:] == [str(count)]:
            return
        assert time.monotonic() < deadline, f"{count} nodes did not join within {timeout} s: {out.stdout[-500:]} {out.stderr[-1500:]}"
        time.sleep(1)


def stop_cluster(temps: list[str]) -> None:
    """Stop this cluster's processes and no others (`ray stop` stops every Ray on the machine):
    those whose command line names one of its temp folders, with their children; SIGTERM, then
    SIGKILL for what is left after Ray's own grace period."""
    named = _naming(temps)
    family = set(named)
    for process in named:
        with contextlib.suppress(psutil.NoSuchProcess):
            family.update(process.children(recursive=True))
    for process in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.terminate()
    _, alive = psutil.wait_procs(family, timeout=16)
    for process in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    psutil.wait_procs(alive, timeout=16)
    left = _naming(temps)
    assert not left, f"the cluster's processes outlived it: {[p.info['cmdline'][:2] for p in left]}"


def _naming(temps: list[str]) -> list[psutil.Process]:
    return [p for p in psutil.process_iter(["cmdline"]) if any(t in " ".join(p.info["cmdline"] or ()) for t in temps)]


@pytest.fixture
def cluster():
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"
    # token authentication on, with a token only this test knows: nodes and the job client need it
    env |= {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    port, dashboard = free_port(), free_port()
    # short: Ray's socket paths have a length limit; each node its own, or two nodes sharing one
    # would delete each other's unpacked working dir
    temps = [tempfile.mkdtemp(prefix="tsray") for _ in range(2)]
    common = ["--node-ip-address=127.0.0.1", "--num-cpus=1", "--disable-usage-stats"]
    try:
        head = ray("start", "--head", f"--port={port}", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                   f"--dashboard-port={dashboard}", f"--temp-dir={temps[0]}", *common, env=env)  # fmt: skip
        assert head.returncode == 0, head.stderr[-3000:]
        worker = ray("start", f"--address=127.0.0.1:{port}", f"--temp-dir={temps[1]}", *common, env=env)
        assert worker.returncode == 0, worker.stderr[-3000:]
        wait_for_nodes(f"127.0.0.1:{port}", 2, env)
        yield env, f"http://127.0.0.1:{dashboard}"
    finally:
        stop_cluster(temps)
        for temp in temps:
            shutil.rmtree(temp, ignore_errors=True)


def test_search_submitted_with_ray_job_runs_on_both_nodes(cluster, tmp_path):
    env, address = cluster
    (tmp_path / "space.yaml").write_text(SPACE)
    submit = ray(
        "job", "submit", f"--address={address}", f"--working-dir={REPO}", "--",
        "tune-search", "--space", str(tmp_path / "space.yaml"), "--storage", str(tmp_path), "--name", "cluster",
        env=env, timeout=600,
    )  # fmt: skip
    assert submit.returncode == 0 and "succeeded" in submit.stdout, submit.stdout[-4000:] + submit.stderr[-2000:]
    trials = pd.read_parquet(tmp_path / "cluster" / "trials.parquet")
    assert len(trials) == 6 and (trials["status"] == "completed").all()
    # one CPU per node, and on a cluster no trial process is handed on to another trial:
    # the first two trials take one node each, whichever node starts its process first
    assert trials["node_id"].nunique() == 2
    assert len(pd.read_parquet(tmp_path / "cluster" / "history.parquet")) == 12

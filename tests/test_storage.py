import json
import os
import signal
import subprocess
import sys
import time

import pyarrow.fs
import pytest

from tune_search.storage import storage_filesystem


def test_a_uri_keeps_rays_own_filesystem_and_a_folder_gets_the_replacing_one(tmp_path):
    assert storage_filesystem("s3://bucket/runs") is None
    assert isinstance(storage_filesystem(str(tmp_path)), pyarrow.fs.PyFileSystem)


def test_a_file_is_replaced_only_when_its_writer_closes(tmp_path):
    fs = storage_filesystem(str(tmp_path))
    target = str(tmp_path / "deep" / "state.json")
    with fs.open_output_stream(target) as out:
        out.write(b'{"v": 1}')
    stream = fs.open_output_stream(target)
    stream.write(b'{"v": 2, "half')
    assert json.loads(open(target).read()) == {"v": 1}  # the reader still sees the old file whole
    stream.write(b'": true}')
    stream.close()
    assert json.loads(open(target).read()) == {"v": 2, "half": True}
    assert os.listdir(tmp_path / "deep") == ["state.json"]
    assert oct(os.stat(target).st_mode & 0o777) != oct(0o600)  # the umask, not mkstemp's 0600


def test_copy_files_into_it_keeps_the_tree(tmp_path):
    source = tmp_path / "src"
    (source / "checkpoint_000001").mkdir(parents=True)
    (source / "checkpoint_000001" / "model.pt").write_bytes(b"x" * 100_000)
    (source / "experiment_state-1.json").write_text("{}")
    fs = storage_filesystem(str(tmp_path))
    pyarrow.fs.copy_files(str(source), str(tmp_path / "dst"), destination_filesystem=fs)
    assert (tmp_path / "dst" / "checkpoint_000001" / "model.pt").read_bytes() == b"x" * 100_000
    assert (tmp_path / "dst" / "experiment_state-1.json").read_text() == "{}"


WRITER = """
import sys, pyarrow.fs
from tune_search.storage import storage_filesystem
target = sys.argv[1]
fs = storage_filesystem(target)
source = target + ".src"
i = 0
while True:
    i += 1
    open(source, "w").write('{"i": %d, "pad": "%s"}' % (i, "x" * 200_000))
    pyarrow.fs.copy_files(source, target, destination_filesystem=fs)
    print(i, flush=True)
"""


@pytest.mark.slow
def test_a_writer_killed_mid_copy_leaves_a_whole_file(tmp_path):
    """What broke `--resume`: a SIGKILL during Ray's copy of its experiment state."""
    target = tmp_path / "experiment_state-1.json"
    for delay in (0.3, 0.45, 0.6):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], stdout=subprocess.PIPE, text=True)
        proc.stdout.readline()  # one complete copy is in place
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        state = json.loads(target.read_text())
        assert state["i"] >= 1 and len(state["pad"]) == 200_000

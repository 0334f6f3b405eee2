"""Checkpoint staging folders: removed on leaving, and a dead process's removed by the next trial."""

import subprocess
import sys

from tune_search.trainable.staging import checkpoint_folder, remove_stale


def test_a_folder_is_removed_on_leaving_even_on_an_error(tmp_path):
    try:
        with checkpoint_folder(tmp_path) as folder:
            (folder / "state.pt").write_bytes(b"x" * 10)
            raise RuntimeError("stopped")
    except RuntimeError:
        pass
    assert not folder.exists()


def test_the_folder_of_a_process_killed_inside_the_with_is_removed_and_a_live_ones_kept(tmp_path):
    code = (
        "import os, signal, sys; from pathlib import Path; from tune_search.trainable.staging import checkpoint_folder\n"
        "with checkpoint_folder(Path(sys.argv[1])) as f:\n"
        "    (f / 'state.pt').write_bytes(b'x'); os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=False)
    (dead,) = tmp_path.iterdir()  # what a stopped trial leaves behind
    with checkpoint_folder(tmp_path) as live:
        assert remove_stale(tmp_path) == [dead]
        assert not dead.exists() and live.exists()

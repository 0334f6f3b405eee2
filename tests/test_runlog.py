"""console.log: every printed line, timestamped; a command killed from outside is named by the next."""

import subprocess
import sys

from tune_search import runlog


def _lines(path):
    return [runlog.LINE.fullmatch(line)[2] for line in path.read_text().splitlines()]  # without the time and pid


def test_printed_lines_reach_the_log_once_attached_and_the_end_is_written(tmp_path, capsys):
    with runlog.capturing():
        print("data: 300 images")  # before the results folder is known
        runlog.attach(tmp_path)
        print("search: 3 runs\rsearch: 4 runs\rsearch: 5 runs", end="")  # a bar redrawn
        print()
        print("report: r/report.md")
        runlog.end(0)
    assert _lines(tmp_path / runlog.LOG) == ["data: 300 images", "search: 5 runs", "report: r/report.md", "ended: exit 0"]
    assert capsys.readouterr().out.startswith("data: 300 images\nsearch: 3 runs\r")  # the console as printed


def test_a_command_killed_from_outside_is_named_by_the_next_one_with_its_last_line(tmp_path, capsys):
    code = (
        "import os, signal, sys; from pathlib import Path; from tune_search import runlog\n"
        "with runlog.capturing():\n"
        "    runlog.attach(Path(sys.argv[1])); print('screen: 12 of 17 runs')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=False)
    assert runlog.unended(tmp_path / runlog.LOG).endswith("screen: 12 of 17 runs")
    with runlog.capturing():
        runlog.attach(tmp_path)
        runlog.end(130, "interrupted")
    out = capsys.readouterr().out
    assert "stopped without a word" in out and out.rstrip().endswith("screen: 12 of 17 runs")
    assert runlog.unended(tmp_path / runlog.LOG) is None  # this one ended: the next says nothing
    with runlog.capturing():
        runlog.attach(tmp_path)
    assert "stopped without a word" not in capsys.readouterr().out


def test_without_capturing_nothing_is_logged(tmp_path):
    runlog.attach(tmp_path)
    runlog.end(0)
    assert not (tmp_path / runlog.LOG).exists()


def test_a_bar_redrawn_without_end_holds_one_state(tmp_path, capsys):
    with runlog.capturing():
        runlog.attach(tmp_path)
        for k in range(10_000):
            print(f"\rsearch: {k} runs", end="")
        assert len(runlog._tee._partial) < 30
        print()
        runlog.end(0)
    assert _lines(tmp_path / runlog.LOG) == ["search: 9999 runs", "ended: exit 0"]


def test_a_log_on_a_full_disk_stops_logging_not_the_command(tmp_path, capsys):
    (tmp_path / runlog.LOG).symlink_to("/dev/full")  # every write fails with ENOSPC
    with runlog.capturing():
        runlog.attach(tmp_path)
        print("search: 3 runs")
        print("report: r/report.md")
        runlog.end(0)
    with runlog.capturing():  # nothing printed before the end either
        runlog.attach(tmp_path)
        runlog.end(0)
    assert capsys.readouterr().out == "search: 3 runs\nreport: r/report.md\n"


def test_a_command_still_running_is_not_called_stopped(tmp_path, capsys):
    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / runlog.LOG).write_text(f"2026-12-07 08:00:00 [{running.pid}] search: 2 of 6 runs\n")
        assert runlog.unended(tmp_path / runlog.LOG) is None  # `tune-search report` beside a search
    finally:
        running.kill()
        running.wait()
    assert runlog.unended(tmp_path / runlog.LOG).endswith("search: 2 of 6 runs")  # now it stopped

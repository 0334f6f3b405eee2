"""Soak check: many short trials in a row through the real search; the driver's and the
trial workers' memory must not grow with the number of trials.

    .venv/bin/python bench/soak.py [--trials 200]

Prints peak resident memory of the driver and of the trial worker processes in each quarter
of the run. Not a test: it takes minutes and its figures depend on the machine.
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import tempfile
import threading
import time

from tune_search.config import load_config
from tune_search.export import records_from_results
from tune_search.location import RunLocation
from tune_search.pipeline import prepare, ray_session
from tune_search.tuner import run_search

PAGE = os.sysconf("SC_PAGE_SIZE")


def _rss(pid: str) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * PAGE


def _trial_workers() -> list[str]:
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if b"train_trial" in cmdline or b"ImplicitFunc" in cmdline:
            pids.append(pid)
    return pids


def sample(samples: list, stop: threading.Event) -> None:
    """Every 0.5 s: driver RSS, the largest trial worker's RSS, how many workers (Linux /proc)."""
    while not stop.is_set():
        rss = []
        for pid in _trial_workers():
            try:
                rss.append(_rss(pid))
            except OSError:
                pass
        samples.append((time.time(), _rss("self"), max(rss, default=0), len(rss)))
        time.sleep(0.5)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--trials", type=int, default=200)
    args = p.parse_args()
    storage = tempfile.mkdtemp(prefix="soak")
    atexit.register(shutil.rmtree, storage, ignore_errors=True)  # its trials' checkpoints only
    cfg = load_config(
        None,
        {
            "data.source": "mnist", "data.image_size": 16, "data.train_size": 64, "data.val_size": 32,
            "budget.num_samples": args.trials, "budget.max_epochs": 1, "budget.grace_period": 1,
            "run.name": "soak", "run.storage": storage,
        },
    )  # fmt: skip
    space, spec, data = prepare(cfg)
    samples: list = []
    stop = threading.Event()
    with ray_session(None):
        thread = threading.Thread(target=sample, args=(samples, stop), daemon=True)
        started = time.time()
        thread.start()
        results = run_search(cfg, data, spec, space, RunLocation.of(cfg.run.storage, cfg.run.name))
        stop.set()
        thread.join()
    elapsed = time.time() - started
    records = records_from_results(results)
    failed = sum(r.error is not None for r in records)
    print(f"\n{len(records)} trials ({failed} failed) in {elapsed:.0f} s ({elapsed / len(records):.2f} s per trial)")
    print("| quarter of the run | driver peak RSS (MB) | largest trial worker peak RSS (MB) | workers seen |")
    print("|---|---|---|---|")
    t0, t1 = samples[0][0], samples[-1][0]
    for q in range(4):
        lo, hi = t0 + (t1 - t0) * q / 4, t0 + (t1 - t0) * (q + 1) / 4
        part = [s for s in samples if lo <= s[0] <= hi]
        print(f"| {q + 1} | {max(s[1] for s in part) / 2**20:.0f} | {max(s[2] for s in part) / 2**20:.0f} | {max(s[3] for s in part)} |")


if __name__ == "__main__":
    main()

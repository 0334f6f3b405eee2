"""How a study trains its runs: as one Ray Tune experiment, with a time estimate beforehand and
its checkpoints pruned afterwards, and the clean model a study's probes read."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from tune_search.checkpoints import prune_checkpoints
from tune_search.constants import FINISHED
from tune_search.export import runs_table
from tune_search.runs import run_of
from tune_search.sections import SearchConfigBase

if TYPE_CHECKING:
    from tune_search.studies._base import Folder, StudyContext


def estimate(folder: Folder, runs: list[tuple[int, float]], slots: int) -> str:
    """`runs` as (freeze depth, epochs of the search's images), timed by the search's own
    trials at that depth (or at any depth when none ran there)."""
    trials = folder.read("trials")
    if trials is None:
        return ""
    done = trials[(trials["epochs"] > 0) & trials["status"].isin(FINISHED)]
    if not len(done):
        return ""
    per_epoch = done["time_s"] / done["epochs"]
    overall = float(per_epoch.median())
    by_depth = per_epoch.groupby(done["freeze_depth"]).median()
    seconds = sum(float(by_depth.get(depth, overall)) * epochs for depth, epochs in runs)
    return f", about {math.ceil(seconds / max(slots, 1) / 60)} min on {slots} slot{'s' * (slots != 1)}"


def slots(cfg: SearchConfigBase) -> int:
    """How many runs the running Ray trains at once."""
    import ray

    from tune_search.tuner import trial_resources

    cpus, gpus = trial_resources(cfg.resources, ray.cluster_resources())
    by_cpu = int(ray.cluster_resources().get("CPU", 1) // cpus)
    by_gpu = int(ray.cluster_resources().get("GPU", 0) // gpus) if gpus else by_cpu
    return max(1, min(by_cpu, by_gpu, cfg.resources.max_concurrent or by_cpu))


def train(ctx: StudyContext, configs: list[dict], suffix: str, phase: str | None = None):
    """Train `configs` into STORAGE/NAME-<suffix>: Ray's results and the finished runs' table."""
    from tune_search.tuner import run_study

    results = run_study(ctx.cfg, ctx.data, ctx.spec, configs, location=ctx.location, suffix=suffix, resume=ctx.resume, phase=phase)
    return results, runs_table(results)  # a failed run is not in the table; the console named it


def prune(ctx: StudyContext, *suffixes: str, keep: set[str] = frozenset()) -> None:
    """A finished study's checkpoints served its resume; they go unless run.keep_checkpoints,
    but for the runs in `keep`, whose trained weights stay (the rest of their state goes)."""
    from tune_search.trainable.trial import keep_weights_only

    if ctx.cfg.run.keep_checkpoints:
        return
    for suffix in suffixes:
        prune_checkpoints(ctx.location.study_uri(suffix), keep, slim=keep_weights_only)


def clean_model(results, label: str, *, where: Callable[[Mapping], bool] = lambda run: True):
    """(the run's config, its checkpoint's state) of the first finished run labelled `label`
    that `where` accepts; None when there is none, or its checkpoint is gone."""
    from tune_search.trainable.trial import load_checkpoint

    for result in results:
        config = run_of(result.config)
        if config["label"] == label and where(config) and result.error is None and result.checkpoint is not None:
            try:
                with result.checkpoint.as_directory() as path:
                    return config, load_checkpoint(path)
            except FileNotFoundError:  # a finished study resumed: its checkpoints were pruned
                return None
    return None

"""The Ray Tune wiring: searcher, scheduler, resources and run config, in one place."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import TrialState
from ray import tune
from ray.tune.callback import Callback
from ray.tune.result import TRAINING_ITERATION
from ray.tune.schedulers import AsyncHyperBandScheduler, TrialScheduler
from ray.tune.search import ConcurrencyLimiter, SearchGenerator
from ray.tune.search.optuna import OptunaSearch

from tune_search.board import TensorBoard
from tune_search.checkpoints import CheckpointRetention, prune_behind_snapshot
from tune_search.console import Progress
from tune_search.interrupt import tuning
from tune_search.location import RunLocation, join
from tune_search.runs import STUDY_RUN, run_of
from tune_search.sections import ConfigError, ResourcesConfig, SearchConfigBase
from tune_search.space import Space
from tune_search.storage import storage_filesystem
from tune_search.trainable.data import Dataset
from tune_search.trainable.trial import TrialSpec, amp_dtype, spec_for, train_trial
from tune_search.trialfiles import result_files

METRIC, MODE = "top1", "max"
STUDY_NAME = "tune-search"  # the Optuna study's name in optuna.journal
MAX_FAILURES = 2  # restarts of one trial from its checkpoint before it counts as errored


class PruneAwareOptunaSearch(OptunaSearch):
    """OptunaSearch that tells Optuna the truth about how each trial ended.

    Ray's OptunaSearch records a trial that the scheduler stopped early as COMPLETE with
    its last, low-fidelity score, which TPE then treats as a final result. Here such a
    trial is PRUNED (Optuna keeps its intermediate values), an errored or diverged one
    FAILED, and only
    a trial that trained the full budget is COMPLETE. The baseline points are enqueued
    with their names as user attributes so the define-by-run space can tag them.
    """

    def __init__(self, space: Space, *, max_t: int, seed: int, baselines: list[tuple[str, dict[str, Any]]], journal: Path | None = None):
        storage = None
        if journal is not None:  # the study on disk as it runs: optuna-dashboard reads it live
            storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
        super().__init__(space, metric=METRIC, mode=MODE, sampler=optuna.samplers.TPESampler(seed=seed), storage=storage, study_name=STUDY_NAME)
        self._max_t = max_t
        for name, params in baselines:
            self._ot_study.enqueue_trial(params, user_attrs={"baseline": name})

    def _stored(self, trial_id: str) -> optuna.trial.FrozenTrial:
        """The trial as the study's storage holds it now."""
        return self._ot_study.get_trials(deepcopy=False)[self._ot_trials[trial_id].number]

    def _told_before(self, trial_id: str) -> bool:
        """Whether the journal already holds how this trial ended: a driver killed after
        telling Optuna but before Ray's next snapshot resumes a trial Optuna has closed."""
        if trial_id not in self._completed_trials and self._stored(trial_id).state.is_finished():
            self._completed_trials.add(trial_id)
        return trial_id in self._completed_trials

    def suggest(self, trial_id: str) -> dict | None:
        config = super().suggest(trial_id)
        if trial_id in self._ot_trials:  # the journal names the Ray trial: optuna-dashboard beside trials.parquet
            self._ot_trials[trial_id].set_user_attr("ray_trial_id", trial_id)
        return config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self._ot_trials and self._told_before(trial_id):
            return
        super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id not in self._ot_trials or self._told_before(trial_id):
            return
        result = result or {}
        value = result.get(self.metric)
        step = result.get(TRAINING_ITERATION)
        ot_trial = self._ot_trials[trial_id]
        # Ray hands the last result to on_trial_complete only, never to on_trial_result:
        # reported here, every epoch reaches Optuna and a pruned trial's value is its last
        reported = self._stored(trial_id).intermediate_values
        if isinstance(value, float) and math.isfinite(value) and step is not None and step not in reported:
            ot_trial.report(value, step)
        finished = (step or 0) >= self._max_t
        if error or result.get("diverged"):
            state = TrialState.FAIL
        elif finished and value is not None and math.isfinite(value):
            state = TrialState.COMPLETE
        else:
            state = TrialState.PRUNED
        # PRUNED with no value: Optuna takes the last reported one
        self._ot_study.tell(ot_trial, value if state == TrialState.COMPLETE else None, state=state)
        self._completed_trials.add(trial_id)

    @property
    def study(self) -> optuna.Study:
        return self._ot_study

    def requeue(self, asked: optuna.trial.FrozenTrial) -> None:
        """Queue an asked trial's point again, under its name if it is a baseline: it is
        suggested after the points queued before it (the baselines not yet run)."""
        self._ot_study.enqueue_trial(asked.params, user_attrs={k: v for k, v in asked.user_attrs.items() if k != "ray_trial_id"})


class ResumableSearch(SearchGenerator):
    """Ray's SearchGenerator, made to agree with the trials of a restored experiment.

    Ray saves the experiment's trial list, the generator's state (its sample count and the
    ConcurrencyLimiter's live trials) and the Optuna searcher's state as three files, and on
    remote storage uploads them in one background copy: a driver killed during it leaves them
    from different moments, in any order. Restored as they are, a resumed search runs a trial
    too many or too few, waits for ever on a slot the limiter counts live, or leaves Optuna a
    trial RUNNING whose point never runs.

    `agree_with` therefore rebuilds every count from two facts: the trials the experiment
    lists, and Optuna's study, whose storage (the journal, written as each trial is asked)
    names each asked trial by its Ray trial id. A listed trial is the searcher's again; an
    asked trial the experiment never listed is ended in Optuna as failed and its point queued
    again, so the search still tries it; the samples used are the listed trials, and the live
    ones those not finished.
    """

    def _base(self) -> PruneAwareOptunaSearch:
        base = self.searcher
        while not isinstance(base, PruneAwareOptunaSearch):
            base = base.searcher
        return base

    def agree_with(self, trials: list) -> tuple[list[str], list[str]]:
        """The restored search made to agree with `trials`; the listed trials the searcher's
        state did not know, and the asked ones the experiment never listed."""
        base = self._base()
        listed = {trial.trial_id: trial for trial in trials}
        asked = base.study.get_trials(deepcopy=False)
        by_ray_id = {t.user_attrs.get("ray_trial_id"): t for t in asked}
        adopted = [trial_id for trial_id in listed if trial_id not in base._ot_trials]
        for trial_id in adopted:
            if trial_id in by_ray_id:
                base._ot_trials[trial_id] = optuna.Trial(base.study, by_ray_id[trial_id]._trial_id)
        unlisted = [t for t in asked if t.state == TrialState.RUNNING and t.user_attrs.get("ray_trial_id") not in listed]
        for t in unlisted:
            base.requeue(t)
            base.study.tell(t.number, state=TrialState.FAIL)
        for trial_id in base._ot_trials.keys() - listed.keys():
            del base._ot_trials[trial_id]
            base._completed_trials.discard(trial_id)
        for trial_id, trial in listed.items():  # finished before the kill, never told
            if trial.is_finished() and trial_id in base._ot_trials:
                base.on_trial_complete(trial_id, trial.last_result, error=trial.status == trial.ERROR)
        limiter = self.searcher if isinstance(self.searcher, ConcurrencyLimiter) else None
        if limiter is not None:
            limiter.live_trials = {trial_id for trial_id, trial in listed.items() if not trial.is_finished()}
            limiter.num_unfinished_live_trials = len(limiter.live_trials)
            limiter.cached_results = {}
        self._counter = len(listed)
        return [trial_id for trial_id in adopted if trial_id in base._ot_trials], [t.user_attrs.get("ray_trial_id") or f"number {t.number}" for t in unlisted]


class AgreeWithTrials(Callback):
    """Repairs a restored search before Tune first asks it for a trial (see ResumableSearch)."""

    def __init__(self, search: ResumableSearch):
        self._search = search
        self._checked = False

    def on_step_begin(self, iteration: int, trials: list, **info) -> None:
        if self._checked:
            return
        self._checked = True
        adopted, orphans = self._search.agree_with(trials)
        for trial_id in adopted:
            print(f"search: trial {trial_id} was saved ahead of the searcher's state; the searcher takes it back")
        for trial_id in orphans:
            print(f"search: trial {trial_id} was suggested but not saved before the driver stopped; its point is queued again")


class BaselineFullBudgetASHA(AsyncHyperBandScheduler):
    """ASHA that lets the baseline trials run the full budget, so the baseline table
    compares them with the best config at equal epochs. Their results still set the rungs."""

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        decision = super().on_trial_result(tune_controller, trial, result)
        if trial.config.get("baseline") and result.get(TRAINING_ITERATION, 0) < self._max_t:
            return TrialScheduler.CONTINUE
        return decision


def _trial_dirname(trial) -> str:
    return f"trial_{trial.trial_id}"


TRIALS_PER_GPU = 4  # trials sharing one GPU when gpus_per_trial is auto
MAX_CPUS_PER_GPU_TRIAL = 4


def trial_resources(resources: ResourcesConfig, cluster: dict[str, float]) -> tuple[float, float]:
    """(CPUs, GPUs) per trial, `auto` resolved against the cluster's totals.

    Without GPUs a trial gets one core: two one-thread trials side by side train as fast or
    faster in total than one two-thread trial, and the search gets more trials in flight.
    With GPUs, TRIALS_PER_GPU trials share each one (small fine-tunes leave a GPU idle
    between Python steps) and split the cores among them.
    """
    gpus = resources.gpus_per_trial
    if gpus == "auto":
        gpus = 1 / TRIALS_PER_GPU if cluster.get("GPU", 0) >= 1 else 0.0
    cpus = resources.cpus_per_trial
    if cpus == "auto":
        slots = cluster.get("GPU", 0) / gpus if gpus else 0
        cpus = max(1, min(MAX_CPUS_PER_GPU_TRIAL, int(cluster.get("CPU", 1) // slots))) if slots else 1
    return float(cpus), float(gpus)


def _trainable(cfg: SearchConfigBase, data: Dataset, spec: TrialSpec, fn=train_trial):
    import ray

    cpus, gpus = trial_resources(cfg.resources, ray.cluster_resources())
    spec = dataclasses.replace(spec, cpus_per_trial=cpus, gpus_per_trial=gpus)
    memory = {"memory": spec.memory_bytes} if spec.memory_bytes else {}
    return tune.with_resources(tune.with_parameters(fn, data=data, spec=spec), {"cpu": cpus, "gpu": gpus, **memory})


def resources_line(cfg: SearchConfigBase, spec: TrialSpec) -> str:
    """What each trial gets on the running Ray, in one line."""
    import ray

    cpus, gpus = trial_resources(cfg.resources, ray.cluster_resources())
    precision = amp_dtype(dataclasses.replace(spec, gpus_per_trial=gpus), torch.device("cuda" if gpus else "cpu"))
    total = ray.cluster_resources()
    memory = f", {spec.memory_bytes / 1e9:.1f} GB memory (its measured peak)" if spec.memory_bytes else ""
    has = f"Ray has {total.get('CPU', 0):g} CPU, {total.get('GPU', 0):g} GPU"
    return f"each trial: {cpus:g} CPU, {gpus:g} GPU{memory}, {'bf16 autocast' if precision else 'fp32'} ({has})"


def reuse_actors() -> bool:
    """Reuse trial processes between trials on a one-node Ray only. Ray Tune hands a freed
    process to the next pending trial even when that trial already waits for a process
    starting on another node, which it then cancels: on a cluster, a node whose first trial
    process is still starting (runtime environment, importing torch) would lose every trial
    to the nodes that came up first while trials are shorter than that start."""
    import ray

    return sum(1 for node in ray.nodes() if node.get("Alive")) <= 1


def _run_config(cfg: SearchConfigBase, location: RunLocation, name: str, trials: int, phase: str, *extra: Callback) -> tune.RunConfig:
    return tune.RunConfig(
        name=name,
        storage_path=location.storage,
        storage_filesystem=storage_filesystem(location.storage),
        # every checkpoint stays until the stored snapshot names a newer one (CheckpointRetention)
        checkpoint_config=tune.CheckpointConfig(num_to_keep=None),
        # a trial whose process dies (OOM killer, a lost node) restarts from its last epoch
        failure_config=tune.FailureConfig(max_failures=MAX_FAILURES),
        # Ray's status tables and configuration boxes with --verbose, and a line per run
        verbose=1 if cfg.run.verbose else 0,
        callbacks=[
            Progress(phase, trials, cfg.budget.max_epochs, every_run=cfg.run.verbose),
            TensorBoard(location.board, phase, cfg.budget.max_epochs),
            CheckpointRetention(join(location.storage, name)),
            *extra,
            *result_files(),
        ],
    )


def _fit(tuner: tune.Tuner, uri: str, phase: str) -> tune.ResultGrid:
    """Run the tuner; then each trial's checkpoints older than the final snapshot's go. Ctrl-C
    stops it gracefully and raises `interrupt.Interrupted` once Tune saved its state."""
    with tuning(phase):
        results = tuner.fit()
    prune_behind_snapshot(uri)
    return results


def make_searcher(cfg: SearchConfigBase, space: Space, journal: Path | None = None) -> PruneAwareOptunaSearch:
    return PruneAwareOptunaSearch(space, max_t=cfg.budget.max_epochs, seed=cfg.run.seed, baselines=space.baseline_points(), journal=journal)


def run_search(cfg: SearchConfigBase, data: Dataset, spec: TrialSpec, space: Space, location: RunLocation, journal: Path | None = None) -> tune.ResultGrid:
    """A new search; its Optuna study is kept in `journal` (a new file) when given."""
    if journal is not None:
        journal.unlink(missing_ok=True)  # a new search in a reused folder starts a new study
    for name, why in space.baselines_left_out():
        print(f"baseline {name!r} left out: {why}")
    searcher = make_searcher(cfg, space, journal)
    limited = ConcurrencyLimiter(searcher, max_concurrent=cfg.resources.max_concurrent) if cfg.resources.max_concurrent else searcher
    # the callback and Tune share this object: tuner.pkl pickles both at once
    search_alg = ResumableSearch(limited)
    scheduler = BaselineFullBudgetASHA(
        time_attr=TRAINING_ITERATION,
        metric=METRIC,
        mode=MODE,
        max_t=cfg.budget.max_epochs,
        grace_period=cfg.budget.grace_period,
        reduction_factor=cfg.budget.reduction_factor,
    )
    tuner = tune.Tuner(
        _trainable(cfg, data, spec),
        tune_config=tune.TuneConfig(
            search_alg=search_alg,
            scheduler=scheduler,
            num_samples=cfg.budget.num_samples,
            reuse_actors=reuse_actors(),
            trial_dirname_creator=_trial_dirname,
        ),
        run_config=_run_config(cfg, location, location.name, cfg.budget.num_samples, "search", AgreeWithTrials(search_alg)),
    )
    return _fit(tuner, location.uri, "search")


def resumable(location: RunLocation) -> bool:
    """Whether the location holds Ray Tune's state of an interrupted search (no Ray needed)."""
    return tune.Tuner.can_restore(location.uri, storage_filesystem=storage_filesystem(location.storage))


def resume_search(cfg: SearchConfigBase, data: Dataset, spec: TrialSpec, location: RunLocation) -> tune.ResultGrid:
    """Continue an interrupted search: finished trials are kept as they are, unfinished ones
    continue from their last checkpoint, the searcher and scheduler from their saved state."""
    tuner = tune.Tuner.restore(
        location.uri, trainable=_trainable(cfg, data, spec), resume_unfinished=True, storage_filesystem=storage_filesystem(location.storage)
    )
    return _fit(tuner, location.uri, "search")


def run_fixed(cfg: SearchConfigBase, data: Dataset, spec: TrialSpec, config: dict[str, Any], location: RunLocation) -> tune.ResultGrid:
    """Train one fixed configuration for the full budget (no search, no early stopping)."""
    tuner = tune.Tuner(
        _trainable(cfg, data, spec),
        param_space=config,
        tune_config=tune.TuneConfig(num_samples=1, trial_dirname_creator=_trial_dirname),
        run_config=_run_config(cfg, location, location.name, 1, "rerun"),
    )
    return _fit(tuner, location.uri, "re-train")


def train_fixed(config: dict, *, data: Dataset, spec: TrialSpec) -> None:
    """Ray trainable for designed studies: one fixed run, grid-searched as a whole flat config
    (with its own model, weights, oversampling or budget where it names them)."""
    run = run_of(config)
    train_trial(run, data=data, spec=spec_for(spec, run))


def _same_study(folder: Path | None, configs: list[dict[str, Any]]) -> None:
    """Refuse to resume a study whose runs (their params.json, plain JSON) are not among the
    configs asked for now: it was started with other settings."""
    if folder is None:
        return
    wanted = {json.dumps(c, sort_keys=True) for c in json.loads(json.dumps(configs))}
    started = [run_of(json.loads(p.read_text())) for p in folder.glob("trial_*/params.json")]
    stray = [c for c in started if json.dumps(c, sort_keys=True) not in wanted]
    if stray:
        raise ConfigError(f"--resume: {folder} holds a study started with other settings ({len(stray)} runs differ); remove it to run the study afresh")


def run_study(
    cfg: SearchConfigBase,
    data: Dataset,
    spec: TrialSpec,
    configs: list[dict[str, Any]],
    *,
    location: RunLocation,
    suffix: str,
    resume: bool = False,
    phase: str | None = None,
) -> tune.ResultGrid:
    """Train every config of a designed study for the full budget, in parallel, with no
    early stopping, into STORAGE/NAME-<suffix>. With `resume`, a study a killed driver left
    there continues: finished runs are kept, the others restart from their last checkpoint."""
    path, filesystem = location.study_uri(suffix), storage_filesystem(location.storage)
    trainable = _trainable(cfg, data, spec, train_fixed)
    name = location.study_name(suffix)
    if resume and tune.Tuner.can_restore(path, storage_filesystem=filesystem):
        _same_study(location.study_folder(suffix), configs)
        print(f"{name}: resuming the runs left unfinished")
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, resume_errored=True, storage_filesystem=filesystem)
        return _fit(tuner, path, phase or suffix)
    tuner = tune.Tuner(
        trainable,
        param_space={STUDY_RUN: tune.grid_search(configs)},
        tune_config=tune.TuneConfig(reuse_actors=reuse_actors(), trial_dirname_creator=_trial_dirname),
        run_config=_run_config(cfg, location, name, len(configs), phase or suffix),
    )
    return _fit(tuner, path, phase or suffix)

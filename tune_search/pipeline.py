"""The pipeline behind the CLI, one public function per step: prepare (everything that can
fail on bad input, before Ray), search, rerun, the designed studies, analyse, report and
export. The CLI parses flags into these calls; bench/ calls them directly."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch

from tune_search import memory, runlog
from tune_search import studies as registry
from tune_search.checkpoints import prune_checkpoints
from tune_search.checks import check_remote_storage, check_resources, check_resumable, check_writable
from tune_search.config import ConfigError, SearchConfig
from tune_search.console import baseline_table, display_path, search_outcome
from tune_search.export import records_from_folder, records_from_results, search_tables
from tune_search.interrupt import catching
from tune_search.location import RunLocation
from tune_search.report import build_report
from tune_search.results import ResultsFolder
from tune_search.space import Space
from tune_search.storage import fetch, mark_staging, publish, write_text
from tune_search.studies import Study, StudyContext
from tune_search.trainable.data import Dataset, DataSpec, load_dataset
from tune_search.trainable.models import ModelSpec, max_freeze_depth, pretrained_backbone
from tune_search.trainable.trial import TrialSpec, eval_batch_for, keep_weights_only

IMBALANCED = 1.5  # largest over smallest class: worth a word on the console
SNAPSHOT_EVERY_S = 1


def prepare(cfg: SearchConfig) -> tuple[Space, TrialSpec, Dataset]:
    """Everything that can fail on bad input, done before Ray starts."""
    model = ModelSpec(name=cfg.model.name, weights=cfg.model.weights)
    try:
        space = Space.resolve(cfg.space, max_freeze_depth(model.name))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    pretrained_backbone(model)
    spec = TrialSpec(
        model=model,
        max_epochs=cfg.budget.max_epochs,
        seed=cfg.run.seed,
        balance=cfg.data.balance,
        oversample_to=cfg.data.oversample_to,
        precision=cfg.model.precision,
        fast_path=cfg.resources.fast_path,
        declared=cfg.declared,
        eval_batch_size=eval_batch_for(cfg.data.image_size),
    )
    d = cfg.data
    spec_data = DataSpec(
        source=d.source,
        image_size=d.image_size,
        train_size=d.train_size,
        val_size=d.val_size,
        val_fraction=d.val_fraction,
        seed=cfg.run.seed,
        max_pixels=d.max_pixels,
        cache=d.cache,
    )
    started = time.perf_counter()
    data = load_dataset(spec_data)
    cached = "" if data.entry is None else f"; {'decoded into' if data.decoded else 'read from'} the cache in {time.perf_counter() - started:.1f} s"
    print(f"data: {data.origin}; {len(data.train)} train / {len(data.val)} val images, {data.num_classes} classes, {d.image_size} px{cached}")
    low, high = (int(f(data.train.class_counts(data.num_classes))) for f in (torch.min, torch.max))
    if d.balance == "none" and high > IMBALANCED * low:
        print(f"  imbalanced: {low} to {high} train images per class; `data: {{balance: oversample}}` (or `weighted`) evens them out")
    if data.skipped:
        shown = "".join(f"\n  {line}" for line in data.skipped[:10])
        more = f"\n  ... and {len(data.skipped) - 10} more (all listed in facts.json)" if len(data.skipped) > 10 else ""
        print(f"skipped {len(data.skipped)} files in {d.source}:{shown}{more}")
    return space, spec, data


def facts(cfg: SearchConfig, space: Space, data: Dataset) -> dict:
    """What the config resolved to on this data and model, for the report."""
    return {
        "data": {
            "origin": data.origin,
            "train_images": len(data.train),
            "val_images": len(data.val),
            "image_size": cfg.data.image_size,
            "classes": list(data.classes),
            "train_per_class": data.train.class_counts(data.num_classes).tolist(),
            "skipped": list(data.skipped),
            "cache_entry": None if data.entry is None else str(data.entry),  # the decoded images
        },
        "model": {"name": cfg.model.name, "weights": cfg.model.weights, "max_freeze_depth": space.max_depth},
    }


@contextlib.contextmanager
def ray_session(address: str | None, verbose: bool = False, trial_memory: int = 0):
    """Ray for one command. Quiet unless `verbose`: Ray's own INFO and WARNING lines and the
    trial processes' logs stay in Ray's log folder; tune-search prints what matters. A local
    Ray's memory resource is what is available beside its own processes, never less than one
    trial's request `trial_memory` (which `memory.fit` checked a moment before)."""
    import ray
    from ray._private import ray_constants

    # Ray's experiment snapshot (what --resume restores) at most a second behind the trials, not
    # its automatic 10 s or more: a killed driver then retrains at most that much, and the
    # checkpoints kept for the snapshot (tune_search/checkpoints.py) go soon after
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", str(SNAPSHOT_EVERY_S))
    options: dict = {} if verbose else {"log_to_driver": False, "logging_level": logging.ERROR}
    loggers = {name: logging.getLogger(name) for name in ("ray.tune", "ray.train")}
    levels = {name: logger.level for name, logger in loggers.items()}
    output = os.environ.get("RAY_AIR_NEW_OUTPUT")
    if not verbose:  # trial errors are printed short by tune_search.console's Progress, with where the log is
        for logger in loggers.values():
            logger.setLevel(logging.CRITICAL)
        # Ray Tune's newer console output prints its experiment heading even when silent;
        # the older one, at verbose=0, prints nothing
        os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    cluster_switch = ray_constants.ENABLE_RAY_CLUSTER
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address, **options)
    else:
        # A local Ray listens on loopback only: with this switch off, Ray takes 127.0.0.1 as
        # the node address and binds its GCS, raylet, workers and agents there (the switch
        # is meant for laptops: RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER, read when Ray is imported).
        ray_constants.ENABLE_RAY_CLUSTER = False
        ray.init(dashboard_host="127.0.0.1", _memory=max(memory.ray_memory(), trial_memory), **options)
    try:
        with catching():  # after ray.init, whose own SIGTERM handler it replaces
            yield
    finally:
        ray.shutdown()
        ray_constants.ENABLE_RAY_CLUSTER = cluster_switch
        for name, logger in loggers.items():
            logger.setLevel(levels[name])
        if output is None:
            os.environ.pop("RAY_AIR_NEW_OUTPUT", None)
        else:
            os.environ["RAY_AIR_NEW_OUTPUT"] = output


def _checked(cfg: SearchConfig, address: str | None, chosen: Sequence[Study]) -> tuple[Space, TrialSpec, Dataset]:
    """The checks that need no Ray, then the data."""
    check_resources(cfg, address)
    for study in chosen:
        study.check(cfg)
    space, spec, data = prepare(cfg)
    return space, memory.fit(cfg, space, spec, data, address, chosen), data


def _open(cfg: SearchConfig, location: RunLocation, space: Space, data: Dataset) -> ResultsFolder:
    """The results folder, writable, with the config and the facts written (and on a remote
    storage copied there at once, so that another machine can resume or read the run)."""
    check_writable(location.folder, "results folder (run.storage / run.name)")
    folder = ResultsFolder(location.folder)
    runlog.attach(folder.path)
    write_text(cfg.dump(), folder.config)
    folder.write_facts(facts(cfg, space, data))
    if location.remote:
        mark_staging(location)
        _publish(location, quiet=True)
    return folder


def default_studies(cfg: SearchConfig, *, screen: bool = True, ablate: bool = False) -> list[str]:
    """The studies a search runs after it: those enabled in the config (none with
    `screen=False`, as --no-screen asks), and the ablation with `ablate`."""
    names = [s.name for s in registry.STUDIES if screen and s.enabled(cfg)]
    return names + ["ablation"] * ablate


def search(cfg: SearchConfig, *, address: str | None = None, resume: bool = False, studies: Sequence[str] | None = None) -> Path:
    """A search (or the rest of an interrupted one), its exports, the designed studies
    `studies` (default: `default_studies`), the analysis and the report; the results folder.
    Every check on the input runs before Ray starts."""
    from tune_search.tuner import resources_line, resumable, resume_search, run_search

    location = RunLocation.of(cfg.run.storage, cfg.run.name)
    chosen = registry.selected(default_studies(cfg) if studies is None else studies, cfg)
    if location.remote:
        check_remote_storage(location.storage)
    if resume:
        if location.remote and not location.folder.exists():  # resumed on another machine
            fetch(location)
        check_resumable(cfg, location.folder, resumable(location))
    space, spec, data = _checked(cfg, address, chosen)
    folder = _open(cfg, location, space, data)
    with ray_session(address, cfg.run.verbose, spec.memory_bytes):
        print(resources_line(cfg, spec))
        results = resume_search(cfg, data, spec, location) if resume else run_search(cfg, data, spec, space, location, journal=folder.journal)
        _write_search(cfg, folder, location, results, baselines=False)
        run_studies(StudyContext(folder, cfg, space, spec, data, location, resume=resume), chosen)
    _publish(location)
    return folder.path


def rerun(cfg: SearchConfig, config: dict, *, name: str, address: str | None = None) -> Path:
    """One saved config (`tune_search.export.config_from_row`) trained for the full budget
    as run `name`, with the baseline table beside it; the results folder."""
    from tune_search.tuner import resources_line, run_fixed

    location = RunLocation.of(cfg.run.storage, name)
    if location.remote:
        check_remote_storage(location.storage)
    space, spec, data = _checked(cfg, address, [])
    if not 0 <= config["freeze_depth"] <= space.max_depth:
        raise ConfigError(f"saved freeze_depth {config['freeze_depth']} does not fit {cfg.model.name} (0..{space.max_depth})")
    folder = _open(cfg, location, space, data)
    with ray_session(address, cfg.run.verbose, spec.memory_bytes):
        print(resources_line(cfg, spec))
        results = run_fixed(cfg, data, spec, {**config, "baseline": ""}, location)
        _write_search(cfg, folder, location, results, baselines=True)
    _publish(location)
    return folder.path


def _write_search(cfg: SearchConfig, folder: ResultsFolder, location: RunLocation, results, *, baselines: bool) -> None:
    """The search's tables written, the checkpoints it no longer needs pruned, its outcome printed."""
    tables = search_tables(records_from_results(results), max_epochs=cfg.budget.max_epochs, top_k=cfg.budget.top_k)
    folder.write_tables(tables)
    if not cfg.run.keep_checkpoints:  # they served resume; the top_k's weights stay
        prune_checkpoints(location.uri, set(tables["best_configs"]["trial_id"]), slim=keep_weights_only)
    print(search_outcome(tables, baselines=baselines))
    print(f"exports: {display_path(folder.path)}/{{trials,history,best_configs}}.parquet, config.yaml, facts.json")
    if folder.journal.is_file():
        print(f"live views: optuna-dashboard {display_path(folder.journal)}  |  tensorboard --logdir {display_path(location.board)}")


def _publish(location: RunLocation, quiet: bool = False) -> None:
    """For a remote storage, copy the local exports and report beside Ray's results."""
    if not location.remote:
        return
    publish(location)
    if not quiet:
        print(f"exports copied to {location.uri}")


def staged(location: RunLocation, *, trial_files: bool = False) -> ResultsFolder:
    """The results folder of a run: a local one as it is; a remote one checked and copied into
    its staging folder (with each trial's JSON for `trial_files`), before Ray starts."""
    if location.remote:
        check_remote_storage(location.storage)
        fetch(location, trial_files=trial_files)
    runlog.attach(location.folder)
    return ResultsFolder(location.folder)


def run_studies(ctx: StudyContext, chosen: Sequence[Study]) -> None:
    """Train the chosen studies in registry order, then analyse every table, write the
    report and print each study's table and the baselines."""
    for study in chosen:
        study.run(ctx)
    tables = analyse(ctx.folder, ctx.cfg)
    path = build_report(ctx.folder, tables)
    for study in registry.STUDIES:
        if (shown := study.console(tables)) is not None:
            print("\n" + shown)
    if {"trials", "best_configs"} <= set(tables):
        print("\n" + baseline_table(tables["trials"], tables["best_configs"]))
    for study in registry.STUDIES:
        if (shown := study.closing(tables)) is not None:
            print("\n" + shown)
    print(f"\nreport: {display_path(path)}")


def study_of(location: RunLocation, cfg: SearchConfig, command: str, *, address: str | None, resume: bool) -> None:
    """The study a results command names (and those that follow it) on a finished search
    (`staged`); their runs land beside its folder, never in a storage named inside it."""
    from tune_search.tuner import resources_line

    folder = ResultsFolder(location.folder)
    folder.require("trials", "best_configs")
    chosen = registry.selected([registry.by_command[command].name], cfg)
    check_resources(cfg, address)
    for study in chosen:
        study.check(cfg)
    if not location.remote:
        check_writable(folder.path.parent, "the folder beside the results (where the study's runs go)")
    space, spec, data = prepare(cfg)
    spec = memory.fit(cfg, space, spec, data, address, chosen)
    with ray_session(address, cfg.run.verbose, spec.memory_bytes):
        print(resources_line(cfg, spec))
        run_studies(StudyContext(folder, cfg, space, spec, data, location, resume=resume), chosen)
    _publish(location)


def analyse(folder: ResultsFolder, cfg: SearchConfig) -> dict[str, pd.DataFrame]:
    """Every analysis table again from the tables in `folder`, written there; every table."""
    from tune_search.analysis import search_effects

    tables = folder.read_all()
    search = None
    if "trials" in tables and "history" in tables:
        with contextlib.suppress(ValueError):  # too few trials for the search's own estimates: none
            search = search_effects(tables["trials"], tables["history"], list(cfg.space.augmentation_names), seed=cfg.run.seed)
    classes = folder.read_facts().get("data", {}).get("classes") or folder.classes()
    made = registry.analyse(tables, cfg, classes, search)
    folder.write_tables(made)
    for study in registry.STUDIES:
        for name, text in study.files(tables | made, cfg, folder.path).items():
            write_text(text, folder.path / name)
    return tables | made


def report(location: RunLocation, cfg: SearchConfig) -> Path:
    """The analysis tables and report.md again, from the Parquet files (`staged`)."""
    folder = ResultsFolder(location.folder)
    folder.require("trials", "history")
    tables = analyse(folder, cfg)
    path = build_report(folder, tables)
    print(f"report: {display_path(path)}")
    print("\n" + registry.by_name["screen"].console(tables))
    _publish(location)
    return path


def export(location: RunLocation, cfg: SearchConfig) -> Path:
    """The search's Parquet tables again from the JSON Ray Tune wrote per trial (`staged`
    with them), then the report."""
    folder = ResultsFolder(location.folder)
    try:
        records = records_from_folder(folder.path)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if not records:
        raise ConfigError(f"{folder.path} holds no trial folders (trial_*/params.json) to export")
    tables = search_tables(records, max_epochs=cfg.budget.max_epochs, top_k=cfg.budget.top_k)
    folder.write_tables(tables)
    print(f"{len(tables['trials'])} trials exported to {display_path(folder.path)}")
    return report(location, cfg)

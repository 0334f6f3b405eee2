"""The pipeline behind the CLI, one public function per step: prepare (everything that can
fail on bad input, before Ray), search, the designed studies, export and report. The CLI
parses flags into these calls; bench/ calls them directly."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from pathlib import Path

import pandas as pd

from tune_search.checks import check_resources, check_resumable, check_writable
from tune_search.config import ConfigError, SearchConfig
from tune_search.export import baseline_summary, config_from_row, markdown_table, records_from_folder, records_from_results, search_tables
from tune_search.report import build_report
from tune_search.results import ResultsFolder
from tune_search.space import Space
from tune_search.storage import prune_checkpoints, storage_uri, write_text
from tune_search.studies import Study
from tune_search.trainable.augment import strengths_in
from tune_search.trainable.data import DataSpec, Dataset, load_dataset
from tune_search.trainable.hyperparameters import HYPERPARAMETERS
from tune_search.trainable.models import ModelSpec, WeightsError, max_freeze_depth, pretrained_backbone
from tune_search.trainable.trial import TrialSpec, keep_weights_only


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
    )
    d = cfg.data
    spec_data = DataSpec(source=d.source, image_size=d.image_size, train_size=d.train_size, val_size=d.val_size, val_fraction=d.val_fraction, seed=cfg.run.seed)
    data = load_dataset(spec_data)
    print(f"data: {data.origin}; {len(data.train)} train / {len(data.val)} val images, {data.num_classes} classes, {d.image_size} px")
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
        },
        "model": {"name": cfg.model.name, "weights": cfg.model.weights, "max_freeze_depth": space.max_depth},
    }


def print_outcome(tables: dict[str, pd.DataFrame], folder: Path, seconds: float, baselines: bool) -> None:
    trials, best = tables["trials"], tables["best_configs"]
    print(f"\n{len(trials)} trials in {seconds:.0f} s: " + ", ".join(f"{n} {s}" for s, n in trials["status"].value_counts().items()))
    if len(best):
        row = best.iloc[0]
        print("\nbest config:")
        config = config_from_row(row)
        for h in HYPERPARAMETERS:
            print(f"  {h.name}: {h.show(config[h.name])}")
        augs = [f"{n} {s:.2f}" for n, s in strengths_in(config).items()]
        print(f"  augmentations: {', '.join(augs) or 'none'}")
        print(f"  -> top-1 {row['top1']:.4f}, top-5 {row['top5']:.4f} after {row['epochs']} epochs")
    if baselines:  # otherwise they close the run, after the verdicts
        print("\n" + markdown_table(baseline_summary(trials, best)))
    print(f"\nexports: {folder}/{{trials,history,best_configs}}.parquet, config.yaml, facts.json")
    journal = ResultsFolder(folder).journal
    if journal.is_file():
        print(f"live views: optuna-dashboard {journal}  |  tensorboard --logdir {folder}")


@contextlib.contextmanager
def ray_session(address: str | None, verbose: bool = False):
    """Ray for one command. Quiet unless `verbose`: Ray's own INFO and WARNING lines and the
    trial processes' logs stay in Ray's log folder; tune-search prints what matters."""
    import ray
    from ray._private import ray_constants

    # with one kept checkpoint per trial Ray snapshots often; at this scale that is cheap
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    options: dict = {} if verbose else {"log_to_driver": False, "logging_level": logging.ERROR}
    loggers = {name: logging.getLogger(name) for name in ("ray.tune", "ray.train")}
    levels = {name: logger.level for name, logger in loggers.items()}
    output = os.environ.get("RAY_AIR_NEW_OUTPUT")
    if not verbose:  # trial errors are printed short by tune_search.progress, with where the log is
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
        ray.init(dashboard_host="127.0.0.1", **options)
    try:
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


def verdict_table(effects: pd.DataFrame) -> str:
    """The console's closing table: the screen's verdicts, most harmful first."""
    screened = effects[effects["verdict"] != "not screened"].sort_values("effect")
    if screened.empty:
        return "no screen: run `tune-search screen RESULTS_DIR` for verdicts"
    table = pd.DataFrame(
        {
            "augmentation": screened["augmentation"],
            "top-1 effect, points": [f"{100 * e:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]" for e, lo, hi in zip(screened["effect"], screened["ci_low"], screened["ci_high"])],
            "verdict": screened["verdict"],
            "harmful above": ["" if math.isnan(v) else f"{v:.2f}" for v in screened["harmful_above"]],
        }
    )
    reach = 100 * screened["detectable"].max()
    return f"{markdown_table(table)}\n(unclear: smaller than {reach:.1f} points, if any; 80 % power, Holm-corrected)"


def explain_lines(explain: pd.DataFrame) -> str:
    """The explain study's verdicts as a console table."""
    table = pd.DataFrame(
        {
            "explanation": explain["title"],
            "contrast, points [95 %]": [f"{100 * e:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]" for e, lo, hi in zip(explain["effect"], explain["ci_low"], explain["ci_high"])],
            "predicted": explain["expected"],
            "verdict": explain["verdict"],
        }
    )
    return markdown_table(table) + "\n(the contrasts and their sentences: report.md, 'Why it hurts')"


def check_explain(cfg: SearchConfig) -> None:
    """Every model explain.models names loads its weights (before Ray starts)."""
    for m in cfg.explain.models:
        try:
            pretrained_backbone(ModelSpec(name=m.name, weights=m.weights))
        except WeightsError as exc:
            raise ConfigError(f"explain.models: {exc}") from None


def studies(study: Study, *, screen: bool, ablate: bool, explain: bool = False) -> None:
    """The designed studies after a search, then the analysis of every table and the report."""
    from tune_search.studies import analyse, run_ablation, run_dose, run_explain, run_screen

    if screen:
        run_screen(study)
        if study.cfg.dose.enabled:
            run_dose(study)
    if ablate:
        run_ablation(study)
    if explain:
        run_explain(study)
    effects = analyse(study.folder, study.cfg, list(study.data.classes))
    report = build_report(study.folder.path)
    print("\n" + verdict_table(effects))
    if explain and (explained := study.folder.read("explain")) is not None:
        print("\n" + explain_lines(explained))
    trials, best = study.folder.read("trials"), study.folder.read("best_configs")
    if trials is not None and best is not None:
        print("\n" + markdown_table(baseline_summary(trials, best)))
    print(f"\nreport: {report}")


def publish(folder: Path, uri: str) -> None:
    """Copy the local exports and report to a storage URI (s3://, gs://, ...)."""
    import pyarrow.fs

    filesystem, path = pyarrow.fs.FileSystem.from_uri(uri)
    filesystem.create_dir(path, recursive=True)
    pyarrow.fs.copy_files(str(folder), path, destination_filesystem=filesystem)
    print(f"exports copied to {uri}")


def results_folder(cfg: SearchConfig, name: str) -> tuple[str, Path]:
    """(Ray's storage, the local results folder) for a run called `name`: exports and the
    report are written locally; for a URI storage they are staged in results/NAME and copied
    beside Ray's results at the end."""
    storage = storage_uri(cfg.run.storage)
    remote = "://" in storage
    return storage, (Path("results") / name).resolve() if remote else Path(storage) / name


def search(cfg: SearchConfig, *, address: str | None = None, resume: bool = False, rerun: dict | None = None,
           name: str | None = None, screen: bool = True, ablate: bool = False) -> Path:  # fmt: skip
    """A search (or, with `rerun`, one saved config at full budget), its exports, and unless
    rerun the designed studies and the report; the results folder. Every check on the input
    runs before Ray starts."""
    from tune_search.tuner import resources_line, resumable, resume_search, run_fixed, run_search

    name = name or cfg.run.name
    storage, folder = results_folder(cfg, name)
    remote = "://" in storage
    check_resources(cfg, address)
    if resume:
        check_resumable(cfg, folder, resumable(cfg))
    explain = rerun is None and screen and cfg.screen.enabled and cfg.explain.enabled
    if explain:
        check_explain(cfg)
    space, spec, data = prepare(cfg)
    if rerun is not None and not 0 <= rerun["freeze_depth"] <= space.max_depth:
        raise ConfigError(f"saved freeze_depth {rerun['freeze_depth']} does not fit {cfg.model.name} (0..{space.max_depth})")
    check_writable(folder, "results folder (run.storage / run.name)")
    results_dir = ResultsFolder(folder)
    write_text(cfg.dump(), results_dir.config)
    results_dir.write_facts(facts(cfg, space, data))
    with ray_session(address, cfg.run.verbose):
        print(resources_line(cfg, spec))
        started = time.time()
        if resume:
            results = resume_search(cfg, data, spec)
        elif rerun is None:
            results = run_search(cfg, data, spec, space, journal=results_dir.journal)
        else:
            results = run_fixed(cfg, data, spec, {**rerun, "baseline": ""}, name)
        elapsed = time.time() - started
        tables = search_tables(records_from_results(results), max_epochs=cfg.budget.max_epochs, top_k=cfg.budget.top_k)
        results_dir.write_tables(tables)
        if not remote and not cfg.run.keep_checkpoints:  # they served resume; the top_k's weights stay
            prune_checkpoints(folder, set(tables["best_configs"]["trial_id"]), slim=keep_weights_only)
        print_outcome(tables, folder, elapsed, baselines=rerun is not None)
        if rerun is None:
            study = Study(results_dir, cfg, space, spec, data, storage=storage, resume=resume)
            studies(study, screen=screen and cfg.screen.enabled, ablate=ablate, explain=explain)
    if remote:
        publish(folder, f"{storage.rstrip('/')}/{name}")
    return folder


def study_of(folder: ResultsFolder, cfg: SearchConfig, *, address: str | None, resume: bool, screen: bool = False,
             ablate: bool = False, explain: bool = False) -> None:  # fmt: skip
    """The designed studies of a finished search; their runs land beside its folder, never
    in a storage named inside it."""
    from tune_search.tuner import resources_line

    folder.require("trials", "best_configs")
    check_resources(cfg, address)
    if explain:
        check_explain(cfg)
    check_writable(folder.path.parent, "the folder beside the results (where the study's runs go)")
    space, spec, data = prepare(cfg)
    with ray_session(address, cfg.run.verbose):
        print(resources_line(cfg, spec))
        study = Study(folder, cfg, space, spec, data, storage=str(folder.path.parent), resume=resume)
        studies(study, screen=screen, ablate=ablate, explain=explain)


def report(folder: ResultsFolder, cfg: SearchConfig) -> Path:
    """The analysis tables and report.md again, from the Parquet files."""
    from tune_search.studies import analyse

    folder.require("trials", "history")
    effects = analyse(folder, cfg)
    path = build_report(folder.path)
    print(f"report: {path}")
    print("\n" + verdict_table(effects))
    return path


def export(folder: ResultsFolder, cfg: SearchConfig) -> Path:
    """The search's Parquet tables again from the JSON Ray Tune wrote per trial, then the report."""
    try:
        records = records_from_folder(folder.path)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if not records:
        raise ConfigError(f"{folder.path} holds no trial folders (trial_*/params.json) to export")
    tables = search_tables(records, max_epochs=cfg.budget.max_epochs, top_k=cfg.budget.top_k)
    folder.write_tables(tables)
    print(f"{len(tables['trials'])} trials exported to {folder.path}")
    return report(folder, cfg)

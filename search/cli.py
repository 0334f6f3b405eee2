"""`tune-search`: run a search, re-run a saved config, or list the augmentations."""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import sys
import time
import traceback
from pathlib import Path

import optuna
import pandas as pd

from search.checks import check_resources, check_resumable, check_writable
from search.config import ConfigError, SearchConfig, load_config
from search.export import (
    baseline_summary,
    config_from_row,
    markdown_table,
    records_from_folder,
    records_from_results,
    write_exports,
    write_text,
)
from search.report import build_report
from search.results import ResultsFolder
from search.space import Space
from search.storage import prune_checkpoints
from search.studies import Study
from trainable.augment import describe
from trainable.data import DataError, DataSpec, Dataset, load_dataset
from trainable.models import ModelSpec, WeightsError, max_freeze_depth, pretrained_backbone
from trainable.trial import RunSpec, keep_weights_only

# flag -> dotted key in the space file
OVERRIDES = {
    "data": "data.source",
    "image_size": "data.image_size",
    "model": "model.name",
    "weights": "model.weights",
    "num_samples": "budget.num_samples",
    "max_epochs": "budget.max_epochs",
    "name": "run.name",
    "storage": "run.storage",
    "seed": "run.seed",
    "verbose": "run.verbose",
    "keep_checkpoints": "run.keep_checkpoints",
    "cpus_per_trial": "resources.cpus_per_trial",
    "gpus_per_trial": "resources.gpus_per_trial",
    "max_concurrent": "resources.max_concurrent",
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tune-search",
        description="Search augmentations, freeze depth and learning rate for fine-tuning an image classifier.",
        epilog="Also: `tune-search screen|ablate|export|report RESULTS_DIR`. --debug prints the traceback of a failure.",
    )
    p.add_argument("--space", metavar="FILE", help="YAML space file (see configs/default.yaml); defaults if omitted")
    p.add_argument("--list-augmentations", action="store_true", help="print the augmentation table and exit")
    p.add_argument("--config-from", metavar="PARQUET", help="re-run one saved config for the full budget")
    p.add_argument("--row", type=int, default=0, help="row of --config-from to re-run (default 0, the best)")
    p.add_argument("--resume", action="store_true", help="continue the interrupted search STORAGE/NAME")
    p.add_argument("--no-screen", action="store_true", help="skip the screening study after the search (see `screen`)")
    p.add_argument("--ablate", action="store_true", help="after the screen, ablate the best config (see `ablate`)")
    p.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray)")
    p.add_argument("--data", help="fashion-mnist, mnist, or an ImageFolder path")
    p.add_argument("--model", help="efficientnet_lite0 (bundled weights) or a torchvision model name")
    p.add_argument("--weights", help="auto (bundled / torch hub cache), none (random init), or a state_dict file")
    p.add_argument("--image-size", type=int)
    p.add_argument("--num-samples", type=int, help="trials, the three baselines included")
    p.add_argument("--max-epochs", type=int)
    p.add_argument("--name", help="experiment name: results go to STORAGE/NAME/")
    p.add_argument("--storage", help="results folder or a URI Ray understands")
    p.add_argument("--seed", type=int)
    p.add_argument("--verbose", action="store_true", default=None, help="show Ray's trial tables and worker logs")
    p.add_argument("--keep-checkpoints", action="store_true", default=None, help="keep every trial's checkpoint (default: the top_k search trials')")
    p.add_argument("--cpus-per-trial", type=float)
    p.add_argument("--gpus-per-trial", type=float)
    p.add_argument("--max-concurrent", type=int)
    return p


def _prepare(cfg: SearchConfig) -> tuple[Space, RunSpec, Dataset]:
    """Everything that can fail on bad input, done before Ray starts."""
    model = ModelSpec(cfg.model.name, cfg.model.weights)
    try:
        space = Space.resolve(cfg.space, max_freeze_depth(model.name))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    pretrained_backbone(model)
    spec = RunSpec(
        model=model,
        max_epochs=cfg.budget.max_epochs,
        seed=cfg.run.seed,
        balance=cfg.data.balance,
        oversample_to=cfg.data.oversample_to,
        precision=cfg.model.precision,
        fast_path=cfg.resources.fast_path,
        augment_kernel=cfg.resources.augment_kernel,
    )
    d = cfg.data
    data = load_dataset(DataSpec(d.source, d.image_size, d.train_size, d.val_size, d.val_fraction, cfg.run.seed))
    print(f"data: {data.origin}; {len(data.train)} train / {len(data.val)} val images, {data.num_classes} classes, {d.image_size} px")
    if data.skipped:
        shown = "".join(f"\n  {line}" for line in data.skipped[:10])
        more = f"\n  ... and {len(data.skipped) - 10} more (all listed in facts.json)" if len(data.skipped) > 10 else ""
        print(f"skipped {len(data.skipped)} files in {d.source}:{shown}{more}")
    return space, spec, data


def _facts(cfg: SearchConfig, space: Space, data: Dataset) -> dict:
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


def _print_outcome(tables: dict[str, pd.DataFrame], folder: Path, seconds: float, baselines: bool) -> None:
    trials, best = tables["trials"], tables["best_configs"]
    print(f"\n{len(trials)} trials in {seconds:.0f} s: " + ", ".join(f"{n} {s}" for s, n in trials["status"].value_counts().items()))
    if len(best):
        row = best.iloc[0]
        print("\nbest config:")
        config = config_from_row(row)
        for key in ("lr", "freeze_depth", "weight_decay", "batch_size", "label_smoothing"):
            print(f"  {key}: {config[key]:.4g}")
        augs = [f"{k[4:-9]} {v:.2f}" for k, v in config.items() if k.endswith("_strength")]
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
    if not verbose:  # trial errors are printed short by search.progress, with where the log is
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


def studies(study: Study, *, screen: bool, ablate: bool) -> None:
    """The designed studies after a search, then the analysis of every table and the report."""
    from search.studies import analyse, run_ablation, run_dose, run_screen

    if screen:
        run_screen(study)
        if study.cfg.dose.enabled:
            run_dose(study)
    if ablate:
        run_ablation(study)
    effects = analyse(study.folder, study.cfg, list(study.data.classes))
    report = build_report(study.folder.path)
    print("\n" + verdict_table(effects))
    trials, best = study.folder.read("trials"), study.folder.read("best_configs")
    if trials is not None and best is not None:
        print("\n" + markdown_table(baseline_summary(trials, best)))
    print(f"\nreport: {report}")


def _rerun_config(args: argparse.Namespace) -> dict | None:
    if not args.config_from:
        return None
    try:
        saved = pd.read_parquet(args.config_from)
    except Exception as exc:  # a missing or damaged file: pyarrow raises several kinds
        raise ConfigError(f"cannot read --config-from {args.config_from} as Parquet: {str(exc).splitlines()[0]}") from None
    if not 0 <= args.row < len(saved):
        raise ConfigError(f"--row {args.row} is out of range: {args.config_from} has rows 0..{len(saved) - 1}")
    try:
        return config_from_row(saved.iloc[args.row])
    except ValueError as exc:
        raise ConfigError(f"--config-from {args.config_from} row {args.row} {exc}") from None


def parse(argv: list[str]) -> tuple[argparse.Namespace, SearchConfig]:
    """The flags and the space file, validated: a config or a ConfigError (argparse exits 2
    on a malformed flag)."""
    args = build_parser().parse_args(argv)
    if args.row < 0:
        raise ConfigError(f"--row {args.row}: rows count from 0")
    overrides = {key: getattr(args, flag) for flag, key in OVERRIDES.items()}
    return args, load_config(args.space, overrides)


def run(args: argparse.Namespace, cfg: SearchConfig) -> int:
    rerun = _rerun_config(args)
    name = cfg.run.name
    if rerun is not None and not args.name:  # beside the search it came from: NAME-rowN
        name = f"{Path(args.config_from).resolve().parent.name or name}-row{args.row}"

    from search.storage import storage_uri
    from search.tuner import resources_line, resumable, resume_search, run_fixed, run_search

    storage = storage_uri(cfg.run.storage)
    # exports and the report are written locally; for a URI storage they are staged in
    # results/NAME and copied beside Ray's results at the end
    remote = "://" in storage
    folder = (Path("results") / name).resolve() if remote else Path(storage) / name
    check_resources(cfg, args.address)
    if args.resume:
        check_resumable(cfg, folder, resumable(cfg))
    space, spec, data = _prepare(cfg)
    if rerun is not None and not 0 <= rerun["freeze_depth"] <= space.max_depth:
        raise ConfigError(f"saved freeze_depth {rerun['freeze_depth']} does not fit {cfg.model.name} (0..{space.max_depth})")
    check_writable(folder, "results folder (run.storage / run.name)")
    write_text(cfg.dump(), folder / "config.yaml")
    ResultsFolder(folder).write_facts(_facts(cfg, space, data))
    with ray_session(args.address, cfg.run.verbose):
        print(resources_line(cfg, spec))
        started = time.time()
        if args.resume:
            results = resume_search(cfg, data, spec)
        elif rerun is None:
            results = run_search(cfg, data, spec, space, journal=ResultsFolder(folder).journal)
        else:
            results = run_fixed(cfg, data, spec, {**rerun, "baseline": ""}, name)
        elapsed = time.time() - started
        tables = write_exports(folder, records_from_results(results), max_epochs=cfg.budget.max_epochs, top_k=cfg.budget.top_k)
        if not remote and not cfg.run.keep_checkpoints:  # they served resume; the top_k's weights stay
            prune_checkpoints(folder, set(tables["best_configs"]["trial_id"]), slim=keep_weights_only)
        _print_outcome(tables, folder, elapsed, baselines=rerun is not None)
        if rerun is None:
            screen = cfg.screen.enabled and not args.no_screen
            study = Study(ResultsFolder(folder), cfg, space, spec, data, storage=storage, resume=args.resume)
            studies(study, screen=screen, ablate=args.ablate)
    if remote:
        publish(folder, f"{storage.rstrip('/')}/{name}")
    return 0


def publish(folder: Path, uri: str) -> None:
    """Copy the local exports and report to a storage URI (s3://, gs://, ...)."""
    import pyarrow.fs

    filesystem, path = pyarrow.fs.FileSystem.from_uri(uri)
    filesystem.create_dir(path, recursive=True)
    pyarrow.fs.copy_files(str(folder), path, destination_filesystem=filesystem)
    print(f"exports copied to {uri}")


def _results_args(command: str, description: str, argv: list[str], options=()) -> tuple[argparse.Namespace, Path]:
    p = argparse.ArgumentParser(prog=f"tune-search {command}", description=description)
    p.add_argument("results", help="a results folder (STORAGE/NAME) with its config.yaml")
    for flag, kind in options:
        if kind is bool:
            p.add_argument(flag, action="store_true", help="continue this study where a killed run left it")
        else:
            p.add_argument(flag, type=kind)
    args = p.parse_args(argv)
    return args, Path(args.results).resolve()


def _results_file(folder: Path, name: str) -> Path:
    path = folder / name
    if not path.is_file():
        raise ConfigError(f"{folder} is not a tune-search results folder: {name} is missing")
    return path


def _study_command(command: str, description: str, argv: list[str], options, overrides) -> tuple[argparse.Namespace, SearchConfig, ResultsFolder]:
    args, path = _results_args(command, description, argv, (*options, ("--address", str)))
    cfg = load_config(_results_file(path, "config.yaml"), overrides(args))
    folder = ResultsFolder(path)
    folder.require("trials", "best_configs")
    check_resources(cfg, args.address)
    check_writable(path.parent, "the folder beside the results (where the study's runs go)")
    return args, cfg, folder


def run_screen_command(argv: list[str]) -> int:
    from search.tuner import resources_line

    options = (("--seeds", int), ("--strength", float), ("--base", str), ("--resume", bool))
    overrides = lambda a: {"screen.seeds": a.seeds, "screen.strength": a.strength, "screen.base": a.base}  # noqa: E731
    args, cfg, folder = _study_command("screen", "Screen the augmentations of a finished search.", argv, options, overrides)
    space, spec, data = _prepare(cfg)
    with ray_session(args.address, cfg.run.verbose):  # the runs land beside the folder, never in a storage named inside it
        print(resources_line(cfg, spec))
        studies(Study(folder, cfg, space, spec, data, storage=str(folder.path.parent), resume=args.resume), screen=True, ablate=False)
    return 0


def run_ablate(argv: list[str]) -> int:
    from search.tuner import resources_line

    options = (("--seeds", int), ("--strength", float), ("--resume", bool))
    overrides = lambda a: {"ablation.seeds": a.seeds, "ablation.strength": a.strength}  # noqa: E731
    args, cfg, folder = _study_command("ablate", "Ablate the best config of a finished search.", argv, options, overrides)
    space, spec, data = _prepare(cfg)
    with ray_session(args.address, cfg.run.verbose):
        print(resources_line(cfg, spec))
        studies(Study(folder, cfg, space, spec, data, storage=str(folder.path.parent), resume=args.resume), screen=False, ablate=True)
    return 0


def run_report(argv: list[str]) -> int:
    _, path = _results_args("report", "Rebuild the analysis tables and report.md from the Parquet files.", argv)
    cfg = load_config(_results_file(path, "config.yaml"))
    ResultsFolder(path).require("trials", "history")
    from search.studies import analyse

    effects = analyse(ResultsFolder(path), cfg)
    print(f"report: {build_report(path)}")
    print("\n" + verdict_table(effects))
    return 0


def run_export(argv: list[str]) -> int:
    _, folder = _results_args("export", "Rebuild the Parquet exports from the JSON Ray Tune wrote per trial.", argv)
    cfg = load_config(_results_file(folder, "config.yaml"))
    try:
        records = records_from_folder(folder)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if not records:
        raise ConfigError(f"{folder} holds no trial folders (trial_*/params.json) to export")
    tables = write_exports(folder, records, max_epochs=cfg.budget.max_epochs, top_k=cfg.budget.top_k)
    print(f"{len(tables['trials'])} trials exported to {folder}")
    return run_report([str(folder)])


COMMANDS = {"screen": run_screen_command, "ablate": run_ablate, "export": run_export, "report": run_report}


def main(argv: list[str] | None = None) -> int:
    """Exit 0 on success, 2 on bad input (one message naming the key, file or folder),
    1 on any other failure (one line; --debug shows the traceback)."""
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        if argv and argv[0] in COMMANDS:
            return COMMANDS[argv[0]](argv[1:])
        args, cfg = parse(argv)
        if args.list_augmentations:
            print(describe())
            return 0
        return run(args, cfg)
    except (ConfigError, DataError, WeightsError) as exc:
        if debug:
            traceback.print_exc()
        print(f"tune-search: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - the one place that turns any failure into one line
        if debug:
            traceback.print_exc()
        first = (str(exc).splitlines() or [""])[0]
        print(f"tune-search: error: {type(exc).__name__}: {first} (run again with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

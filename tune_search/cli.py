"""`tune-search`: the command line, a thin parser over `tune_search.pipeline`."""

from __future__ import annotations

import argparse
import shlex
import sys
import traceback
from pathlib import Path

import optuna
import pandas as pd

from tune_search import pipeline, runlog
from tune_search.config import ConfigError, SearchConfig, load_config
from tune_search.export import config_from_row
from tune_search.interrupt import Interrupted
from tune_search.location import RunLocation
from tune_search.studies import STUDIES, by_command
from tune_search.trainable.augment import describe, strengths_in
from tune_search.trainable.data import DataError
from tune_search.trainable.models import WeightsError

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


SEARCH_EPILOG = "A bare `tune-search [flags]` is `tune-search search [flags]`. --debug anywhere prints the traceback of a failure."


def describe_tables() -> str:
    """Every table a run can write, from the declarations that write them (the search's and
    each study's), so a study added later is listed with no other change."""
    from tune_search.results import TABLES

    return "\n\n".join(f"{name}.parquet: {table.what}\n\n{table.markdown()}" for name, table in TABLES.items())


def add_search_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--space", metavar="FILE", help="YAML space file (see configs/default.yaml); defaults if omitted")
    p.add_argument("--list-augmentations", action="store_true", help="print the augmentation table (with --space, its declared entries too) and exit")
    p.add_argument("--list-tables", action="store_true", help="print every results table: what it holds, its columns, types and units; and exit")
    p.add_argument("--config-from", metavar="PARQUET", help="re-run one saved config for the full budget")
    p.add_argument("--row", type=int, help="row of --config-from to re-run (default 0, the best)")
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


RESUME_HELP = "continue this study where a killed run left it"
# the results commands that train nothing: command -> help
TABLE_COMMANDS = {
    "report": "rebuild the analysis tables and report.md from the Parquet files",
    "export": "rebuild the Parquet exports from the JSON Ray Tune wrote per trial, then the report",
}
RESULTS_COMMANDS = (*by_command, *TABLE_COMMANDS)


def build_parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="tune-search",
        description="Search augmentations, freeze depth and learning rate for fine-tuning an image classifier, then find out which augmentations hurt.",
        epilog=SEARCH_EPILOG,
    )
    commands = top.add_subparsers(dest="command", metavar="COMMAND")
    search = commands.add_parser(
        "search", help="a search, then the enabled studies: screen, focus, sweep, dose-response, confirm (the default)", epilog=SEARCH_EPILOG
    )
    add_search_flags(search)
    for study in STUDIES:
        if study.command is None:
            continue
        p = _results_parser(commands, study.command, study.help)
        for f in study.flags:
            if f.kind is list:
                p.add_argument(f.flag, nargs="+", metavar="MODEL", help=f.help)
            else:
                p.add_argument(f.flag, type=f.kind, help=f.help)
        p.add_argument("--resume", action="store_true", help=RESUME_HELP)
        p.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray)")
    for command, text in TABLE_COMMANDS.items():
        _results_parser(commands, command, text)
    return top


def _results_parser(commands, command: str, text: str) -> argparse.ArgumentParser:
    p = commands.add_parser(command, help=text, description=text[0].upper() + text[1:] + ".")
    p.add_argument("results", help="a results folder STORAGE/NAME with its config.yaml, local or a storage URI (s3://BUCKET/PATH/NAME)")
    return p


def _with_command(argv: list[str]) -> list[str]:
    """A bare flag list is the search command."""
    if argv and (argv[0] in RESULTS_COMMANDS or argv[0] in ("search", "-h", "--help")):
        return argv
    return ["search", *argv]


def _conflicts(args: argparse.Namespace) -> None:
    """Flags that cannot go together, refused rather than one silently dropped."""
    if args.config_from:
        for flag, given in (("--resume", args.resume), ("--ablate", args.ablate), ("--no-screen", args.no_screen)):
            if given:
                raise ConfigError(f"{flag} does not go with --config-from: a re-run trains one saved config, with no search to resume and no studies")
    elif args.row is not None:
        raise ConfigError("--row picks a row of --config-from; pass --config-from too")
    if args.row is not None and args.row < 0:
        raise ConfigError(f"--row {args.row}: rows count from 0")


def _rerun_config(args: argparse.Namespace) -> dict | None:
    if not args.config_from:
        return None
    row = args.row or 0
    try:
        saved = pd.read_parquet(args.config_from)
    except Exception as exc:  # a missing or damaged file: pyarrow raises several kinds
        raise ConfigError(f"cannot read --config-from {args.config_from} as Parquet: {str(exc).splitlines()[0]}") from None
    if not 0 <= row < len(saved):
        raise ConfigError(f"--row {row} is out of range: {args.config_from} has rows 0..{len(saved) - 1}")
    try:
        return config_from_row(saved.iloc[row])
    except ValueError as exc:
        raise ConfigError(f"--config-from {args.config_from} row {row} {exc}") from None


def parse(argv: list[str]) -> tuple[argparse.Namespace, SearchConfig]:
    """The search command's flags and the space file, validated: a config or a ConfigError
    (argparse exits 2 on a malformed flag)."""
    args = build_parser().parse_args(["search", *argv])
    _conflicts(args)
    overrides = {key: getattr(args, flag) for flag, key in OVERRIDES.items()}
    return args, load_config(args.space, overrides)


def run(args: argparse.Namespace, cfg: SearchConfig) -> int:
    rerun = _rerun_config(args)
    if rerun is not None:
        missing = [n for n in strengths_in(rerun) if n not in cfg.catalog]
        if missing:
            raise ConfigError(
                f"--config-from {args.config_from} row {args.row or 0} trains with {', '.join(missing)}, which the space file does not declare:"
                " pass the space file that declares them (recipe.yaml beside it does)"
            )
        name = args.name or f"{Path(args.config_from).resolve().parent.name or cfg.run.name}-row{args.row or 0}"  # beside the search it came from
        pipeline.rerun(cfg, rerun, name=name, address=args.address)
    else:
        studies = pipeline.default_studies(cfg, screen=not args.no_screen, ablate=args.ablate)
        pipeline.search(cfg, address=args.address, resume=args.resume, studies=studies)
    return 0


def _results(args: argparse.Namespace) -> tuple[RunLocation, SearchConfig]:
    """The run a command names (a remote one copied to its staging folder), and its config
    with the command's flags on top."""
    try:
        location = RunLocation.at(args.results)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    folder = pipeline.staged(location, trial_files=args.command == "export")
    if not folder.config.is_file():
        raise ConfigError(f"{folder.path} is not a tune-search results folder: {folder.config.name} is missing")
    flags = by_command[args.command].flags if args.command in by_command else ()
    overrides = {f.key: getattr(args, f.flag[2:].replace("-", "_")) for f in flags if f.key}
    return location, load_config(folder.config, overrides)


def run_results_command(args: argparse.Namespace) -> int:
    location, cfg = _results(args)
    if args.command in by_command:
        pipeline.study_of(location, cfg, args.command, address=args.address, resume=args.resume)
    elif args.command == "report":
        pipeline.report(location, cfg)
    else:
        pipeline.export(location, cfg)
    return 0


def interrupted_line(argv: list[str], phase: str | None) -> str:
    """What an interrupt left, and the exact command that continues it."""
    where = f" during the {phase}" if phase else ""
    if "--config-from" in argv or argv[0] in ("report", "export"):
        return f"interrupted{where}; run the same command again: tune-search {shlex.join(argv)}"
    command = ["tune-search", *argv[argv[0] == "search" :], *([] if "--resume" in argv else ["--resume"])]
    return f"interrupted{where}; every finished run is kept. Resume with: {shlex.join(command)}"


def main(argv: list[str] | None = None) -> int:
    """Exit 0 on success, 2 on bad input (one message naming the key, file or folder),
    130 when interrupted (Ctrl-C or SIGTERM: one line with the command that resumes),
    1 on any other failure (one line; --debug shows the traceback). What it prints once the
    results folder is known, and how it ended, go to that folder's console.log too."""
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    argv = _with_command([a for a in argv if a != "--debug"])
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with runlog.capturing():
        code, message = _outcome(argv, debug)
        if message:
            print(f"tune-search: {message}", file=sys.stderr)
        runlog.end(code, message)
    return code


def _outcome(argv: list[str], debug: bool) -> tuple[int, str]:
    try:
        if argv[0] != "search":
            args = build_parser().parse_args(argv)
            return run_results_command(args), ""
        args, cfg = parse(argv[1:])
        if args.list_augmentations:
            print(describe(cfg.catalog))  # with --space, its declared entries too
            return 0, ""
        if args.list_tables:
            print(describe_tables())
            return 0, ""
        return run(args, cfg), ""
    except (Interrupted, KeyboardInterrupt) as exc:
        return 130, interrupted_line(argv, getattr(exc, "phase", None))
    except (ConfigError, DataError, WeightsError) as exc:
        if debug:
            traceback.print_exc()
        return 2, f"error: {exc}"
    except Exception as exc:  # noqa: BLE001 - the one place that turns any failure into one line
        if debug:
            traceback.print_exc()
        first = (str(exc).splitlines() or [""])[0]
        return 1, f"error: {type(exc).__name__}: {first} (run again with --debug for the traceback)"


if __name__ == "__main__":
    sys.exit(main())

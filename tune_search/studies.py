"""The designed studies that follow a search (screen, dose-response, ablation, explain), and the
analysis that turns a results folder's runs tables into effects.parquet and the report.

Each study is a list of fixed configs (`tune_search.design`) trained at full budget by one Ray
Tune runner (`tune_search.tuner.run_study`) into a runs table, then analysed by pure functions
(`tune_search.screen`, `tune_search.ablation`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from tune_search.ablation import paired_effects
from tune_search.analysis import search_effects
from tune_search.config import MOTIVATING, ConfigError, SearchConfig
from tune_search.design import (
    BUNDLE,
    CLEAN,
    ablation_configs,
    base_settings,
    depth_cell,
    dose_configs,
    explain_configs,
    screen_configs,
    screening_design,
)
from tune_search.explain import cells, crop_runs, explain_table
from tune_search.export import config_from_row, runs_table
from tune_search.results import ResultsFolder
from tune_search.storage import prune_checkpoints
from tune_search.screen import (
    detectable_effect,
    diversity,
    dose_curve,
    dose_table,
    effects_table,
    harmful_above,
    main_effects,
    per_class_effects,
    screen_effects,
    screened,
)
from tune_search.space import BASELINES, Space
from tune_search.trainable.data import Dataset
from tune_search.trainable.models import ModelSpec, parameter_count
from tune_search.trainable.recipes import pretraining_recipe
from tune_search.trainable.trial import TrialSpec, TrialSettings, affinity, crop_sensitivity, load_checkpoint, spec_for


@dataclass(frozen=True)
class Study:
    """What the designed studies of one results folder train with."""

    folder: ResultsFolder
    cfg: SearchConfig
    space: Space
    spec: TrialSpec
    data: Dataset
    storage: str  # where Ray's runs of each study go (STORAGE/NAME-screen, ...)
    resume: bool = False  # continue the studies a killed driver left unfinished


def study_base(folder: ResultsFolder, base: str) -> dict[str, Any]:
    """The non-augmentation settings a study runs at: the best config's, or the "all
    layers" baseline's."""
    if base == "best":
        best = folder.read("best_configs")
        if best is None or best.empty:
            raise ConfigError(f"{folder.file('best_configs')} has no successful trial to study")
        return base_settings(config_from_row(best.iloc[0]))
    trials = folder.read("trials")
    match = trials[(trials["baseline"] == BASELINES[1]) & trials["status"].isin(["completed", "early_stopped"])] if trials is not None else []
    if not len(match):
        raise ConfigError(f"screen.base: baseline needs the search's '{BASELINES[1]}' baseline, which {folder.path} lacks")
    return base_settings(config_from_row(match.iloc[0]))


def screen_strengths(cfg: SearchConfig, space: Space) -> dict[str, float]:
    """Each searched augmentation's strength in the screen: screen.strength (one value or
    one per augmentation), else the baselines' strength."""
    chosen = cfg.screen.strength
    default = chosen if isinstance(chosen, float) else space.reference_strength
    named = chosen if isinstance(chosen, dict) else {}
    return {n: float(named.get(n, default)) for n in space.augmentations}


def _estimate(folder: ResultsFolder, runs: list[tuple[int, float]], slots: int) -> str:
    """`runs` as (freeze depth, epochs of the search's images), timed by the search's own
    trials at that depth (or at any depth when none ran there)."""
    trials = folder.read("trials")
    if trials is None:
        return ""
    done = trials[(trials["epochs"] > 0) & trials["status"].isin(["completed", "early_stopped"])]
    if not len(done):
        return ""
    per_epoch = done["time_s"] / done["epochs"]
    overall = float(per_epoch.median())
    by_depth = per_epoch.groupby(done["freeze_depth"]).median()
    seconds = sum(float(by_depth.get(depth, overall)) * epochs for depth, epochs in runs)
    return f", about {math.ceil(seconds / max(slots, 1) / 60)} min on {slots} slot{'s' * (slots != 1)}"


def _slots(cfg: SearchConfig) -> int:
    import ray

    from tune_search.tuner import trial_resources

    cpus, gpus = trial_resources(cfg.resources, ray.cluster_resources())
    by_cpu = int(ray.cluster_resources().get("CPU", 1) // cpus)
    by_gpu = int(ray.cluster_resources().get("GPU", 0) // gpus) if gpus else by_cpu
    return max(1, min(by_cpu, by_gpu, cfg.resources.max_concurrent or by_cpu))


def _train(study: Study, configs: list[dict], suffix: str):
    from tune_search.tuner import run_study

    name = f"{study.folder.path.name}-{suffix}"
    results = run_study(study.cfg, study.data, study.spec, configs, name=name, storage=study.storage, resume=study.resume)
    runs = runs_table(results)
    failed = len(configs) - len(runs)
    if failed:
        print(f"{name}: {failed} of {len(configs)} runs failed; see Ray's log above")
    return results, runs


def _prune(study: Study, *suffixes: str) -> None:
    """A finished study's checkpoints served its resume; they go unless run.keep_checkpoints."""
    if study.cfg.run.keep_checkpoints or "://" in study.storage:
        return
    for suffix in suffixes:
        prune_checkpoints(Path(study.storage) / f"{study.folder.path.name}-{suffix}")


def _clean_affinity(results, spec: TrialSpec, data: Dataset, strengths: dict[str, float]) -> dict[str, float]:
    for result in results:
        config = result.config["run"]
        if config["label"] == CLEAN and result.error is None and result.checkpoint is not None:
            with result.checkpoint.as_directory() as path:
                state = load_checkpoint(path)
            return affinity(TrialSettings.from_config(config), spec, data, state, strengths)
    return {}


def run_screen(study: Study) -> pd.DataFrame:
    """Train the screen, replicated over seeds as screen.seeds says, measure affinity on its
    clean run, and write screen.parquet."""
    folder, cfg, space, spec, data = study.folder, study.cfg, study.space, study.spec, study.data
    base = study_base(folder, cfg.screen.base)
    strengths = screen_strengths(cfg, space)
    names = list(strengths)
    design_runs = len(screening_design(len(names)))
    fixed = cfg.screen.seeds != "auto"
    replicates = cfg.screen.seeds if fixed else 1
    shown = ", ".join(f"{k} {v:.3g}" for k, v in base.items())
    estimate = _estimate(folder, [(int(base["freeze_depth"]), cfg.budget.max_epochs)] * (design_runs * replicates + 1), _slots(cfg))
    print(
        f"screen: {design_runs} runs per seed (folded Plackett-Burman over {len(names)} augmentations, resolution IV) "
        f"+ 1 without augmentation, {cfg.budget.max_epochs} epochs each, at {cfg.screen.base} settings ({shown}); "
        + (f"{replicates} seed{'s' * (replicates != 1)}" if fixed else f"seeds added until a {100 * cfg.screen.detectable:.1f}-point harm is detectable (at most {cfg.screen.max_seeds})")
        + estimate
        + (" for the first" if estimate and not fixed else "")
    )
    configs = screen_configs(base, strengths, list(range(replicates)))
    results, runs = _train(study, configs, "screen")
    measured = _clean_affinity(results, spec, data, strengths)
    for seed in () if fixed else range(1, cfg.screen.max_seeds):
        fit = main_effects(runs, names)
        reach = max(detectable_effect(se, fit.df, len(names)) for se in fit.se)
        print(f"screen: {seed} seed(s), residual SD {100 * fit.residual_sd:.2f} points, detectable harm {100 * reach:.2f} points")
        if reach <= cfg.screen.detectable:
            break
        more = screen_configs(base, strengths, [seed], clean_seed=None)
        _, extra = _train(study, more, f"screen-seed{seed}")
        runs = pd.concat([runs, extra], ignore_index=True)
    for name, value in measured.items():
        runs[f"affinity_{name}"] = runs["label"].eq(CLEAN).map({True: value, False: math.nan})
    folder.write("screen", runs)
    _prune(study, "screen", *(f"screen-seed{seed}" for seed in range(1, cfg.screen.max_seeds)))
    return runs


def run_dose(study: Study) -> pd.DataFrame | None:
    """Re-run each augmentation the screen calls harmful alone at dose.strengths, with
    dose.seeds seeds, at the screen's settings; write dose_runs.parquet."""
    folder, cfg, space = study.folder, study.cfg, study.space
    screen = folder.read("screen")
    if screen is None:
        return None
    effects = screen_effects(screen, screened(screen, list(space.augmentations)))
    harmful = list(effects[effects["verdict"] == "hurts"].sort_values("effect")["augmentation"])
    if not harmful:
        return None
    if len(harmful) > cfg.dose.max_augmentations:
        print(f"dose-response: the {cfg.dose.max_augmentations} most harmful of {len(harmful)} (dose.max_augmentations)")
        harmful = harmful[: cfg.dose.max_augmentations]
    base = base_settings(config_from_row(screen.iloc[0]))
    configs = dose_configs(base, harmful, cfg.dose.strengths, list(range(cfg.dose.seeds)), list(space.augmentations))
    levels = ", ".join(f"{s:g}" for s in cfg.dose.strengths)
    print(f"dose-response: {len(configs)} runs ({', '.join(harmful)} at strengths {levels}, and none on; {cfg.dose.seeds} seed{'s' * (cfg.dose.seeds != 1)})")
    _, runs = _train(study, configs, "dose")
    folder.write("dose_runs", runs)
    _prune(study, "dose")
    return runs


def run_ablation(study: Study) -> pd.DataFrame:
    """The best config and each augmentation switched the other way, ablation.seeds times;
    write ablation_runs.parquet."""
    folder, cfg, space = study.folder, study.cfg, study.space
    best = folder.read("best_configs")
    if best is None or best.empty:
        raise ConfigError(f"{folder.file('best_configs')} has no successful trial to ablate")
    augs = list(space.augmentations)
    configs = ablation_configs(config_from_row(best.iloc[0]), augs, strength=cfg.ablation.strength, seeds=cfg.ablation.seeds)
    print(f"ablation: {len(configs)} runs of {cfg.budget.max_epochs} epochs (the best config and {len(augs)} switched augmentations, {cfg.ablation.seeds} seed{'s' * (cfg.ablation.seeds != 1)} each)")
    _, runs = _train(study, configs, "ablation")
    if runs.empty:
        raise RuntimeError("every ablation run failed; see Ray's log above")
    folder.write("ablation_runs", runs)
    _prune(study, "ablation")
    return runs


def explain_bundle(folder: ResultsFolder, cfg: SearchConfig, space: Space) -> dict[str, float]:
    """The augmentations the explain study switches together, at their strengths:
    explain.bundle, else the screen's harmful set, else the thread's six."""
    names: list[str] = list(cfg.explain.bundle) if cfg.explain.bundle != "auto" else []
    screen = folder.read("screen")
    if not names and screen is not None:
        effects = screen_effects(screen, screened(screen, list(space.augmentations)))
        names = list(effects.loc[effects["verdict"] == "hurts", "augmentation"])
    names = names or list(MOTIVATING)
    strengths = screen_strengths(cfg, space)
    return {n: strengths.get(n, space.reference_strength) for n in names}


def oversample_target(cfg: SearchConfig, data: Dataset) -> int:
    """explain.oversample_to, else 4x the mean class size (the thread: 60 a class -> 256)."""
    return cfg.explain.oversample_to or 4 * math.ceil(len(data.train) / max(data.num_classes, 1))


def _cell_params(spec: TrialSpec, models: list[tuple[str, str]]) -> dict[str, int]:
    sizes = {depth_cell(0): parameter_count(spec.model.name)}
    return sizes | {f"model {name}": parameter_count(name) for name, _ in models if name != spec.model.name}


def run_explain(study: Study) -> pd.DataFrame:
    """Train the explain study at the screen's base settings, measure how crops change the
    clean model's predictions, and write explain_runs.parquet and crop_sensitivity.parquet."""
    folder, cfg, space, spec, data = study.folder, study.cfg, study.space, study.spec, study.data
    base = study_base(folder, cfg.screen.base)
    bundle = explain_bundle(folder, cfg, space)
    depth = int(base["freeze_depth"])
    depths = sorted({0, depth, space.max_depth})
    models = [(m.name, m.weights) for m in cfg.explain.models]
    oversample_to = oversample_target(cfg, data)
    configs = explain_configs(
        base, bundle, list(space.augmentations), model=(spec.model.name, spec.model.weights), depths=depths,
        seeds=list(range(cfg.explain.seeds)), scratch_epochs=cfg.explain.scratch_epochs, models=models,
        oversample_to=oversample_to, crop_strengths=cfg.explain.crop_strengths,
    )  # fmt: skip
    epoch_images = len(data.train)
    timed = [
        (int(c["freeze_depth"]), (c["max_epochs"] or cfg.budget.max_epochs) * (max(oversample_to * data.num_classes, epoch_images) / epoch_images if c["oversample_to"] else 1))
        for c in configs
    ]
    shown = ", ".join(f"{n} {s:.2g}" for n, s in bundle.items())
    print(
        f"explain: {len(configs)} runs ({cfg.explain.seeds} seeds): the bundle ({shown}) off and on at freeze depths "
        f"{', '.join(map(str, depths))}, from scratch, " + "".join(f"on {n}, " for n, _ in models if n != spec.model.name)
        + f"with every class oversampled to {oversample_to}; crop alone at {', '.join(f'{s:g}' for s in cfg.explain.crop_strengths)}"
        + _estimate(folder, timed, _slots(cfg))
    )
    results, runs = _train(study, configs, "explain")
    if runs.empty:
        raise RuntimeError("every explain run failed; see Ray's log above")
    runs["params"] = runs["label"].map(_cell_params(spec, models)).astype("Int64")
    folder.write("explain_runs", runs)
    reference = depth_cell(depth)
    for result in results:
        config = result.config["run"]
        if config["label"] == reference and not config[BUNDLE] and config["seed"] == 0 and result.error is None and result.checkpoint is not None:
            with result.checkpoint.as_directory() as path:
                state = load_checkpoint(path)
            folder.write("crop_sensitivity", pd.DataFrame(crop_sensitivity(TrialSettings.from_config(config), spec_for(spec, config), data, state)))
            break
    _prune(study, "explain")
    return runs


def _known_classes(folder: ResultsFolder) -> list[str] | None:
    per_class = folder.read("per_class")
    return list(dict.fromkeys(per_class["class"])) if per_class is not None and len(per_class) else None


def analyse(folder: ResultsFolder, cfg: SearchConfig, classes: list[str] | None = None) -> pd.DataFrame:
    """Every analysis table from the runs tables present, without training: effects.parquet,
    per_class.parquet, affinity.parquet, dose.parquet and ablation.parquet."""
    names = list(cfg.space.augmentation_names)
    search = None
    trials, history = folder.read("trials"), folder.read("history")
    if trials is not None and history is not None:
        try:
            search = search_effects(trials, history, names, seed=cfg.run.seed)
        except ValueError as exc:
            print(f"no search effects: {exc}")
    screen_runs, screen_table = folder.read("screen"), None
    if screen_runs is not None:
        screened_names = screened(screen_runs, names)
        screen_table = screen_effects(screen_runs, screened_names)
        classes = classes or _known_classes(folder) or [str(i) for i in range(len(screen_runs["per_class_top1"].iloc[0]))]
        folder.write("per_class", per_class_effects(screen_runs, screened_names, classes))
        table = diversity(screen_runs, screened_names)
        table.insert(1, "strength", screen_table["strength"].to_numpy())
        clean = screen_runs[screen_runs["label"] == CLEAN]
        table.insert(2, "affinity", [float(clean[f"affinity_{n}"].iloc[0]) if f"affinity_{n}" in clean and len(clean) else math.nan for n in screened_names])
        folder.write("affinity", table)
    harmful = {}
    dose_runs = folder.read("dose_runs")
    if dose_runs is not None:
        dosed = [n for n in names if (dose_runs["label"] == n).any()]
        folder.write("dose", dose_table(dose_runs, dosed))
        harmful = {n: harmful_above(dose_curve(dose_runs, n), cfg.dose.threshold, top=max(cfg.dose.strengths)) for n in dosed}
    effects = effects_table(screen_table, search, names, harmful)
    folder.write("effects", effects)
    ablation_runs = folder.read("ablation_runs")
    if ablation_runs is not None:
        folder.write("ablation", paired_effects(ablation_runs, names, effects))
    explain_runs = folder.read("explain_runs")
    if explain_runs is not None:
        analyse_explain(folder, cfg, explain_runs, screen_runs)
    return effects


def analyse_explain(folder: ResultsFolder, cfg: SearchConfig, runs: pd.DataFrame, screen: pd.DataFrame | None) -> None:
    """explain.parquet (one row per explanation tested), explain_cells.parquet (the bundle's
    effect per cell) and crop's dose-response beside them."""
    recipe = pretraining_recipe(ModelSpec(name=cfg.model.name, weights=cfg.model.weights))
    names = screened(screen, list(cfg.space.augmentation_names)) if screen is not None else []
    params = runs.dropna(subset=["params"]).groupby("label")["params"].first().astype(int).to_dict() if "params" in runs else {}
    max_depth = int(runs.loc[runs["label"].str.startswith("depth "), "freeze_depth"].max())
    table = explain_table(
        runs, max_depth=max_depth, screen=screen, screened=names, params=params, negligible=cfg.explain.negligible,
        recipe=None if recipe is None else (recipe.augmentations, recipe.source),
    )  # fmt: skip
    folder.write("explain", table)
    folder.write("explain_cells", cells(runs))
    crop = crop_runs(runs)
    if len(crop):
        folder.write("explain_crop", dose_table(crop, ["crop"]))

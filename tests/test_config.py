from pathlib import Path

import pytest

from tune_search.config import ConfigError, SearchConfig, load_config

DEFAULT = Path(__file__).parents[1] / "configs" / "default.yaml"


def write(tmp_path, text):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return path


def test_default_file_states_the_built_in_defaults():
    assert load_config(DEFAULT) == SearchConfig()


def test_flags_override_the_file(tmp_path):
    path = write(tmp_path, "budget: {num_samples: 7, max_epochs: 3}\nrun: {seed: 4}\n")
    cfg = load_config(path, {"budget.num_samples": 11, "run.seed": None, "model.name": "resnet18"})
    assert cfg.budget.num_samples == 11 and cfg.budget.max_epochs == 3 and cfg.run.seed == 4
    assert cfg.model.name == "resnet18"


def test_ranges_and_fixed_values(tmp_path):
    cfg = load_config(write(tmp_path, "space: {lr: 0.003, weight_decay: [1.0e-5, 1.0e-3], batch_size: [32, 64]}"))
    assert cfg.space.lr == 0.003 and cfg.space.weight_decay == (1e-5, 1e-3) and cfg.space.batch_size == (32, 64)
    assert cfg.space.augmentation_names[0] == "crop"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("budget: {num_trials: 3}", r"unknown key 'budget.num_trials'; valid keys here: num_samples, max_epochs"),
        ("sapce: {}", r"unknown key 'sapce'; valid keys here: data, model, space"),
        ("space: {lr: [0.1, 0.001]}", r"lr range \[0.1, 0.001\] is reversed"),
        ("space: {augmentations: [hflip, mixup]}", r"unknown augmentation 'mixup'; valid: all, or a list of crop, hflip.* and entries you declare"),
        ("data: {balance: smote}", r"data.balance: Input should be 'none', 'oversample' or 'weighted'"),
        ("model: {name: vgg11}", r"model.name: unknown model 'vgg11'; valid models: efficientnet_lite0"),
        ("budget: {max_epochs: 0}", r"budget.max_epochs: Input should be greater than or equal to 1"),
        ("budget: {max_epochs: 2, grace_period: 3}", r"grace_period 3 exceeds max_epochs 2"),
        ("space: {strength: [0.2, 1.5]}", r"strength range \[0.2, 1.5\] must lie within \[0, 1\]"),
        ("resources: {cpus_per_trial: two}", r"resources.cpus_per_trial: Input should be a valid number"),
        ("- just\n- a list", r"must be a mapping of sections"),
    ],
)
def test_bad_space_files_name_the_key_and_what_is_allowed(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=expected) as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_missing_space_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="cannot read space file .*nope.yaml"):
        load_config(tmp_path / "nope.yaml")


def test_no_code_runs_from_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "run: !!python/object/apply:os.system ['echo hi']"))


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(write(tmp_path, "space: {lr: [1.0e-4, 1.0e-2], freeze_depth: [2, max]}"))
    assert load_config(write(tmp_path, cfg.dump())) == cfg


def test_screen_and_dose_sections(tmp_path):
    cfg = load_config(
        write(tmp_path, "space: {augmentations: [hflip, blur]}\nscreen: {base: baseline, strength: {blur: 0.3}, seeds: 2}\ndose: {strengths: [1.0, 0.25, 0.5]}")
    )
    assert cfg.screen.base == "baseline" and cfg.screen.strength == {"blur": 0.3} and cfg.screen.seeds == 2
    assert cfg.dose.strengths == (0.25, 0.5, 1.0)
    for bad, says in [
        ("screen: {base: worst}", "screen.base"),
        ("screen: {strength: 0}", "screen.strength"),
        ("space: {augmentations: [hflip]}\nscreen: {strength: {blur: 0.5}}", "does not search"),
        ("screen: {seeds: many}", "screen.seeds"),
        ("dose: {strengths: [0.5, 0.5]}", "at least two different strengths"),
        ("dose: {seeds: 1}", "dose.seeds"),
    ]:
        with pytest.raises(ConfigError, match=says):
            load_config(write(tmp_path, bad))


def _alias_bomb(depth: int = 10) -> str:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, depth)]
    return "\n".join([*lines, f"run: {{name: *a{depth - 1}}}"]) + "\n"


@pytest.mark.parametrize(
    "text, expected",
    [
        (_alias_bomb(), r"expands to 2\.\d+e\+10 values once its aliases \(\*name\) are expanded; at most 100,000"),
        ("space: {augmentations: " + "[" * 5000 + "]" * 5000 + "}\n", r"nests deeper than 32 levels \(line 1\)"),
    ],
)
def test_yaml_that_expands_or_nests_without_bound_is_refused_at_once(tmp_path, text, expected):
    import time

    path = tmp_path / "space.yaml"
    path.write_text(text)
    assert path.stat().st_size < 11_000
    started = time.perf_counter()
    with pytest.raises(ConfigError, match=expected):
        load_config(path)
    assert time.perf_counter() - started < 0.5

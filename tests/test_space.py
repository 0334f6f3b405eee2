import optuna
import pytest

from tune_search.constants import BASELINES, MOTIVATING
from tune_search.sections import SpaceConfig
from tune_search.space import Space

optuna.logging.set_verbosity(optuna.logging.WARNING)


def space(**overrides) -> Space:
    return Space.resolve(SpaceConfig(**overrides), max_depth=9)


def sample(space: Space, n: int, seed: int = 0) -> list[dict]:
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
    out = []
    for i in range(n):
        trial = study.ask()
        fixed = space(trial)
        out.append({**trial.params, **fixed})
        study.tell(trial, float(i % 3))
    return out


def test_strength_is_declared_only_when_its_switch_is_on():
    for params in sample(space(), 40):
        for name in space().augmentations:
            assert (f"aug_{name}_strength" in params) == params[f"aug_{name}"]
        assert 1e-4 <= params["lr"] <= 1e-2 and 0 <= params["freeze_depth"] <= 9


def test_fixed_values_are_returned_not_searched():
    s = space(lr=0.01, freeze_depth="max", batch_size=32, augmentations=("hflip",))
    study = optuna.create_study()
    trial = study.ask()
    fixed = s(trial)
    assert fixed == {"lr": 0.01, "freeze_depth": 9, "weight_decay": 0.0, "label_smoothing": 0.0, "batch_size": 32, "baseline": ""}
    assert set(trial.params) <= {"aug_hflip", "aug_hflip_strength"}


def test_searched_extras_have_their_distributions():
    s = space(weight_decay=(1e-5, 1e-2), batch_size=(32, 64, 128), label_smoothing=(0.0, 0.2))
    study = optuna.create_study()
    trial = study.ask()
    s(trial)
    d = trial.distributions
    assert d["lr"].log and d["weight_decay"].log and not d["label_smoothing"].log
    assert d["batch_size"].choices == (32, 64, 128)
    assert d["freeze_depth"].low == 0 and d["freeze_depth"].high == 9


def test_tpe_is_reproducible_with_a_seed():
    assert sample(space(), 15, seed=3) == sample(space(), 15, seed=3)
    assert sample(space(), 15, seed=3) != sample(space(), 15, seed=4)


def test_baselines_are_enqueued_as_the_motivating_experiment():
    s = space()
    study = optuna.create_study()
    for name, params in s.baseline_points():
        study.enqueue_trial(params, user_attrs={"baseline": name})
    configs = []
    for _ in BASELINES:
        trial = study.ask()
        fixed = s(trial)
        configs.append({**trial.params, **fixed})
    head, full, aug = configs
    assert [c["baseline"] for c in configs] == list(BASELINES)
    assert head["freeze_depth"] == 9 and full["freeze_depth"] == 0 and aug["freeze_depth"] == 0
    assert not any(head[f"aug_{n}"] or full[f"aug_{n}"] for n in s.augmentations)
    assert {n for n in s.augmentations if aug[f"aug_{n}"]} == set(MOTIVATING)
    assert all(aug[f"aug_{n}_strength"] == 0.5 for n in MOTIVATING)
    assert head["lr"] == full["lr"] == aug["lr"] == pytest.approx(1e-3)


def test_freeze_depth_beyond_the_model_is_refused():
    with pytest.raises(ValueError, match="depths 0..9"):
        space(freeze_depth=(0, 12))


@pytest.mark.parametrize(
    ("freeze_depth", "ran", "why"),
    [
        ((0, "max"), list(BASELINES), ""),
        (7, [], "space.freeze_depth 7 excludes "),
        ((2, "max"), [BASELINES[0]], "space.freeze_depth [2, 9] excludes 0, all layers training"),
        ((0, 5), list(BASELINES[1:]), "space.freeze_depth [0, 5] excludes 9"),
        ("max", [BASELINES[0]], "excludes 0"),
    ],
)
def test_a_baseline_runs_as_defined_or_is_left_out_saying_why(freeze_depth, ran, why):
    resolved = space(freeze_depth=freeze_depth)
    points = dict(resolved.baseline_points())
    assert list(points) == ran
    assert all(p["freeze_depth"] == (9 if name == BASELINES[0] else 0) for name, p in points.items() if "freeze_depth" in p)
    left_out = dict(resolved.baselines_left_out())
    assert set(left_out) == set(BASELINES) - set(ran) and all(why in text for text in left_out.values())

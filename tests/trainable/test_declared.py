"""Augmentations declared by torchvision v2 class name: every bad entry refused naming the
entry and the key, strength 0 and off the identity, the parameters scaled as declared, and the
entries running beside the built-ins' batch forms."""

import math

import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tune_search.cli import main
from tune_search.config import ConfigError, load_config
from tune_search.results import TABLES
from tune_search.trainable import declared as D
from tune_search.trainable.augment import NAMES, build_pipeline, describe, names_in, strengths_in

EXAMPLES = {
    "perspective": {"transform": "RandomPerspective", "at_full": {"distortion_scale": 0.6, "p": 1.0}, "scales": {"distortion_scale": 0.0}},
    "invert": {"transform": "RandomInvert", "at_full": {"p": 0.5}, "scales": {"p": 0.0}},
    "posterize": {"transform": "RandomPosterize", "at_full": {"bits": 3, "p": 1.0}, "scales": {"bits": 8}},
    "elastic": {"transform": "ElasticTransform", "at_full": {"alpha": 40.0, "sigma": 4.0}, "scales": {"alpha": 0.0}},
    "jpeg": {"transform": "JPEG", "at_full": {"quality": [20, 100]}},
    "trivial": {"transform": "TrivialAugmentWide"},
}


def declarations(side: int = 32) -> tuple[D.Declaration, ...]:
    out = tuple(D.declare(name, entry) for name, entry in EXAMPLES.items())
    for d in out:
        D.check_on_images(d, side)
    return out


@pytest.mark.parametrize(
    ("name", "entry", "expected"),
    [
        ("persp", {"transform": "RandomPerspectiv"}, r"'persp', transform: 'RandomPerspectiv' is not .* did you mean RandomPerspective"),
        ("lam", {"transform": "Lambda", "at_full": {"lambd": "print"}}, r"'lam', transform: Lambda is not an augmentation of one image"),
        ("mix", {"transform": "MixUp"}, r"'mix', transform: MixUp is not an augmentation of one image"),
        ("inv", {"transform": "RandomInvert", "at_full": {"q": 0.5}}, r"'inv', at_full.q: RandomInvert takes no parameter 'q'; it takes p"),
        ("inv", {"transform": "RandomInvert", "at_full": {"p": 1.5}}, r"'inv', at_full: RandomInvert refuses these values .*interval \[0.0, 1.0\]"),
        ("inv", {"transform": "RandomInvert", "at_full": {"p": {"a": 1}}}, r"'inv', at_full.p: values are numbers, booleans, strings, null"),
        ("inv", {"transform": "RandomInvert", "at_full": {"p": 0.5}, "scales": {"p": "none"}}, r"'inv', scales.p: a scaled parameter is a number"),
        ("inv", {"transform": "RandomInvert", "scales": {"p": 0.0}}, r"'inv', scales.p: give its value at strength 1 under at_full"),
        ("crop", {"transform": "RandomInvert"}, r"'crop': the name is a built-in augmentation's"),
        ("Bad-Name", {"transform": "RandomInvert"}, r"a declared name is lower-case"),
        ("inv", {"transform": "RandomInvert", "strength": 1}, r"'inv': unknown key 'strength'; valid keys: transform, at_full, scales"),
        (
            "jit",
            {"transform": "JPEG", "at_full": {"quality": [20, 100]}, "scales": {"quality": 100}},
            r"'jit', scales.quality: the identity value 100 must have",
        ),
        ("crop2", {"transform": "RandomResizedCrop"}, r"'crop2', at_full: RandomResizedCrop needs size"),
    ],
)
def test_a_bad_entry_is_refused_naming_it_and_its_key(name, entry, expected):
    with pytest.raises(D.DeclarationError, match=expected):
        D.declare(name, entry)


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ({"transform": "JPEG", "at_full": {"quality": [20, 100]}, "scales": {"quality": [100, 100]}}, r"scales: at the identity values .* still changes"),
        ({"transform": "RandAugment", "at_full": {"magnitude": 9}, "scales": {"magnitude": 0}}, r"scales: at the identity values .* still changes"),
        ({"transform": "Resize", "at_full": {"size": 16}}, r"must give back uint8 images of 32 px"),
        ({"transform": "RandomSolarize", "at_full": {"threshold": 300}}, r"does not run on uint8 RGB images"),
    ],
)
def test_a_transform_that_fails_on_the_probe_images_is_refused(entry, expected):
    with pytest.raises(D.DeclarationError, match=expected):
        D.check_on_images(D.declare("mine", entry), 32)


def test_scaled_parameters_move_from_the_identity_to_their_full_value():
    d = D.declare("q", {"transform": "JPEG", "at_full": {"quality": [20, 100]}, "scales": {"quality": [100, 100]}})
    assert d.parameters(1.0) == {"quality": [20, 100]} and d.parameters(0.5) == {"quality": [60, 100]}
    p = D.declare("p", EXAMPLES["perspective"])
    assert p.parameters(0.25) == {"distortion_scale": pytest.approx(0.15), "p": 1.0}
    assert D.declare("b", EXAMPLES["posterize"]).parameters(0.5)["bits"] == round(8 + 0.5 * (3 - 8))


@settings(max_examples=25, deadline=None)
@given(strength=st.floats(0.0, 1.0), batched=st.booleans(), seed=st.integers(0, 2**16))
def test_off_and_strength_0_are_the_identity_and_any_other_strength_keeps_the_images_shape(strength, batched, seed):
    entries = D.catalog(declarations())
    torch.manual_seed(seed)
    images = (torch.rand(4, 3, 32, 32) * 255).to(torch.uint8)
    for name in EXAMPLES:
        assert build_pipeline({name: 0.0}, 32, batched, entries) is None
        assert build_pipeline({}, 32, batched, entries) is None
        out = build_pipeline({name: strength}, 32, batched, entries)
        if strength == 0.0:
            assert out is None
        else:
            result = out(images.clone())
            assert result.shape == images.shape and torch.isfinite(result.float()).all()


def test_declared_entries_run_after_the_built_ins_batch_forms_image_by_image():
    entries = D.catalog(declarations())
    assert list(entries)[: len(NAMES)] == list(NAMES) and list(entries)[len(NAMES) :] == list(EXAMPLES)
    pipeline = build_pipeline({"invert": 1.0, "hflip": 1.0}, 32, True, entries)
    assert [entry.name for entry, _, _ in pipeline.steps] == ["hflip", "invert"]
    torch.manual_seed(0)
    images = (torch.rand(64, 3, 32, 32) * 255).to(torch.uint8)
    out = pipeline(images.clone())
    flipped_back = out.flip(-1)  # hflip at strength 1 flips half: compare each with both
    inverted = 255 - images.float()
    each = [(o - inv).abs().max() < 1e-3 or (f - inv).abs().max() < 1e-3 or (o - images[i].float()).abs().max() < 1e-3
            or (f - images[i].float()).abs().max() < 1e-3 for i, (o, f, inv) in enumerate(zip(out, flipped_back, inverted))]  # fmt: skip
    assert all(each)


def test_the_table_lists_declared_entries():
    text = describe(D.catalog(declarations()))
    assert "declared: v2.RandomPerspective (strength scales distortion_scale)" in text and "TrivialAugmentWide (a switch)" in text


def test_a_missing_switch_in_a_table_row_is_off():
    row = pd.Series({"aug_crop": True, "aug_crop_strength": 0.5, "aug_invert": math.nan, "aug_invert_strength": math.nan, "aug_jpeg": pd.NA})
    assert names_in(row.keys())[-2:] == ("invert", "jpeg") and strengths_in(row) == {"crop": 0.5}


def test_declared_columns_are_typed_like_the_built_ins():
    frame = pd.DataFrame({"study": ["x", "x"], "aug_invert": [True, None], "aug_invert_strength": [0.5, None]})
    table = TABLES["focus_runs"].to_arrow("focus_runs", frame)
    assert str(table.schema.field("aug_invert").type) == "bool" and str(table.schema.field("aug_invert_strength").type) == "double"


SPACE = """
space:
  augmentations:
    - hflip
    - {entry}
"""


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("warp: {transform: RandomPerspectve}", r"augmentation 'warp', transform: 'RandomPerspectve' is not .* did you mean RandomPerspective"),
        ("warp: {transform: RandomPerspective, at_full: {distortion: 0.5}}", r"augmentation 'warp', at_full.distortion: RandomPerspective takes no"),
        ("warp: {transform: RandomPerspective, at_full: {distortion_scale: 3}}", r"augmentation 'warp', at_full: RandomPerspective refuses"),
        ("warp: {transform: RandomPerspective, at_full: {p: high}}", r"augmentation 'warp', at_full: RandomPerspective refuses"),
        (
            "jpeg: {transform: JPEG, at_full: {quality: [20, 100]}, scales: {quality: [100, 100]}}",
            r"augmentation 'jpeg' \(JPEG\), scales: at the identity values",
        ),
        ("hflip: {transform: RandomInvert}", r"augmentation 'hflip': the name is a built-in"),
        ("code: {transform: Lambda, at_full: {lambd: 'os.system'}}", r"augmentation 'code', transform: Lambda is not an augmentation"),
    ],
)
def test_a_space_file_with_a_bad_entry_exits_2_naming_the_entry_and_key(tmp_path, capsys, entry, expected):
    path = tmp_path / "space.yaml"
    path.write_text(SPACE.format(entry=entry))
    with pytest.raises(ConfigError, match=expected):
        load_config(path)
    assert main(["--space", str(path), "--list-augmentations"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_policies_are_checked_and_become_switches_of_their_own(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text(SPACE.format(entry="mine: {transform: RandAugment, at_full: {num_ops: 1}}") + "confirm: {policies: [TrivialAugmentWide, mine, AugMix]}\n")
    cfg = load_config(path)
    assert [d.name for d in cfg.declared] == ["mine", "trivialaugmentwide", "augmix"]
    assert cfg.policy_names == ("trivialaugmentwide", "mine", "augmix") and cfg.space.augmentation_names == ("hflip", "mine")
    path.write_text("confirm: {policies: [TrivialAugment]}\n")
    with pytest.raises(ConfigError, match=r"confirm.policies: 'TrivialAugment' is neither an automatic policy \(TrivialAugmentWide"):
        load_config(path)
    path.write_text("confirm: {policies: []}\n")
    assert load_config(path).declared == ()


def test_the_list_shows_a_space_files_declared_entries(tmp_path, capsys):
    path = tmp_path / "space.yaml"
    path.write_text(SPACE.format(entry="warp: {transform: RandomPerspective, at_full: {distortion_scale: 0.5, p: 1.0}, scales: {distortion_scale: 0.0}}"))
    assert main(["--space", str(path), "--list-augmentations"]) == 0
    out = capsys.readouterr().out
    assert "warp" in out and "v2.RandomPerspective" in out and "trivialaugmentwide" in out

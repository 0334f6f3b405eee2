"""Property-based tests: whatever a space file or a flag list holds, loading it gives a valid
config or a ConfigError with a message (argparse: exit 2), never another exception."""

import argparse
import contextlib
import io
import math
import string

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tune_search.cli import add_search_flags, parse
from tune_search.config import ConfigError, SearchConfig, load_config

SECTIONS = {name: list(field.annotation.model_fields) for name, field in SearchConfig.model_fields.items()}

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(string.printable, max_size=12),
    st.sampled_from(["all", "auto", "max", "best", "baseline", "none", "hflip", "mnist", "fashion-mnist"]),
)
values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(string.ascii_lowercase, max_size=8), inner, max_size=3), max_leaves=8
)
known_keys = st.sampled_from([(s, k) for s, keys in SECTIONS.items() for k in keys])
sections = st.dictionaries(
    st.sampled_from([*SECTIONS, "extra", "Data"]),
    st.one_of(
        st.none(), values, st.dictionaries(st.one_of(st.sampled_from([k for keys in SECTIONS.values() for k in keys]), st.text(max_size=6)), values, max_size=4)
    ),
    max_size=5,
)

RELAXED = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _loads(tmp_path_factory, text: bytes):
    path = tmp_path_factory.mktemp("space") / "space.yaml"
    path.write_bytes(text)
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        assert str(exc).strip()
        return None
    assert isinstance(cfg, SearchConfig)
    return cfg


@RELAXED
@given(doc=sections)
@pytest.mark.slow
def test_any_yaml_document_gives_a_config_or_a_message(tmp_path_factory, doc):
    cfg = _loads(tmp_path_factory, yaml.safe_dump(doc, allow_unicode=True).encode())
    if cfg is not None:  # what was accepted is what the file said, and it round-trips
        assert load_config(None, {}) == SearchConfig() and SearchConfig.model_validate(yaml.safe_load(cfg.dump())) == cfg


@RELAXED
@given(section_key=known_keys, value=values)
def test_one_key_set_to_anything(tmp_path_factory, section_key, value):
    section, key = section_key
    cfg = _loads(tmp_path_factory, yaml.safe_dump({section: {key: value}}).encode())
    if cfg is not None:
        floats = [v for v in (value if isinstance(value, list) else [value]) if isinstance(v, float)]
        assert all(math.isfinite(v) for v in floats)


@RELAXED
@given(text=st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_any_bytes_give_a_config_or_a_message(tmp_path_factory, text):
    _loads(tmp_path_factory, text)


_SEARCH = argparse.ArgumentParser()
add_search_flags(_SEARCH)
FLAGS = [a for action in _SEARCH._actions for a in action.option_strings if a.startswith("--") and a not in ("--help", "--list-augmentations")]
flag_values = st.one_of(
    st.integers(-5, 10_000).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["mnist", "auto", "none", "resnet18", "..", ".", "a/b", "", "-1", "nan", "inf", "1e309"]),
    st.text(string.printable, max_size=10),
)
flag_lists = st.lists(st.tuples(st.sampled_from(FLAGS), flag_values), max_size=5).map(lambda pairs: [x for pair in pairs for x in pair])


@RELAXED
@given(argv=flag_lists)
def test_any_flag_list_gives_a_config_or_exit_2_with_a_message(argv):
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            _, cfg = parse(argv)
    except ConfigError as exc:
        assert str(exc).strip()
    except SystemExit as exit:  # argparse: a value of the wrong type, or a flag missing its value
        assert exit.code == 2
        assert "error:" in err.getvalue()
    else:
        assert isinstance(cfg, SearchConfig)

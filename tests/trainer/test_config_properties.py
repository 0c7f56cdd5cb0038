"""Property-based: whatever a user types as overrides or writes as a YAML file, loading ends in a valid
TrainConfig or a UserError (exit 2 with the field named), never another exception."""

from __future__ import annotations

from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from automodel.catalog.errors import UserError
from automodel.trainer.config import TrainConfig, config_from_data, read_yaml
from automodel.trainer.overrides import schema_paths, split_overrides

BASE = {"model": {"name": "m"}, "data": {"source": "d.jsonl", "format": "chat"},
        "schedule": {"max_steps": 2}}
KEYS = sorted(schema_paths(TrainConfig)) + ["peft", "data", "nope", "peft.nope", "data.chat", "", ".", "a..b"]
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True),
                    st.text(max_size=12))
YAML_VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                            st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                           max_leaves=8)
RAW = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=20)
TOKEN = st.one_of(
    st.builds(lambda k, v: f"{k}={v}", st.sampled_from(KEYS), RAW),
    st.builds(lambda k, v: f"--{k}={v}", st.sampled_from(KEYS), RAW),
    st.builds(lambda k: f"--{k}", st.sampled_from(KEYS)),
    st.builds(lambda k, v: f"{k}={v}", st.sampled_from(KEYS), st.sampled_from(
        ["[a,b]", "[1, 2", "{x: 1}", "${HOME}", "${NOPE_UNSET}", "${X,default}", "null", "1e3", "-1", "true", "'q'"])),
    RAW,
)
SETTINGS = settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


def _loads_or_user_error(load) -> None:
    try:
        cfg = load()
    except UserError as err:
        assert err.render().startswith("error: ")
        return
    assert isinstance(cfg, TrainConfig)


@SETTINGS
@given(st.lists(TOKEN, max_size=4))
def test_any_overrides_give_a_config_or_a_user_error(tokens: list[str]) -> None:
    def load():
        split_overrides(tokens)  # the CLI's first check
        return config_from_data(BASE, tokens, environ={"HOME": "/home/u", "X": "1"})

    _loads_or_user_error(load)


@SETTINGS
@given(st.dictionaries(st.sampled_from(KEYS), YAML_VALUES, max_size=4))
def test_any_yaml_mapping_gives_a_config_or_a_user_error(changes: dict) -> None:
    data = {section: dict(values) for section, values in BASE.items()}
    for key, value in changes.items():
        *parents, last = key.split(".")
        node = data
        for part in parents:
            node = node.setdefault(part, {}) if isinstance(node, dict) else node
        if isinstance(node, dict):
            node[last] = value
    _loads_or_user_error(lambda: config_from_data(data, [], environ={}))


@settings(max_examples=100, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(st.binary(max_size=80), st.text(max_size=80).map(str.encode),
                 YAML_VALUES.map(lambda v: yaml.safe_dump(v).encode())))
def test_any_file_gives_a_config_or_a_user_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_bytes(content)
    _loads_or_user_error(lambda: config_from_data(read_yaml(path), [], environ={}))

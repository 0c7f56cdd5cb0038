"""Catalog schema: bad data fails with a message that names the file and the YAML path of the field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from automodel.catalog.errors import UserError
from automodel.catalog.registry import load_catalog, load_catalog_from, parse_yaml
from automodel.catalog.schema import FamilySpec, GPUSpec, GPUTable, ModelSpec, format_params

MODEL = {
    "name": "tiny-llama",
    "hf_id": "acme/Tiny-Llama",
    "family": "tiny",
    "modality": "llm",
    "use_cases": ["chat"],
    "params": 1000,
    "params_method": "meta-build",
    "context_length": 2048,
    "license": "apache-2.0",
    "commercial_use": True,
    "gated": False,
    "released": "2024-09",
    "lora_targets": ["q_proj"],
    "config": {"model_type": "llama", "hidden_size": 64},
    "source": ["test"],
}
FAMILY = {
    "name": "tiny",
    "title": "Tiny",
    "vendor": "Acme",
    "modality": "llm",
    "best_for": "tests",
    "strengths": ["chat"],
    "models": [MODEL],
}
GPU = {
    "name": "X1",
    "vendor": "nvidia",
    "marketed_gb": 24,
    "memory_gib": 23.5,
    "bf16": True,
    "bf16_tflops": 100,
    "fp16_tflops": 100,
    "bandwidth_gbs": 1000,
    "source": ["test"],
}


def _family(**model_changes: object) -> str:
    return yaml.safe_dump({**FAMILY, "models": [{**MODEL, **model_changes}]})


def _error(text: str, schema: type = FamilySpec, source: str = "models/tiny.yaml") -> UserError:
    with pytest.raises(UserError) as info:
        parse_yaml(text, source, schema)
    return info.value


def test_valid_family_parses() -> None:
    family = parse_yaml(_family(), "models/tiny.yaml", FamilySpec)
    assert family.models[0].hf_id == "acme/Tiny-Llama"
    assert family.models[0].active_params is None and family.models[0].derived_keys == ()


def test_bad_value_names_file_and_path() -> None:
    err = _error(_family(params=-5))
    assert err.field == "models/tiny.yaml"
    assert "models/tiny.yaml: models.0.params: Input should be greater than 0" in err.message
    assert "Traceback" not in err.render()


def test_unknown_field_is_refused() -> None:
    err = _error(_family(param_count=5))
    assert "models.0.param_count: Extra inputs are not permitted" in err.message


def test_missing_field_is_named() -> None:
    data = {**FAMILY, "models": [{k: v for k, v in MODEL.items() if k != "license"}]}
    assert "models.0.license: Field required" in _error(yaml.safe_dump(data)).message


def test_use_case_must_fit_modality() -> None:
    err = _error(_family(use_cases=["chat", "transcription"]))
    assert "models.0" in err.message and "do not apply to modality 'llm'" in err.message
    assert "models.0.use_cases.0" in _error(_family(use_cases=["not-a-use-case"])).message


def test_released_is_a_past_month() -> None:
    assert parse_yaml(_family(), "models/tiny.yaml", FamilySpec).models[0].released_month == 2024 * 12 + 8
    for bad in ("2024-9", "2024-13", "24-09", "2024-09-01"):
        assert "models.0.released: String should match pattern" in _error(_family(released=bad)).message, bad
    assert "models.0.released: Value error, released 2999-01 is in the future" in _error(
        _family(released="2999-01")
    ).message
    data = {**FAMILY, "models": [{k: v for k, v in MODEL.items() if k != "released"}]}
    assert "models.0.released: Field required" in _error(yaml.safe_dump(data)).message


def test_family_membership_and_modality() -> None:
    assert "says family 'other'" in _error(_family(family="other")).message
    assert "has modality 'vlm'" in _error(_family(modality="vlm", use_cases=["vqa"])).message


def test_config_needs_model_type_and_active_below_total() -> None:
    assert "model_type" in _error(_family(config={"hidden_size": 64})).message
    assert "active_params" in _error(_family(active_params=2000)).message


def test_invalid_yaml_syntax_names_file() -> None:
    err = _error("name: [unclosed", source="models/broken.yaml")
    assert err.field == "models/broken.yaml" and "not valid YAML" in err.message


def test_gpu_rules() -> None:
    table = lambda **c: yaml.safe_dump({"gpus": [{**GPU, **c}]})  # noqa: E731
    gpu = parse_yaml(table(), "gpus.yaml", GPUTable).gpus[0]
    assert gpu.memory_bytes == int(23.5 * 2**30)
    assert (
        "bf16_tflops must be given exactly when bf16"
        in _error(table(bf16=False), GPUTable, "gpus.yaml").message
    )
    assert "gpus.0" in _error(table(memory_gib=30), GPUTable, "gpus.yaml").message  # above the marketed size
    assert "gpus.0.vendor" in _error(table(vendor="intel"), GPUTable, "gpus.yaml").message


def test_duplicate_names_across_files(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "a.yaml").write_text(_family())
    (tmp_path / "models" / "b.yaml").write_text(_family(hf_id="acme/Other"))
    (tmp_path / "gpus.yaml").write_text(yaml.safe_dump({"gpus": [GPU]}))
    with pytest.raises(UserError, match="duplicate model name in the catalog data: tiny-llama"):
        load_catalog_from(tmp_path)
    (tmp_path / "models" / "b.yaml").unlink()
    catalog = load_catalog_from(tmp_path)
    assert [m.name for m in catalog.models] == ["tiny-llama"] and catalog.gpus[0].name == "X1"


def test_models_are_frozen() -> None:
    spec = load_catalog().models[0]
    with pytest.raises(ValueError):
        spec.params = 1  # type: ignore[misc]
    assert isinstance(spec, ModelSpec) and isinstance(load_catalog().gpus[0], GPUSpec)


def test_every_field_is_described() -> None:
    for schema in (ModelSpec, FamilySpec, GPUSpec, GPUTable):
        for name, field in schema.model_fields.items():
            assert field.description, f"{schema.__name__}.{name} has no description"


@pytest.mark.parametrize(
    ("n", "text"),
    [(1_235_814_400, "1.24B"), (94_396_320, "94.4M"), (72_706_203_648, "72.71B"), (235e9, "235B")],
)
def test_format_params(n: float, text: str) -> None:
    assert format_params(int(n)) == text

"""One test per catalog entry: the shipped data agrees with a meta-device build of its own config, with
shared/reference/model-configs (when that folder sits beside the repo) and with the architecture's
invariants. Plus the seed document's known slips, which must not survive in the catalog."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from automodel.advisor.commands_catalog import architecture_summary, tied_embeddings
from automodel.catalog.params import build_meta_model, count_unique_parameters, phi3small_param_count
from automodel.catalog.registry import load_catalog
from automodel.catalog.schema import USE_CASES_BY_MODALITY, ModelSpec

REFERENCE = Path(__file__).resolve().parents[2].parent / "shared" / "reference" / "model-configs"
CATALOG = load_catalog()
MODELS = {m.hf_id: m for m in CATALOG.models}

# reference/README.md: "Tied embeddings: Llama-3.2, Qwen2.5 <= 3B, Qwen3 <= 4B, Gemma 2/3, Phi-4-mini,
# Qwen2-VL-2B, Qwen2.5-VL-3B, and Whisper's output projection."
TIED = {
    "meta-llama/Llama-3.2-1B", "meta-llama/Llama-3.2-3B", "meta-llama/Llama-3.2-1B-Instruct", "meta-llama/Llama-3.2-3B-Instruct",
    "Qwen/Qwen2.5-0.5B-Instruct", "Qwen/Qwen2.5-1.5B-Instruct", "Qwen/Qwen2.5-3B-Instruct", "Qwen/Qwen2.5-Coder-1.5B-Instruct",
    "Qwen/Qwen3-0.6B", "Qwen/Qwen3-1.7B", "Qwen/Qwen3-4B",
    "google/gemma-2-2b-it", "google/gemma-2-9b-it", "google/gemma-2-27b-it",
    "google/gemma-3-1b-it", "google/gemma-3-4b-it", "google/gemma-3-12b-it", "google/gemma-3-27b-it",
    "microsoft/Phi-4-mini-instruct", "Qwen/Qwen2-VL-2B-Instruct", "Qwen/Qwen2.5-VL-3B-Instruct",
    "openai/whisper-small", "openai/whisper-medium", "openai/whisper-large-v3", "openai/whisper-large-v3-turbo",
    "microsoft/Phi-3-small-8k-instruct",
}  # fmt: skip


def _reference(hf_id: str) -> dict[str, Any] | None:
    if not REFERENCE.is_dir():
        return None
    path = REFERENCE / (hf_id.replace("/", "__") + ".json")
    return json.loads(path.read_text()) if path.is_file() else None


def _with_derived_defaults(ref: dict[str, Any]) -> tuple[dict[str, Any], set[str]]:
    config = copy.deepcopy(ref["config"])
    keys: set[str] = set()
    for part, values in (ref.get("derived_defaults") or {}).items():
        if part == "_note":
            continue
        target = config if part == "top_level" else config.setdefault(part, {})
        for key, value in values.items():
            if key not in target:
                target[key] = value
                keys.add(key if part == "top_level" else f"{part}.{key}")
    return config, keys


def _text(config: dict[str, Any]) -> dict[str, Any]:
    return config.get("text_config", config)


def _linear_leaf_names(model: torch.nn.Module) -> set[str]:
    return {
        name.rsplit(".", 1)[-1] for name, mod in model.named_modules() if isinstance(mod, torch.nn.Linear)
    }


def _is_tied(model: torch.nn.Module) -> bool:
    if model.config.model_type == "wav2vec2":
        return False  # a CTC head over characters: no token embedding to share
    out = model.get_output_embeddings()
    if model.config.model_type == "whisper":
        inp = model.get_decoder().embed_tokens
    else:
        inp = model.get_input_embeddings()
    return out is not None and inp is not None and out.weight is inp.weight


def _check_invariants(spec: ModelSpec) -> None:
    text = _text(spec.config)
    if spec.config["model_type"] == "whisper":
        hidden, heads, kv = text["d_model"], text["decoder_attention_heads"], text["decoder_attention_heads"]
    else:
        hidden, heads = text["hidden_size"], text["num_attention_heads"]
        kv = text.get("num_key_value_heads", heads)
    assert "head_dim" in text or hidden % heads == 0, (
        "heads must divide hidden_size when head_dim is not given"
    )
    assert heads % kv == 0, "kv heads must divide attention heads"
    assert set(spec.use_cases) <= USE_CASES_BY_MODALITY[spec.modality]
    limit = text.get("max_target_positions") or text.get("max_position_embeddings")
    if spec.context_length is not None:
        assert limit is not None and spec.context_length <= limit, "context beyond what the config serves"
    summary = architecture_summary(spec.config)
    expected_tied = None if spec.config["model_type"] == "wav2vec2" else spec.hf_id in TIED  # CTC: no LM head
    assert summary["tied_embeddings"] == expected_tied


@pytest.mark.parametrize("hf_id", sorted(MODELS))
def test_entry(hf_id: str) -> None:
    spec = MODELS[hf_id]
    _check_invariants(spec)
    ref = _reference(hf_id)
    if ref is not None:
        config, derived = _with_derived_defaults(ref)
        assert spec.config == config, "config must be the published config.json plus its derived defaults"
        assert set(spec.derived_keys) == derived
        assert spec.license == ref["license"] and spec.gated == ref["gated"]
        if ref["params_exact"] is not None:
            assert spec.params == ref["params_exact"]

    if spec.params_method == "analytic":
        assert spec.config["model_type"] == "phi3small"
        assert spec.params == phi3small_param_count(spec.config)
        assert tied_embeddings(spec.config) is True
        return

    model = build_meta_model(spec.config)
    assert count_unique_parameters(model) == spec.params
    assert _is_tied(model) == (hf_id in TIED), "tied embeddings as reference/README.md lists them"
    missing = set(spec.lora_targets) - _linear_leaf_names(model)
    assert not missing, f"LoRA targets that name no nn.Linear in the model: {missing}"
    if spec.active_params is not None:
        experts = sum(p.numel() for name, p in model.named_parameters() if ".mlp.experts." in name)
        total_experts, active = spec.config["num_experts"], spec.config["num_experts_per_tok"]
        assert spec.active_params == spec.params - experts // total_experts * (total_experts - active)
    else:
        assert "num_experts" not in _text(spec.config)


def test_catalog_covers_the_reference_and_sources_the_rest() -> None:
    if not REFERENCE.is_dir():
        pytest.skip("shared/reference is not beside the repo")
    reference_ids = {json.loads(p.read_text())["hf_id"] for p in REFERENCE.glob("*.json")}
    assert reference_ids <= set(MODELS)
    for hf_id in set(MODELS) - reference_ids:  # added after the reference: each names where its config came from
        assert any(s.startswith("config: ") for s in MODELS[hf_id].source), hf_id


def test_phi3_small_count_matches_vendor_figure() -> None:
    # Analytic (remote code is never run); the Hub lists 7.39B for this checkpoint.
    spec = MODELS["microsoft/Phi-3-small-8k-instruct"]
    assert spec.params == 7_392_272_384
    assert spec.params_method == "analytic"
    assert all(m.params_method == "meta-build" for m in CATALOG.models if m is not spec)


def test_moe_active_params() -> None:
    spec = MODELS["Qwen/Qwen3-30B-A3B"]
    assert spec.active_params == 3_353_032_704  # model card: 3.3B activated
    assert [m.hf_id for m in CATALOG.models if m.active_params] == ["Qwen/Qwen3-30B-A3B"]


def _family(name: str) -> list[ModelSpec]:
    return [m for m in CATALOG.models if m.family == name]


def test_no_seed_slip_survives() -> None:
    ids = {h.lower() for h in MODELS}
    assert "microsoft/phi-4-instruct" not in ids
    assert MODELS["microsoft/phi-4"].params == 14_659_507_200
    assert 3.7e9 < MODELS["microsoft/Phi-4-mini-instruct"].params < 3.9e9
    # Qwen3 sizes: 0.6B, 1.7B, 4B, 8B, 14B, 32B and 30B-A3B; nothing from Qwen2.5 in the family.
    assert {m.name for m in _family("qwen3")} == {
        f"qwen3-{s}" for s in ("0.6b", "1.7b", "4b", "8b", "14b", "32b", "30b-a3b")
    }
    assert all(m.hf_id.startswith("Qwen/Qwen3-") for m in _family("qwen3"))
    # Gemma 3: 1B text only; 4B/12B/27B take images; no 2B/9B, no "Gemma-3-VL 3B".
    assert [m.hf_id for m in _family("gemma-3")] == ["google/gemma-3-1b-it"]
    assert [m.hf_id for m in _family("gemma-3-vision")] == [
        f"google/gemma-3-{s}-it" for s in ("4b", "12b", "27b")
    ]
    assert not any(tag in h for h in ids for tag in ("gemma-3-2b", "gemma-3-9b", "gemma-3-3b", "gemma-3-vl"))
    for spec in _family("gemma-3-vision"):
        assert spec.config["text_config"]["vocab_size"] == 262208
    assert MODELS["google/gemma-3-1b-it"].config["vocab_size"] == 262144
    # Phi-3: mini 3.8B, small 7B, medium 14B.
    phi3 = {m.name: m.params / 1e9 for m in _family("phi-3")}
    assert 3.7 < phi3["phi-3-mini-4k-instruct"] < 3.9 and 7 < phi3["phi-3-small-8k-instruct"] < 7.5
    assert 13.5 < phi3["phi-3-medium-4k-instruct"] < 14.5
    # Family descriptions do not repeat the seed's wrong size lists.
    assert "0.5B" not in CATALOG.family("qwen3").best_for
    assert "2B" not in CATALOG.family("gemma-3").best_for and "9B" not in CATALOG.family("gemma-3").best_for


def test_licence_terms() -> None:
    non_commercial = {m.hf_id for m in CATALOG.models if not m.commercial_use}
    assert non_commercial == {
        "Qwen/Qwen2.5-3B-Instruct",
        "Qwen/Qwen2.5-VL-3B-Instruct",
    }  # Qwen research licence
    gated = {m.hf_id.split("/")[0] for m in CATALOG.models if m.gated}
    assert gated == {"meta-llama", "google"}


def test_required_gpus_present() -> None:
    names = {g.name for g in CATALOG.gpus}
    required = {"T4", "V100-16GB", "V100-32GB", "A10G", "L4", "RTX-3090", "RTX-4090", "RTX-5090", "RTX-A6000"}
    required |= {"L40S", "A100-40GB", "A100-80GB", "H100-SXM", "H100-PCIe", "H200", "B200", "MI300X"}
    assert required <= names and len(names) >= 15
    assert not any(g.bf16 for g in CATALOG.gpus if g.name in {"T4", "V100-16GB", "V100-32GB"})


@pytest.mark.parametrize(
    ("hf_id", "released"),
    [  # checkpoints of one family released months apart keep their own dates
        ("microsoft/Phi-4-mini-instruct", "2025-02"), ("microsoft/phi-4", "2025-01"),
        ("microsoft/Phi-3-mini-4k-instruct", "2024-04"), ("microsoft/Phi-3-medium-4k-instruct", "2024-05"),
        ("openai/whisper-large-v3-turbo", "2024-10"), ("openai/whisper-large-v3", "2023-11"),
        ("Qwen/Qwen2-VL-7B-Instruct", "2024-08"), ("Qwen/Qwen2-VL-72B-Instruct", "2024-09"),
        ("google/gemma-2-2b-it", "2024-07"), ("google/gemma-2-9b-it", "2024-06"),
        ("codellama/CodeLlama-7b-Instruct-hf", "2023-08"), ("Qwen/Qwen3-8B", "2025-04"),
        ("Qwen/Qwen2.5-Coder-7B-Instruct", "2024-09"), ("Qwen/Qwen2.5-Coder-32B-Instruct", "2024-11"),
    ],
)
def test_release_month(hf_id: str, released: str) -> None:
    assert MODELS[hf_id].released == released


def test_entries_added_after_the_reference_name_their_config_source() -> None:
    added = [m for m in CATALOG.models if "coder" in m.name or m.name.startswith("llama-3.2-") and "instruct" in m.name]
    assert len(added) == 6
    assert all(any(s.startswith("config: ") for s in m.source) for m in added)


def test_every_release_month_is_sourced() -> None:
    for m in CATALOG.models:
        assert any(s.startswith(f"released {m.released}: ") for s in m.source), m.name

"""Exact parameter counts and the config -> transformers helpers the simulator and trainer share."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForCTC,
    AutoModelForImageTextToText,
    AutoModelForSpeechSeq2Seq,
    LlamaConfig,
)

from automodel.catalog.errors import UserError
from automodel.catalog.params import (
    build_meta_model,
    count_unique_parameters,
    exact_param_count,
    hf_config_from_dict,
    model_class_for,
    params_method_for,
    phi3small_param_count,
)
from automodel.catalog.registry import find_model
from tests.catalog.configs import tiny_llama

H, FF, V, L = 64, 128, 256, 2
TINY = tiny_llama(hidden_size=H, intermediate_size=FF, num_hidden_layers=L, vocab_size=V, tie_word_embeddings=False)
# q and o are H x H, k and v H x H/2 (2 of 4 heads), three MLP matrices, two RMSNorms per layer.
TINY_LAYER = 2 * H * H + 2 * H * (H // 2) + 3 * H * FF + 2 * H


def test_tiny_llama_count_by_hand() -> None:
    assert exact_param_count(TINY) == 2 * V * H + L * TINY_LAYER + H
    tied = {**TINY, "tie_word_embeddings": True}
    assert exact_param_count(tied) == V * H + L * TINY_LAYER + H  # the shared tensor counted once


def test_count_unique_parameters_dedupes_shared_tensors() -> None:
    shared = torch.nn.Linear(4, 4, bias=False)
    model = torch.nn.Sequential(shared, torch.nn.ReLU(), shared)
    assert count_unique_parameters(model) == 16


def test_meta_build_allocates_nothing() -> None:
    model = build_meta_model(TINY)
    assert all(p.device.type == "meta" for p in model.parameters())
    assert type(model).__name__ == "LlamaForCausalLM"


def test_hf_config_from_dict_keeps_input_and_applies_nested_defaults() -> None:
    minimal_gemma3 = {
        "model_type": "gemma3",
        "architectures": ["Gemma3ForConditionalGeneration"],
        "text_config": {"model_type": "gemma3_text", "hidden_size": 64, "num_hidden_layers": 2},
        "vision_config": {"model_type": "siglip_vision_model", "hidden_size": 32, "num_hidden_layers": 1},
    }
    before = copy.deepcopy(minimal_gemma3)
    config = hf_config_from_dict(minimal_gemma3)
    assert minimal_gemma3 == before
    assert config.text_config.vocab_size == 262208  # the default the published Gemma 3 configs rely on
    assert config.text_config.hidden_size == 64 and config.vision_config.num_hidden_layers == 1
    assert isinstance(hf_config_from_dict(TINY), LlamaConfig)


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("llama-3.2-1b", AutoModelForCausalLM),
        ("qwen3-30b-a3b", AutoModelForCausalLM),
        ("gemma-3-1b-it", AutoModelForCausalLM),
        ("phi-2", AutoModelForCausalLM),
        ("gemma-3-4b-it", AutoModelForImageTextToText),
        ("qwen2-vl-2b-instruct", AutoModelForImageTextToText),
        ("qwen2.5-vl-3b-instruct", AutoModelForImageTextToText),
        ("whisper-small", AutoModelForSpeechSeq2Seq),
        ("wav2vec2-base-960h", AutoModelForCTC),
    ],
)
def test_model_class_for_catalog_types(name: str, cls: type) -> None:
    config = find_model(name).config
    assert model_class_for(config) is cls
    assert model_class_for(hf_config_from_dict(config)) is cls


def test_model_class_for_by_architecture_or_type() -> None:
    assert model_class_for({"model_type": "wav2vec2"}) is AutoModelForCTC
    assert model_class_for({"model_type": "whisper"}) is AutoModelForSpeechSeq2Seq
    assert (
        model_class_for({"model_type": "mistral", "architectures": ["MistralForCausalLM"]})
        is AutoModelForCausalLM
    )
    llava = {"model_type": "llava", "architectures": ["LlavaForConditionalGeneration"], "vision_config": {}}
    assert model_class_for(llava) is AutoModelForImageTextToText


def test_remote_code_type_is_refused() -> None:
    with pytest.raises(UserError, match="trust_remote_code") as info:
        exact_param_count({"model_type": "deepseek_vl_v9", "auto_map": {"AutoConfig": "x.Config"}})
    assert info.value.field == "config.json"
    with pytest.raises(UserError, match="no `model_type`"):
        exact_param_count({"hidden_size": 64})


def test_phi3_small_analytic_by_hand() -> None:
    config = {
        "model_type": "phi3small",
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 100,
        "ff_intermediate_size": 96,
        "gegelu_pad_to_256": False,
    }
    qkv = 64 * (4 + 2 * 2) * 16 + (4 + 2 * 2) * 16
    layer = 2 * 2 * 64 + qkv + (64 * 64 + 64) + (64 * 192 + 192) + (96 * 64 + 64)
    assert phi3small_param_count(config) == 100 * 64 + 2 * layer + 2 * 64
    assert exact_param_count(config) == phi3small_param_count(config)  # dispatched, never built
    padded = phi3small_param_count({**config, "gegelu_pad_to_256": True})  # ff 96 -> 256
    assert padded - phi3small_param_count(config) == 2 * ((64 * 2 + 2 + 64) * (256 - 96))
    untied = phi3small_param_count({**config, "tie_word_embeddings": False})
    assert untied - phi3small_param_count(config) == 100 * 64
    assert params_method_for(config) == "analytic" and params_method_for(TINY) == "meta-build"


def test_architectures_outside_the_preferred_classes_still_count() -> None:
    t5_small = {
        "model_type": "t5",
        "architectures": ["T5ForConditionalGeneration"],
        "d_model": 512,
        "d_ff": 2048,
        "d_kv": 64,
        "num_layers": 6,
        "num_heads": 8,
        "vocab_size": 32128,
    }
    assert model_class_for(t5_small).__name__ == "AutoModelForSeq2SeqLM"
    assert exact_param_count(t5_small) == 60_506_624  # t5-small, shared embedding counted once
    assert model_class_for({"model_type": "clip"}).__name__ == "AutoModel"


@pytest.mark.parametrize(("change", "words"), [({"hidden_size": "big"}, "hidden_size"),
                                               ({"num_attention_heads": 0}, "division"),
                                               ({"num_attention_heads": 3}, "not a multiple")])
def test_configs_transformers_rejects_are_user_errors(change: dict[str, object], words: str) -> None:
    config = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 1, "vocab_size": 100, **change}
    with pytest.raises(UserError) as info:
        hf_config_from_dict(config)
    assert info.value.field == "config.json" and words in info.value.message and "\n" not in info.value.message

"""Analytic dimensions and parameter counts (catalog/architecture.py, catalog/towers.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from automodel.catalog.architecture import dims_from_config
from automodel.catalog.errors import UserError
from tests.catalog.configs import tiny_llama

REFERENCE = Path(__file__).resolve().parents[2].parent / "shared" / "reference" / "model-configs"
REFERENCE_FILES = sorted(REFERENCE.glob("*.json")) if REFERENCE.is_dir() else []

TINY_LLAMA = tiny_llama()


@pytest.mark.skipif(not REFERENCE_FILES, reason="../shared/reference/model-configs not beside the repo")
@pytest.mark.parametrize("path", REFERENCE_FILES, ids=lambda p: p.stem)
def test_total_matches_reference_meta_count(path: Path) -> None:
    ref = json.loads(path.read_text())
    dims = dims_from_config(ref["config"])
    if ref["params_exact"] is None:  # Phi-3-small: remote code, official figure "7.39B"
        assert abs(dims.total_params - 7.39e9) / 7.39e9 < 0.005
        return
    assert abs(dims.total_params - ref["params_exact"]) / ref["params_exact"] < 0.005
    assert dims.total_params == ref["params_exact"]  # stronger than the contract: exact


def test_tiny_llama_hand_count() -> None:
    d = dims_from_config(TINY_LLAMA)
    assert (d.hidden, d.layers, d.heads, d.kv_heads, d.head_dim) == (64, 2, 4, 2, 16)
    attn = 64 * 64 + 2 * 64 * 32 + 64 * 64  # q, k, v (2 kv heads x 16), o
    mlp = 3 * 64 * 128
    assert d.params.layers == 2 * (attn + mlp + 2 * 64)
    assert d.params.embedding == 100 * 64 and d.params.lm_head == 100 * 64  # llama: untied by default
    assert d.total_params == 2 * (attn + mlp + 128) + 2 * 6400 + 64
    assert {lin.name for lin in d.linears} == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert d.linear_params(("q_proj", "v_proj")) == 2 * (64 * 64 + 64 * 32)
    assert d.linear_params("all-linear") == 2 * (attn + mlp)


def test_tied_and_nested_defaults() -> None:
    cfg = {"model_type": "gemma3", "text_config": {"hidden_size": 64, "intermediate_size": 128,
                                                   "num_hidden_layers": 2, "vocab_size": 100},
           "vision_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                             "num_attention_heads": 2, "image_size": 56, "patch_size": 14}}
    d = dims_from_config(cfg)
    assert d.tied_embeddings and d.params.lm_head == 0
    assert (d.heads, d.kv_heads, d.head_dim) == (8, 4, 256)  # Gemma3TextConfig defaults
    assert d.vision is not None and d.vision.image((999, 999)).tokens == 256 and d.vision.image((999, 999)).patches == 16
    assert any(lin.component == "vision" for lin in d.linears)


def test_qwen2_vl_image_tokens() -> None:
    cfg = dict(TINY_LLAMA, model_type="qwen2_vl", vision_config={"embed_dim": 32, "depth": 1, "num_heads": 2})
    v = dims_from_config(cfg).vision
    assert v is not None
    assert v.image((448, 448)).patches == 32 * 32 and v.image((448, 448)).tokens == 256  # (448/14)^2 / 4
    assert v.image((500, 500)).tokens == v.image((504, 504)).tokens == 18 * 18 * 4 // 4  # rounded to a multiple of 28


def test_audio_frames() -> None:
    base = {"model_type": "wav2vec2", "hidden_size": 32, "num_attention_heads": 2, "num_hidden_layers": 1,
            "intermediate_size": 64, "vocab_size": 32, "conv_dim": [16] * 7,
            "conv_kernel": [10, 3, 3, 3, 3, 2, 2], "conv_stride": [5, 2, 2, 2, 2, 2, 2]}
    a = dims_from_config(base).audio
    assert a is not None and a.frames(1.0) == 49 and a.frames(10.0) == 499
    whisper = {"model_type": "whisper", "d_model": 32, "encoder_layers": 1, "decoder_layers": 1,
               "encoder_attention_heads": 2, "decoder_attention_heads": 2, "encoder_ffn_dim": 64,
               "decoder_ffn_dim": 64, "vocab_size": 50}
    w = dims_from_config(whisper)
    # the feature extractor pads or truncates to 30 s: 1500 encoder frames whatever the clip
    assert w.audio is not None and w.audio.frames(5.0) == w.audio.frames(12.0) == w.audio.frames(45.0) == 1500
    assert w.kind == "encoder-decoder" and w.cross_attention


def test_moe_active_params() -> None:
    cfg = dict(TINY_LLAMA, model_type="qwen3_moe", head_dim=16, num_experts=8, num_experts_per_tok=2,
               moe_intermediate_size=32)
    d = dims_from_config(cfg)
    assert d.moe_layers == 2 and d.num_experts == 8
    assert d.total_params - d.active_params == 2 * 6 * 3 * 64 * 32
    assert not any(lin.name == "gate_proj" for lin in d.linears)  # experts are 3-D parameters


@pytest.mark.parametrize(("cfg", "field"), [
    ({"hidden_size": 64}, "config.model_type"),
    ({"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4}, "config.num_hidden_layers"),
    ({"model_type": "mystery", "num_hidden_layers": 2, "num_attention_heads": 4, "hidden_size": 64,
      "intermediate_size": 128}, "config.vocab_size"),
])
def test_missing_key_names_the_field(cfg: dict, field: str) -> None:
    with pytest.raises(UserError) as err:
        dims_from_config(cfg)
    assert err.value.field == field


# Families outside the catalog, against their published / meta-device totals.
OUTSIDE = {
    "gpt2": ({"model_type": "gpt2", "n_embd": 768, "n_layer": 12, "n_head": 12, "vocab_size": 50257,
              "n_positions": 1024}, 124_439_808),
    "pythia-70m": ({"model_type": "gpt_neox", "hidden_size": 512, "num_hidden_layers": 6,
                    "num_attention_heads": 8, "intermediate_size": 2048, "vocab_size": 50304}, 70_426_624),
    "phi-1_5": ({"model_type": "phi", "hidden_size": 2048, "num_hidden_layers": 24, "num_attention_heads": 32,
                 "intermediate_size": 8192, "vocab_size": 51200}, 1_418_270_720),
    "mistral-7b": ({"model_type": "mistral", "hidden_size": 4096, "num_hidden_layers": 32,
                    "num_attention_heads": 32, "num_key_value_heads": 8, "intermediate_size": 14336,
                    "vocab_size": 32000, "sliding_window": 4096}, 7_241_732_096),
    "llama-2-7b": ({"model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 32,
                    "num_attention_heads": 32, "intermediate_size": 11008, "vocab_size": 32000}, 6_738_415_616),
    "qwen-7b": ({"model_type": "qwen", "hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32,
                 "intermediate_size": 22016, "vocab_size": 151936, "kv_channels": 128}, 7_721_324_544),
    "bloomz-7b1": ({"model_type": "bloom", "hidden_size": 4096, "n_layer": 30, "n_head": 32,
                    "vocab_size": 250880}, 7_069_016_064),
}


@pytest.mark.parametrize("name", sorted(OUTSIDE))
def test_families_outside_the_catalog(name: str) -> None:
    config, expected = OUTSIDE[name]
    d = dims_from_config(config)
    assert d.total_params == expected
    assert d.linears and all(lin.name != "lm_head" for lin in d.linears)


def test_unknown_targets_names_only_the_misses() -> None:
    dims = dims_from_config({
        "model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 100,
    })
    assert dims.unknown_targets("all-linear") == ()
    assert dims.unknown_targets(("q_proj", "v_proj")) == ()
    assert dims.unknown_targets(("q_proj", "qkv_proj", "lm_head")) == ("qkv_proj", "lm_head")


@pytest.mark.parametrize(("change", "field", "words"), [
    ({"num_attention_heads": 0}, "config.num_attention_heads", "must be at least 1, got 0"),  # was ZeroDivisionError
    ({"num_hidden_layers": -2}, "config.num_hidden_layers", "must be at least 1"),
    ({"num_attention_heads": 3}, "config.num_attention_heads", "not a multiple"),
    ({"hidden_size": "big"}, "config.hidden_size", "expected an integer"),
])
def test_impossible_dimensions_name_the_key(change: dict[str, object], field: str, words: str) -> None:
    config = {
        "model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 100, **change,
    }
    if change.get("num_attention_heads") == 3:
        config["num_key_value_heads"] = 3
    with pytest.raises(UserError) as info:
        dims_from_config(config)
    assert info.value.field == field and words in info.value.message


def test_qwen_image_tokens_follow_smart_resize() -> None:
    """Pinned figures for Qwen2.5-VL-7B's published processor (min 3136, max 12845056 pixels)."""
    from automodel.catalog.registry import resolve

    v = dims_from_config(resolve("qwen2.5-vl-7b-instruct").config).vision
    assert v is not None and (v.min_pixels, v.max_pixels) == (3136, 12_845_056)
    grid = v.image((448, 448))
    assert (grid.width, grid.height, grid.patches, grid.tokens) == (448, 448, 1024, 256)
    grid = v.image((1280, 720))  # 1288 x 728 after rounding to 28: 92 x 52 patches
    assert (grid.width, grid.height, grid.patches, grid.tokens) == (1288, 728, 4784, 1196)
    at_cap = v.image((3584, 3584))  # exactly max_pixels: 256 x 256 patches
    assert (at_cap.patches, at_cap.tokens) == (65536, 16384)
    assert v.image((8000, 8000)).tokens <= at_cap.tokens  # scaled down into max_pixels
    assert v.image((4000, 3000), max_pixels=1_003_520).tokens == 1230
    assert v.image((10, 10)).patches == 16  # scaled up into min_pixels: 56 x 56


@pytest.mark.parametrize("size", [(448, 448), (1280, 720), (333, 1000), (20, 20), (4000, 3000), (28, 5000)])
@pytest.mark.parametrize("bounds", [(3136, 12_845_056), (3136, 1_003_520), (200_000, 400_000)])
def test_qwen_resize_matches_transformers(size: tuple[int, int], bounds: tuple[int, int]) -> None:
    qwen = pytest.importorskip("transformers.models.qwen2_vl.image_processing_pil_qwen2_vl")
    from automodel.catalog.towers import smart_resize

    height, width = qwen.smart_resize(size[1], size[0], 28, *bounds)
    assert smart_resize(size[0], size[1], 28, *bounds) == (width, height)

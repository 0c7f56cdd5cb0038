"""trainer/modeling.py: the engine's model operations on tiny models built from config dicts (CPU)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

import torch.distributed as dist  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from automodel.catalog.errors import UserError  # noqa: E402
from automodel.trainer import loss as loss_fn  # noqa: E402
from automodel.trainer import modeling  # noqa: E402
from tests.catalog.configs import tiny_llama  # noqa: E402

TINY_LLAMA = tiny_llama(vocab_size=128, intermediate_size=96, max_position_embeddings=256, tie_word_embeddings=False)

TINY_WHISPER = {
    "model_type": "whisper",
    "architectures": ["WhisperForConditionalGeneration"],
    "vocab_size": 96,
    "d_model": 32,
    "encoder_layers": 2,
    "decoder_layers": 3,
    "encoder_attention_heads": 2,
    "decoder_attention_heads": 2,
    "encoder_ffn_dim": 64,
    "decoder_ffn_dim": 64,
    "num_mel_bins": 16,
    "max_source_positions": 32,
    "max_target_positions": 32,
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "decoder_start_token_id": 1,
}


def _batch(seed: int = 0, batch: int = 2, seq: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, TINY_LLAMA["vocab_size"], (batch, seq), generator=gen)
    labels = ids.clone()
    labels[:, :3] = -100  # a masked prompt
    return ids, labels


def test_build_model_is_seeded_and_meta_has_no_storage():
    a = modeling.build_model(TINY_LLAMA, device="cpu", seed=3)
    b = modeling.build_model(TINY_LLAMA, device="cpu", seed=3)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    meta = modeling.build_model(TINY_LLAMA)
    assert all(p.is_meta for p in meta.parameters())
    assert a.config._attn_implementation == modeling.ATTN_IMPLEMENTATION
    assert a.training


def test_decoder_blocks_text_and_encoder_decoder():
    assert len(modeling.decoder_blocks(modeling.build_model(TINY_LLAMA))) == 2
    whisper_blocks = modeling.decoder_blocks(modeling.build_model(TINY_WHISPER))
    assert len(whisper_blocks) == 2 + 3
    assert {type(b).__name__ for b in whisper_blocks} == {"WhisperEncoderLayer", "WhisperDecoderLayer"}


def _analytic_lora_params(model: torch.nn.Module, rank: int, names: set[str] | None) -> int:
    total = 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and name != "lm_head":
            if names is None or name.rsplit(".", 1)[-1] in names:
                total += rank * (module.in_features + module.out_features)
    return total


@pytest.mark.parametrize("targets", ["all-linear", ("q_proj", "v_proj")])
def test_apply_lora_trains_exactly_the_adapters(targets):
    model = modeling.build_model(TINY_LLAMA, device="cpu", seed=0)
    expected = _analytic_lora_params(model, 4, None if targets == "all-linear" else set(targets))
    base_params = sum(p.numel() for p in model.parameters())
    peft_model = modeling.apply_lora(model, rank=4, alpha=8, dropout=0.0, targets=targets)
    trainable = [(n, p) for n, p in peft_model.named_parameters() if p.requires_grad]
    assert sum(p.numel() for _, p in trainable) == expected
    assert all("lora_" in n for n, _ in trainable)
    assert not any("lm_head" in n for n, _ in trainable)
    assert sum(p.numel() for p in peft_model.parameters()) == base_params + expected
    # The hand-check of the formula for one layer: q (64->64), k/v (64->32) at r=4.
    if targets != "all-linear":
        assert expected == 2 * (4 * (64 + 64) + 4 * (64 + 32))


def test_apply_lora_unknown_target_is_a_user_error():
    model = modeling.build_model(TINY_LLAMA)
    with pytest.raises(UserError) as err:
        modeling.apply_lora(model, rank=4, alpha=8, dropout=0.0, targets=("nope_proj",))
    assert err.value.field == "lora_targets"


def test_cast_for_training_dtypes():
    model = modeling.apply_lora(
        modeling.build_model(TINY_LLAMA, device="cpu", seed=0), rank=2, alpha=4, dropout=0.0
    )
    modeling.cast_for_training(model, "bf16-mixed")
    for p in model.parameters():
        assert p.dtype == (torch.float32 if p.requires_grad else torch.bfloat16)
    modeling.cast_for_training(model, "bf16")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def _loss(model, ids, labels):  # noqa: ANN001, ANN202
    """The engine's one loss (trainer/loss.py)."""
    return loss_fn.causal_lm_loss(model, {"input_ids": ids, "labels": labels})


def _plain_loss(logits, labels):  # noqa: ANN001, ANN202
    """Summed fp32 cross-entropy of next-token prediction over every position's logits."""
    vocab = logits.shape[-1]
    return F.cross_entropy(logits[:, :-1].float().reshape(-1, vocab), labels[:, 1:].reshape(-1), reduction="sum")


def _grads(grad_ckpt: bool) -> dict[str, torch.Tensor]:
    model = modeling.build_model(TINY_LLAMA, device="cpu", seed=1)
    if grad_ckpt:
        modeling.enable_grad_ckpt(model)
    ids, labels = _batch()
    _loss(model, ids, labels).backward()
    return {n: p.grad for n, p in model.named_parameters()}


def test_grad_ckpt_gives_the_same_grads():
    plain, ckpt = _grads(False), _grads(True)
    assert plain.keys() == ckpt.keys()
    for name in plain:
        torch.testing.assert_close(ckpt[name], plain[name], rtol=1e-5, atol=1e-6, msg=name)


@pytest.fixture
def one_rank_gloo():
    dist.init_process_group("gloo", rank=0, world_size=1, store=dist.HashStore())
    try:
        yield
    finally:
        dist.destroy_process_group()


@pytest.mark.usefixtures("one_rank_gloo")
def test_shard_model_one_rank_matches_unsharded():
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor

    ids, labels = _batch()
    reference = modeling.build_model(TINY_LLAMA, device="cpu", seed=2)
    ref_loss = _plain_loss(reference(input_ids=ids, use_cache=False).logits, labels)
    ref_loss.backward()

    model = modeling.build_model(TINY_LLAMA, device="cpu", seed=2)
    modeling.shard_model(model, init_device_mesh("cpu", (1,)), precision="fp32")
    assert isinstance(model, FSDPModule)
    assert all(isinstance(b, FSDPModule) for b in modeling.decoder_blocks(model))
    assert all(isinstance(p, DTensor) for p in model.parameters())
    loss = _loss(model, ids, labels)  # the head's weight is the root's unsharded parameter
    loss.backward()
    torch.testing.assert_close(loss, ref_loss)
    ref_grads = dict(reference.named_parameters())
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.grad.full_tensor(), ref_grads[name].grad, msg=name)


@pytest.mark.usefixtures("one_rank_gloo")
def test_shard_model_bf16_mixed_computes_in_bf16():
    from torch.distributed.device_mesh import init_device_mesh

    model = modeling.build_model(TINY_LLAMA, device="cpu", seed=2)
    modeling.cast_for_training(model, "bf16-mixed")
    modeling.shard_model(model, init_device_mesh("cpu", (1,)), precision="bf16-mixed")
    ids, labels = _batch()
    logits = model(input_ids=ids, use_cache=False).logits
    assert logits.dtype == torch.bfloat16
    _loss(model, ids, labels).backward()
    # Master weights and their reduced gradients stay fp32.
    assert {p.grad.dtype for p in model.parameters()} == {torch.float32}


@pytest.mark.parametrize(("name", "states"), [("adamw", 2), ("sgd", 0)])
def test_build_optimizer_covers_only_trainable_params(name, states):
    model = modeling.apply_lora(
        modeling.build_model(TINY_LLAMA, device="cpu", seed=0), rank=2, alpha=4, dropout=0.0
    )
    opt = modeling.build_optimizer(model, name=name, lr=1e-3)
    params = [p for group in opt.param_groups for p in group["params"]]
    assert {id(p) for p in params} == {id(p) for p in model.parameters() if p.requires_grad}
    ids, labels = _batch()
    _loss(model, ids, labels).backward()
    opt.step()
    tensors = [v for p in params for v in opt.state[p].values() if v.ndim > 0]
    assert len(tensors) == states * len(params)


TINY_QWEN2_VL = {
    "model_type": "qwen2_vl",
    "architectures": ["Qwen2VLForConditionalGeneration"],
    "text_config": {
        "vocab_size": 256,
        "hidden_size": 64,
        "intermediate_size": 96,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]},
    },
    "vision_config": {
        "depth": 3,
        "embed_dim": 32,
        "hidden_size": 64,
        "num_heads": 2,
        "mlp_ratio": 2,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
    },
    "image_token_id": 250,
    "video_token_id": 251,
    "vision_start_token_id": 252,
}


def test_vlm_blocks_include_the_vision_tower_but_lora_only_the_language_model():
    model = modeling.build_model(TINY_QWEN2_VL)
    assert len(modeling.decoder_blocks(model)) == 2 + 3
    assert len(modeling.decoder_blocks(modeling.language_model(model))) == 2
    names = modeling.lora_target_names(model, "all-linear")
    assert len(names) == 2 * 7 and all(".language_model." in n for n in names)
    assert modeling.lora_target_names(model, ("q_proj",)) == [
        f"model.language_model.layers.{i}.self_attn.q_proj" for i in range(2)
    ]


def test_architectures_without_sdpa_fall_back_to_eager_attention():
    gemma2 = tiny_llama(model_type="gemma2", architectures=["Gemma2ForCausalLM"], vocab_size=128,
                        intermediate_size=96, head_dim=16)
    assert modeling.build_model(gemma2).config._attn_implementation == "eager"


def test_the_loss_under_autocast_matches_the_plain_loss():
    model = modeling.build_model(TINY_LLAMA, device="cpu", seed=4)
    ids, labels = _batch()
    expected = _plain_loss(model(input_ids=ids, use_cache=False).logits, labels)
    torch.testing.assert_close(_loss(model, ids, labels), expected)
    with modeling.compute_autocast("fp32", "cpu"):
        assert not torch.is_autocast_enabled("cpu")
    with modeling.compute_autocast("bf16-mixed", "cpu"):
        bf16_loss = _loss(model, ids, labels)
    assert bf16_loss.dtype == torch.float32
    torch.testing.assert_close(bf16_loss, expected, rtol=0.05, atol=0.0)


def test_qlora_quantization_config_is_nf4_double_quant_bf16_compute():
    config = modeling.qlora_quantization_config()  # transformers builds it without bitsandbytes installed
    assert config.load_in_4bit and not config.load_in_8bit
    assert config.bnb_4bit_quant_type == "nf4" and config.bnb_4bit_use_double_quant
    assert config.bnb_4bit_compute_dtype == torch.bfloat16
    assert modeling.qlora_quantization_kwargs() == {
        "load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True,
        "bnb_4bit_compute_dtype": torch.bfloat16,
    }


def test_the_one_eager_list_matches_transformers_for_every_catalog_architecture():
    """catalog.architecture.EAGER_ATTENTION is the engine's, the simulator's and the estimator's list: it must
    name exactly the catalog's architectures whose transformers class has no SDPA path."""
    from automodel.catalog.architecture import EAGER_ATTENTION, attention_implementation
    from automodel.catalog.errors import UserError
    from automodel.catalog.params import hf_config_from_dict, model_class_for
    from automodel.catalog.registry import load_catalog

    seen = {}
    for spec in load_catalog().models:
        model_type = spec.config["model_type"]
        if model_type in seen:
            continue
        try:
            auto, hf_config = model_class_for(spec.config), hf_config_from_dict(spec.config)
        except UserError:  # remote-code architectures (phi3small): automodel never builds them
            continue
        cls = auto._model_mapping[type(hf_config)]
        seen[model_type] = cls._supports_sdpa
    assert {t for t, sdpa in seen.items() if not sdpa} == {t for t in seen if t in EAGER_ATTENTION}
    assert attention_implementation("gemma2") == "eager" and attention_implementation("llama") == "sdpa"
    assert attention_implementation("gemma2", "flash_attention_2") == "flash_attention_2"

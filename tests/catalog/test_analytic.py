"""The analytic estimator on a tiny config: pinned byte counts and the directions terms must move."""

from __future__ import annotations

import pytest

from automodel.catalog.memory.analytic import ADAMW8_BYTES, NF4_BYTES, estimate_analytic
from automodel.catalog.memory.plan import Plan
from tests.catalog.configs import tiny_llama

# 2 layers, hidden 64, 4 heads / 2 kv heads (head_dim 16), MLP 128, vocab 100, untied.
TINY = tiny_llama()
LAYER = 64 * 64 + 2 * 64 * 32 + 64 * 64 + 3 * 64 * 128 + 2 * 64  # attention + MLP + 2 norms = 36,992
P = 2 * LAYER + 2 * 100 * 64 + 64  # layers + embedding + head + final norm = 86,848
LINEARS = 2 * (LAYER - 128)  # every nn.Linear in the blocks


def est(**kw: object):
    return estimate_analytic(TINY, Plan(**kw))


def test_full_bf16_mixed_pins_weights_grads_optimizer() -> None:
    e = est(method="full", precision="bf16-mixed", optimizer="adamw")
    assert e.params == P == 86_848
    assert e.trainable_params == P
    assert e.weights == 4 * P  # fp32 master weights
    assert e.gradients == 4 * P
    assert e.optimizer == 8 * P  # two fp32 AdamW states
    assert e.adapter_weights == 0 and e.kv_cache == 0


def test_pure_bf16_and_fp32_and_sharding() -> None:
    assert est(method="full", precision="bf16").optimizer == 4 * P  # torch keeps states in the param dtype
    assert est(method="full", precision="fp32").weights == 4 * P
    four = est(method="full", precision="bf16-mixed", gpus=4)
    assert four.weights == P and four.gradients == P and four.optimizer == 2 * P


def test_lora_pins_adapters() -> None:
    e = est(method="lora", lora_rank=8, lora_targets="q_proj,v_proj", precision="bf16-mixed")
    adapters = 2 * 8 * ((64 + 64) + (64 + 32))  # two layers x (q: 64->64, v: 64->32)
    assert e.trainable_params == adapters == 3584
    assert e.weights == 2 * P  # frozen base in bf16
    assert e.adapter_weights == 4 * adapters and e.gradients == 4 * adapters and e.optimizer == 8 * adapters
    all_linear = est(method="lora", lora_rank=8)
    assert all_linear.trainable_params == 2 * 8 * sum(i + o for i, o in
                                                      [(64, 64), (64, 32), (64, 32), (64, 64),
                                                       (64, 128), (64, 128), (128, 64)])


def test_qlora_and_8bit_optimizer() -> None:
    e = est(method="qlora", lora_rank=8)
    assert e.weights == int(LINEARS * NF4_BYTES + (P - LINEARS) * 2)
    e8 = est(method="full", optimizer="adamw-8bit")
    assert e8.optimizer == int(P * ADAMW8_BYTES)
    assert est(method="full", optimizer="sgd").optimizer == 0


def test_logits_formula() -> None:
    # Plain loss: fp32 log-softmax output + its incoming gradient + the input gradient, whatever the dtype
    e = est(method="lora", seq_len=512, micro_batch=3, precision="bf16", chunked_loss=False)
    assert e.logits == 12 * 100 * 512 * 3
    assert est(method="lora", seq_len=512, precision="fp32", chunked_loss=False).logits == 12 * 100 * 512
    # Chunked loss: target rows + their gradient (2 c h t) and one chunk of 2^24 / V tokens' logits:
    # fp32 plus the c-byte matmul output (bf16), or the fp32 tensor alone (fp32).
    chunk = 2**24 // 100 - (2**24 // 100) % 8
    tokens = 512 * 3
    assert est(method="lora", seq_len=512, micro_batch=3, precision="bf16").logits == \
        2 * 2 * 64 * tokens + (4 + 2) * 100 * min(chunk, tokens)
    assert est(method="lora", seq_len=512, precision="fp32").logits == 2 * 4 * 64 * 512 + 4 * 100 * 512
    big = est(method="lora", seq_len=4096, micro_batch=64, precision="bf16")  # more tokens than one chunk
    assert big.logits == 2 * 2 * 64 * 4096 * 64 + 6 * 100 * chunk


def test_inference_kv_cache_formula() -> None:
    e = est(mode="inference", method="full", seq_len=1000, new_tokens=24, micro_batch=2, precision="bf16")
    assert e.kv_cache == 2 * 2 * 2 * 16 * (1000 + 24) * 2 * 2  # 2 x layers x kv_heads x head_dim x len x b x c
    assert e.gradients == e.optimizer == 0 and e.weights == 2 * P
    assert e.logits == (2 + 4) * 100 * 2  # generate keeps the last position only


@pytest.mark.parametrize("method", ["full", "lora", "qlora"])
def test_monotone(method: str) -> None:
    short, long = est(method=method, seq_len=256), est(method=method, seq_len=4096)
    assert long.activations > short.activations and long.peak_allocated > short.peak_allocated
    no_ckpt = est(method=method, seq_len=4096, grad_ckpt=False)
    assert no_ckpt.activations > long.activations
    assert est(method=method, micro_batch=4).peak_allocated > est(method=method).peak_allocated
    one, eight = est(method=method, gpus=1), est(method=method, gpus=8)
    assert eight.weights < one.weights and eight.optimizer <= one.optimizer


def test_lora_below_full_and_reserved_above_allocated() -> None:
    big = {**TINY, "hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 8,
           "num_attention_heads": 16, "num_key_value_heads": 4, "vocab_size": 32000}
    full = estimate_analytic(big, Plan(method="full"))
    lora = estimate_analytic(big, Plan(method="lora"))
    qlora = estimate_analytic(big, Plan(method="qlora"))
    assert qlora.peak_allocated < lora.peak_allocated < full.peak_allocated
    for e in (full, lora, qlora):
        assert e.peak_reserved > e.peak_allocated + e.overhead - 1
        assert e.peak_allocated >= e.weights + e.optimizer
        assert e.assumptions and all(isinstance(a, str) and a for a in e.assumptions)


def test_vlm_images_add_tokens_and_asr_frames() -> None:
    vlm = {**TINY, "model_type": "qwen2_vl", "vision_config": {"embed_dim": 32, "depth": 2, "num_heads": 2,
                                                                "hidden_size": 64}}
    none = estimate_analytic(vlm, Plan(method="lora", seq_len=128))
    two = estimate_analytic(vlm, Plan(method="lora", seq_len=128, images=2, image_size=448))
    assert two.logits == none.logits * (128 + 2 * 256) // 128
    assert any("image" in a for a in two.assumptions)
    whisper = {"model_type": "whisper", "d_model": 64, "encoder_layers": 2, "decoder_layers": 2,
               "encoder_attention_heads": 4, "decoder_attention_heads": 4, "encoder_ffn_dim": 128,
               "decoder_ffn_dim": 128, "vocab_size": 100}
    inf = estimate_analytic(whisper, Plan(mode="inference", method="full", seq_len=4, new_tokens=60,
                                          precision="bf16"))
    assert inf.kv_cache == 2 * 2 * 4 * 16 * 2 * (4 + 60 + 1500)  # self + cross-attention caches


def test_one_gpu_is_autocast_not_fsdp() -> None:
    one, two = est(method="full", gpus=1), est(method="full", gpus=2)
    assert one.comm_buffers == 0 and two.comm_buffers > 0  # the trainer shards only across processes
    # autocast: every linear reading a shared input keeps its own bf16 copy (q, k, v: 3 instead of 1)
    mixed = est(method="lora", seq_len=1024, grad_ckpt=False, precision="bf16-mixed")
    pure = est(method="lora", seq_len=1024, grad_ckpt=False, precision="bf16")
    extra_per_token_layer = 2 * 64 * (2 + 1)  # q/k/v: 2 more copies, gate/up: 1 more, of c x hidden
    assert mixed.activations - pure.activations == 2 * 1024 * extra_per_token_layer
    # full bf16-mixed keeps an fp32 residual stream: checkpointed block inputs are 4 bytes, not 2
    ckpt_mixed = est(method="full", seq_len=1024, precision="bf16-mixed")
    ckpt_pure = est(method="full", seq_len=1024, precision="bf16")
    assert ckpt_mixed.activations > ckpt_pure.activations


def test_eager_attention_scores_are_quadratic() -> None:
    def acts(cfg: dict, seq: int) -> int:
        return estimate_analytic(cfg, Plan(method="full", precision="bf16", seq_len=seq, grad_ckpt=False)).activations

    gemma2 = {**TINY, "model_type": "gemma2", "head_dim": 16, "sliding_window": 4096}
    assert acts(TINY, 2048) == 2 * acts(TINY, 1024)  # SDPA: linear in length
    grow = acts(gemma2, 2048) - 2 * acts(gemma2, 1024)
    # scores: layers x heads x s^2 x (fp32 softmax + bf16 cast + bf16 tanh) + 2 bf16 masks of s^2
    assert grow == 2 * 4 * (2048**2 - 2 * 1024**2) * (4 + 2 + 2) + 2 * 2 * (2048**2 - 2 * 1024**2)
    assert any("eager attention" in a for a in estimate_analytic(gemma2, Plan()).assumptions)


def test_gradient_accumulation_keeps_gradients() -> None:
    one = est(method="full", precision="bf16-mixed", seq_len=4096, grad_ckpt=False)
    four = est(method="full", precision="bf16-mixed", seq_len=4096, grad_ckpt=False, grad_accum=4)
    assert four.peak_allocated == one.peak_allocated + one.gradients  # start of backward: + every gradient
    sharded = est(method="full", precision="bf16-mixed", seq_len=4096, grad_ckpt=False, gpus=4, grad_accum=4)
    plain = est(method="full", precision="bf16-mixed", seq_len=4096, grad_ckpt=False, gpus=4)
    # The trainer reduce-scatters every micro batch: what is held is the fp32 gradient shard, T x 4 / 4,
    # not T x 4 unsharded on every GPU (which skipping the sync until the last micro batch would hold).
    assert plain.gradients == 4 * P // 4
    assert sharded.comm_buffers == plain.comm_buffers
    assert sharded.peak_allocated == pytest.approx(plain.peak_allocated + plain.gradients, abs=2)
    assert any("sharded" in a and "every micro batch" in a for a in sharded.assumptions)
    # Checkpointed, the peak is late in backward, where this backward's block gradients are added into the
    # held ones, not allocated beside them: accumulation adds at most the gradients, never twice.
    ckpt = est(method="full", precision="bf16-mixed", seq_len=64, grad_ckpt=True, gpus=4)
    ckpt4 = est(method="full", precision="bf16-mixed", seq_len=64, grad_ckpt=True, gpus=4, grad_accum=4)
    assert 0 < ckpt4.peak_allocated - ckpt.peak_allocated <= ckpt.gradients + 2


def test_llama2_7b_lora_per_token_figures_in_docs_memory() -> None:
    """docs/memory.md's worked example: Llama-2-7B, LoRA r=8 on q,v, bf16."""
    from automodel.catalog.architecture import dims_from_config
    from automodel.catalog.memory.activations import Trainable, decoder_layer_bytes

    llama2_7b = tiny_llama(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                           num_attention_heads=32, num_key_value_heads=32, vocab_size=32000)
    d = dims_from_config(llama2_7b)
    per_layer = decoder_layer_bytes(d, Trainable(full=False, adapted=frozenset({"q_proj", "v_proj"}), rank=8), 2)
    assert per_layer == 139_944  # "≈ 140 KB per token per layer"
    assert round(per_layer * d.layers / 1e6, 1) == 4.5  # "4.5 MB per token for 32 layers"


def test_qlora_on_an_moe_says_why_the_experts_stay_bf16() -> None:
    from automodel.catalog.registry import find_model

    est = estimate_analytic(find_model("qwen3-30b-a3b").config, Plan(method="qlora"))
    line = next(a for a in est.assumptions if a.startswith("QLoRA on this MoE"))
    assert "128 experts" in line and "stay bf16" in line and "nn.Linear" in line
    dense = estimate_analytic(find_model("qwen3-8b").config, Plan(method="qlora"))
    assert not any(a.startswith("QLoRA on this MoE") for a in dense.assumptions)

"""trainer/loss.py: the chunked linear + cross-entropy equals the plain loss, values and gradients."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from automodel.catalog.memory.activations import loss_chunk_tokens  # noqa: E402
from automodel.trainer import loss, modeling  # noqa: E402
from tests.catalog.configs import tiny_llama  # noqa: E402


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Three target tokens per chunk, so every test crosses several chunks and a ragged last one."""
    monkeypatch.setattr(loss, "loss_chunk_tokens", lambda vocab: 3)


def _batch(vocab: int, *, rows: int = 2, seq: int = 12) -> dict[str, torch.Tensor]:
    ids = torch.randint(0, vocab, (rows, seq), generator=torch.Generator().manual_seed(1))
    labels = ids.clone()
    labels[:, :4] = -100  # a prompt: not targets
    labels[1, -3:] = -100  # padding
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def _loss_and_grads(model, batch, **kwargs):  # noqa: ANN001, ANN202
    model.zero_grad(set_to_none=True)
    value = loss.causal_lm_loss(model, batch, **kwargs)
    value.backward()
    return value.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_same(model, batch, rtol=1e-5, atol=1e-6) -> None:  # noqa: ANN001
    ref, ref_grads = _loss_and_grads(model, batch, chunked=False)
    got, grads = _loss_and_grads(model, batch)
    torch.testing.assert_close(got, ref, rtol=rtol, atol=atol)
    assert grads.keys() == ref_grads.keys() and grads
    for name, grad in grads.items():
        torch.testing.assert_close(grad, ref_grads[name], rtol=rtol, atol=atol, msg=name)


CONFIGS = {
    "llama": tiny_llama(vocab_size=96),
    "llama-tied": tiny_llama(vocab_size=96, tie_word_embeddings=True),
    # Gemma 2 soft-caps its final logits (tanh(x / 30) x 30); a small cap makes the tanh matter.
    "gemma2-softcap": {**tiny_llama(vocab_size=96), "model_type": "gemma2", "architectures": ["Gemma2ForCausalLM"],
                       "head_dim": 16, "final_logit_softcapping": 2.0, "query_pre_attn_scalar": 16},
    "cohere-scale": {**tiny_llama(vocab_size=96), "model_type": "cohere", "architectures": ["CohereForCausalLM"],
                     "logit_scale": 0.5},
    "granite-scaling": {**tiny_llama(vocab_size=96), "model_type": "granite", "architectures": ["GraniteForCausalLM"],
                        "logits_scaling": 4.0},
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_full_finetuning_matches_the_plain_loss(name, small_chunks):
    model = modeling.build_model(CONFIGS[name], device="cpu", seed=0)
    _assert_same(model, _batch(96))


def test_lora_matches_the_plain_loss(small_chunks):
    model = modeling.apply_lora(modeling.build_model(CONFIGS["llama"], device="cpu", seed=0), rank=4, alpha=8,
                                dropout=0.0)
    for name, p in model.named_parameters():  # B starts at zero: give it values so A's gradient is not 0
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.1)
    _assert_same(model, _batch(96))


def test_a_head_bias_no_grad_and_chunk_sizes():
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(11, 8, generator=gen, requires_grad=True)
    weight = torch.randn(40, 8, generator=gen, requires_grad=True)
    bias = torch.randn(40, generator=gen, requires_grad=True)
    targets = torch.randint(0, 40, (11,), generator=gen)
    ref = torch.nn.functional.cross_entropy(hidden @ weight.t() + bias, targets, reduction="sum")
    ref_grads = torch.autograd.grad(ref * 3, (hidden, weight, bias))
    for chunk in (1, 4, 11, 64):
        got = loss.linear_cross_entropy(hidden, weight, bias, targets, chunk=chunk)
        grads = torch.autograd.grad(got * 3, (hidden, weight, bias))
        torch.testing.assert_close(got, ref)
        for g, r in zip(grads, ref_grads, strict=True):
            torch.testing.assert_close(g, r)
    with torch.no_grad():
        torch.testing.assert_close(loss.linear_cross_entropy(hidden, weight, bias, targets, chunk=4), ref)


def test_bf16_autocast_computes_like_the_plain_head():
    """Under autocast the head runs in bf16 like nn.Linear's, the softmax in fp32: the plain loss's
    rounding, not fp32 tolerance (the engine's GPU path; CPU runs are fp32)."""
    model = modeling.build_model(CONFIGS["llama"], device="cpu", seed=0)
    batch = _batch(96)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref, ref_grads = _loss_and_grads(model, batch, chunked=False)
        got, grads = _loss_and_grads(model, batch)
    torch.testing.assert_close(got, ref, rtol=2e-3, atol=1e-2)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, ref_grads[name], rtol=3e-2, atol=3e-3, msg=name)


def test_collator_targets_equal_the_labels_shift():
    labels = torch.tensor([[-100, 5, 6, -100], [-100, -100, 7, 8]])
    got = loss.target_positions(labels)
    assert got["target_positions"].tolist() == [0, 1, 5, 6]  # position p predicts label p + 1
    assert got["target_ids"].tolist() == [5, 6, 7, 8]


def test_the_chunk_rule_bounds_the_logits():
    assert loss_chunk_tokens(128_256) == 128 and loss_chunk_tokens(128_256) * 128_256 <= 2**24
    assert loss_chunk_tokens(10**9) == 8 and loss_chunk_tokens(96) % 8 == 0


def test_the_config_turns_it_off():
    model = modeling.build_model(CONFIGS["llama"], device="cpu", seed=0)
    seen: list[str] = []
    original = loss.linear_cross_entropy
    loss.linear_cross_entropy = lambda *a, **k: seen.append("chunked") or original(*a, **k)
    try:
        loss.use_chunked_loss(model, False)
        loss.causal_lm_loss(model, _batch(96))
        assert seen == []
        loss.use_chunked_loss(model, True)
        loss.causal_lm_loss(model, _batch(96))
        assert seen == ["chunked"]
    finally:
        loss.linear_cross_entropy = original


# Two gloo ranks, FSDP2, full fine-tuning with tied embeddings: the head's weight is the root's
# unsharded DTensor-backed parameter; the reduce-scattered gradient shards must equal the plain loss's.
_FSDP = """
import json, sys, torch, torch.distributed as dist, torch.multiprocessing as mp
from torch.distributed.device_mesh import init_device_mesh
from automodel.trainer import loss, modeling

config, port = json.loads(sys.argv[1]), sys.argv[2]

def rank_step(rank):
    dist.init_process_group("gloo", rank=rank, world_size=2, init_method=f"tcp://127.0.0.1:{port}")
    model = modeling.build_model(config, device="cpu", seed=0)
    modeling.shard_model(model, init_device_mesh("cpu", (2,)), precision="fp32")
    ids = torch.randint(0, config["vocab_size"], (2, 10), generator=torch.Generator().manual_seed(rank))
    batch = {"input_ids": ids, "labels": ids}
    grads = []
    for chunked in (False, True):
        model.zero_grad(set_to_none=True)
        value = loss.causal_lm_loss(model, batch, chunked=chunked)
        value.backward()
        grads.append({n: p.grad.to_local().clone() for n, p in model.named_parameters()})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-5, atol=1e-6, msg=name)
    dist.destroy_process_group()

mp.start_processes(rank_step, nprocs=2, start_method="fork")
"""


def test_fsdp2_gradients_match_the_plain_loss():
    import json
    import socket
    import subprocess
    import sys

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    done = subprocess.run([sys.executable, "-c", _FSDP, json.dumps(CONFIGS["llama-tied"]), str(port)],
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]

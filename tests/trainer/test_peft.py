"""trainer/peft.py: the checks a qlora run makes before loading anything, and the 4-bit preparation + LoRA
on a tiny model (CPU; bitsandbytes is not needed: the model is marked 4-bit the way transformers marks it)."""

from __future__ import annotations

import pytest

from automodel.catalog.errors import UserError
from automodel.trainer import peft
from automodel.trainer.config import PeftConfig

TINY_LLAMA = {
    "model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 128, "hidden_size": 64,
    "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
    "max_position_embeddings": 64, "tie_word_embeddings": False,
}


def test_lora_needs_nothing_from_the_machine() -> None:
    peft.check_runtime(PeftConfig(method="lora"), world_size=8, cuda=False)
    peft.check_runtime(PeftConfig(method="none"), world_size=8, cuda=False)


@pytest.mark.parametrize(("world", "cuda", "bnb", "needle"), [
    (2, True, True, "qlora runs in one process, not 2"),
    (1, True, False, "qlora needs the bitsandbytes package"),
    (1, False, False, "qlora needs the bitsandbytes package"),
])
def test_qlora_gaps_are_one_user_error_naming_peft_method(monkeypatch, world, cuda, bnb, needle) -> None:
    real = peft.importlib.util.find_spec
    monkeypatch.setattr(peft.importlib.util, "find_spec",
                        lambda name, *a: (real("json") if bnb else None) if name == "bitsandbytes" else real(name, *a))
    with pytest.raises(UserError) as err:
        peft.check_runtime(PeftConfig(method="qlora"), world_size=world, cuda=cuda)
    assert err.value.field == "peft.method" and needle in err.value.message
    assert "peft.method=lora" in (err.value.hint or "")


def test_qlora_with_everything_present_passes(monkeypatch) -> None:
    real = peft.importlib.util.find_spec
    monkeypatch.setattr(peft.importlib.util, "find_spec",
                        lambda name, *a: real("json") if name == "bitsandbytes" else real(name, *a))
    peft.check_runtime(PeftConfig(method="qlora"), world_size=1, cuda=True)


def test_qlora_on_the_cpu_runs_and_says_it_is_for_testing(monkeypatch, capsys) -> None:
    real = peft.importlib.util.find_spec
    monkeypatch.setattr(peft.importlib.util, "find_spec",
                        lambda name, *a: real("json") if name == "bitsandbytes" else real(name, *a))
    peft.check_runtime(PeftConfig(method="qlora"), world_size=1, cuda=False)
    err = capsys.readouterr().err
    assert "qlora on the CPU" in err and "for testing" in err
    peft.check_runtime(PeftConfig(method="qlora"), world_size=1, cuda=False, announce=False)  # other ranks
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("grad_ckpt", [True, False])
def test_prepare_quantized_then_adapt_trains_only_the_adapters(grad_ckpt: bool) -> None:
    torch = pytest.importorskip("torch")
    from automodel.trainer.modeling import build_model

    model = build_model(TINY_LLAMA, device="cpu", dtype=torch.bfloat16, seed=0)
    model.is_loaded_in_4bit = True  # what transformers sets after a bitsandbytes 4-bit load
    cfg = PeftConfig(method="qlora", rank=4, alpha=8)
    adapted = peft.adapt(peft.prepare_quantized(model, cfg, grad_ckpt=grad_ckpt), cfg)
    trainable = {n for n, p in adapted.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert len(trainable) == 2 * 7 * 2  # A and B on 7 linears per block, 2 blocks
    # peft upcasts every non-quantised parameter (here: all of them) to fp32 for stable training
    assert {p.dtype for p in adapted.parameters()} == {torch.float32}
    assert model.is_activation_checkpointing is grad_ckpt
    ids = torch.randint(0, 128, (2, 8), generator=torch.Generator().manual_seed(0))
    adapted(input_ids=ids, labels=ids, use_cache=False).loss.backward()
    assert all(p.grad is not None for p in adapted.parameters() if p.requires_grad)


def test_prepare_quantized_leaves_lora_models_alone() -> None:
    marker = object()
    assert peft.prepare_quantized(marker, PeftConfig(method="lora"), grad_ckpt=True) is marker  # type: ignore[arg-type]

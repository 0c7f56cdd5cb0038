"""bench/memory_accuracy.py: CSV rows become Plans by rule, out-of-scope rows say why, and the shipped
measurements stay within the issue's accuracy targets."""

from __future__ import annotations

import pytest

from tests.conftest import load_script

bench = load_script("bench/memory_accuracy.py", "memory_accuracy")

ROW = {
    "source": "QwenLM/Qwen README.md", "model": "Qwen/Qwen-7B", "task": "SFT LLM", "method": "LoRA",
    "lora_rank": "64 (c_attn,c_proj,w1,w2; alpha 16)", "precision": "bf16", "optimizer": "AdamW",
    "seq_len": "2048", "micro_batch": "1", "grad_ckpt": "on", "num_gpus": "1", "sharding": "none",
    "gpu": "A100 80GB", "peak_mem_gb": "23.8", "measured_or_estimated": "measured", "notes": "",
}


def test_row_to_plan() -> None:
    item = bench.classify(ROW)
    assert isinstance(item, bench.Scoped)
    p = item.plan
    assert (p.method, p.lora_rank, p.seq_len, p.micro_batch, p.grad_ckpt, p.precision) == (
        "lora", 64, 2048, 1, True, "bf16-mixed")
    assert p.lora_targets == ("c_attn", "c_proj", "w1", "w2")
    assert item.measure == "reserved" and item.measured_bytes == pytest.approx(23.8 * 1024**3)


@pytest.mark.parametrize(("change", "reason"), [
    ({"notes": "torch.compile"}, "torch.compile"),
    ({"optimizer": "bnb PagedAdamW"}, "paged"),
    ({"optimizer": "AdamW + optimizer_in_bwd"}, "optimizer-in-backward"),
    ({"sharding": "DeepSpeed ZeRO-3 + CPU offload"}, "offload"),
    ({"sharding": "DeepSpeed ZeRO-2"}, "DeepSpeed"),
    ({"peak_mem_gb": ">80 (OOM)"}, "bound"),
    ({"measured_or_estimated": "estimated"}, "rule of thumb"),
    ({"model": "org/unknown-model"}, "no offline config"),
])
def test_out_of_scope_reasons(change: dict[str, str], reason: str) -> None:
    item = bench.classify({**ROW, **change})
    assert isinstance(item, bench.OutOfScope) and reason in item.reason


def test_inference_row_and_like_with_like() -> None:
    row = {**ROW, "model": "Qwen/Qwen2.5-0.5B-Instruct", "task": "inference (HF generate)", "method": "none",
           "seq_len": "30720 input + 2048 generated", "grad_ckpt": "n/a", "notes": "max_memory_allocated"}
    item = bench.classify(row)
    assert isinstance(item, bench.Scoped)
    assert (item.plan.mode, item.plan.seq_len, item.plan.new_tokens, item.measure) == (
        "inference", 30720, 2048, "allocated")


def test_shipped_measurements_meet_the_targets() -> None:
    report = bench.run(bench.DATA / "measured-memory.csv")
    s = report["summary"]
    assert s["rows"] >= 15 and len(report["out_of_scope"]) >= 30
    assert s["median_abs_error"] <= 0.10 and s["p90_abs_error"] <= 0.25
    assert s["accelerate_median_abs_error"] > 3 * s["median_abs_error"]


def test_ddp_rows_estimate_one_replica() -> None:
    item = bench.classify({**ROW, "num_gpus": "4", "sharding": "DDP"})
    assert isinstance(item, bench.Scoped) and item.ddp and item.plan.gpus == 1
    fsdp = bench.classify({**ROW, "num_gpus": "4", "sharding": "FSDP2 fully_shard"})
    assert isinstance(fsdp, bench.Scoped) and not fsdp.ddp and fsdp.plan.gpus == 4

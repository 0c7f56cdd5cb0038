"""One command that checks the engine on one GPU: measured memory beside the estimate, tokens/s and MFU.

    python bench/gpu_check.py [--out gpu_check.json] [--steps 5]     # one H100/H200: a few minutes
    python bench/gpu_check.py --smoke                                # tiny models on the CPU, seconds

Rows (random weights, real architectures from the catalog's embedded configs, the engine's own code:
`simulate.prepare_model` builds, adapts, casts and checkpoints the model as the trainer does, the
optimizer is `modeling.build_optimizer`, the step is the recipe's: autocast forward through the task's
loss (trainer/loss.py: chunked), backward, optimizer step):
- Llama-3.2-1B, LoRA r16 all-linear and full, 512 x 8 and 2048 x 2 tokens, bf16-mixed, checkpointing;
- the same LoRA 2048 x 2 with `chunked_loss` off (what the chunked loss saves) and with activation
  offloading (what it saves, and what it costs in tokens/s);
- full 512 x 8 with `optimizer.name: adamw-8bit` (bitsandbytes' 8-bit AdamW: what it saves);
- a QLoRA step (the random base saved, then loaded as NF4 through bitsandbytes, as the recipe does);
- Qwen2-VL-2B LoRA with one 448 px image, and Whisper-small full at batch 16, through the vlm and asr
  task adapters.

Per row: peak allocated and reserved (torch.cuda.max_memory_*; reserved is the allocator's, without the
CUDA context) beside the analytic estimate's (`peak_reserved - overhead` for reserved), tokens/s over
the measured steps, and MFU = tokens/s x model FLOPs per token / the GPU's dense bf16 peak from the
catalog (`bf16_tflops`). Model FLOPs per token: 6 N (full) or 4 N (LoRA and QLoRA: no weight
gradients of the base) over the matmul parameters N (the head included, the embedding lookup not),
plus causal attention 6 x layers x hidden x seq; recomputation under checkpointing is not counted
(as in MFU's definition, Chowdhery et al. 2022). Prints a table and writes the rows as JSON.

`--smoke` runs every row on tiny configs (2 layers, hidden 64) on the CPU with one measured step and
no memory figures: it keeps this script from rotting (tests/bench/test_gpu_check.py).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
GIB = 2**30
LLAMA = "llama-3.2-1b"
TINY_LLAMA = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 64,
              "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 2, "vocab_size": 128, "max_position_embeddings": 4096}


def llm_rows(smoke: bool) -> list[dict[str, Any]]:
    shapes = ((32, 2), (64, 1)) if smoke else ((512, 8), (2048, 2))
    rows = [{"name": f"{method} {seq}x{batch}", "method": method, "seq": seq, "batch": batch}
            for method in ("lora", "full") for seq, batch in shapes]
    seq, batch = shapes[1]
    rows += [
        {"name": f"lora {seq}x{batch} plain loss", "method": "lora", "seq": seq, "batch": batch, "chunked_loss": False},
        {"name": f"lora {seq}x{batch} offload", "method": "lora", "seq": seq, "batch": batch,
         "offload_activations": True},
        {"name": f"qlora {shapes[0][0]}x{shapes[0][1]}", "method": "qlora", "seq": shapes[0][0], "batch": shapes[0][1]},
        {"name": f"full {shapes[0][0]}x{shapes[0][1]} adamw-8bit", "method": "full", "seq": shapes[0][0],
         "batch": shapes[0][1], "optimizer": "adamw-8bit"},
    ]
    return rows


def plan_for(row: dict[str, Any], *, cuda: bool) -> Any:
    from automodel.catalog.memory.plan import Plan

    return Plan(method=row["method"], lora_rank=16, precision="bf16-mixed" if cuda else "fp32", seq_len=row["seq"],
                micro_batch=row["batch"], grad_ckpt=True, gpus=1, chunked_loss=row.get("chunked_loss", True),
                offload_activations=row.get("offload_activations", False), images=row.get("images", 0),
                optimizer=row.get("optimizer", "adamw"),
                image_size=row.get("image_size", 448), audio_seconds=30.0)


def flops_per_token(config: dict[str, Any], method: str, seq: int, params: int) -> float:
    """Model FLOPs per trained token (see the module docstring)."""
    from automodel.catalog.architecture import dims_from_config

    d = dims_from_config(config)
    matmul = params - (0 if d.tied_embeddings else d.params.embedding)
    return (6 if method == "full" else 4) * matmul + 6 * d.layers * d.hidden * seq


def build(config: dict[str, Any], plan: Any, device: str, workdir: Path) -> Any:
    """The model as the recipe builds it for this plan (QLoRA: through a saved base, quantised as it loads)."""
    import torch

    from automodel.trainer import modeling, simulate
    from automodel.trainer.loss import use_chunked_loss

    if plan.method != "qlora":
        return simulate.prepare_model(config, plan, None, device=device, seed=0)
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    modeling.import_bitsandbytes_offline()
    base = workdir / "qlora-base"
    hf_logging.disable_progress_bar()
    modeling.build_model(config, device=device, dtype=torch.bfloat16, seed=0).save_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(
        base, dtype=torch.bfloat16, quantization_config=modeling.qlora_quantization_config(),
        device_map={"": torch.cuda.current_device() if device == "cuda" else "cpu"})
    hf_logging.enable_progress_bar()
    model.config.use_cache = False
    model = modeling.prepare_for_kbit_training(model, grad_ckpt=plan.grad_ckpt)
    use_chunked_loss(model, plan.chunked_loss)
    return modeling.apply_lora(model, rank=plan.lora_rank, alpha=2 * plan.lora_rank, dropout=0.0)


def llm_batch(config: dict[str, Any], plan: Any, device: str) -> dict[str, Any]:
    import torch

    from automodel.trainer.loss import target_positions

    vocab = config.get("vocab_size") or config["text_config"]["vocab_size"]
    ids = torch.randint(0, vocab, (plan.micro_batch, plan.seq_len), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids, **target_positions(ids)}
    return {k: v.to(device) for k, v in batch.items()}


def run_row(row: dict[str, Any], config: dict[str, Any], batch_fn: Any, loss_fn: Any, *, steps: int,
            device: str, gpu: Any, workdir: Path) -> dict[str, Any]:
    """Build, warm up, measure `steps` steps; the row's figures beside the analytic estimate."""
    import torch

    from automodel.catalog.memory.estimate import estimate
    from automodel.trainer import modeling
    from automodel.trainer.offload import offloaded_activations

    cuda = device == "cuda"
    plan = plan_for(row, cuda=cuda)
    model = build(config, plan, device, workdir)
    optimizer = modeling.build_optimizer(model, name=plan.optimizer, lr=1e-5, fused=cuda)
    batch = batch_fn(config, plan, device)
    tokens = int(batch["attention_mask"].sum()) if "attention_mask" in batch else batch["labels"].numel()

    def step() -> None:
        with modeling.compute_autocast(plan.precision, device), offloaded_activations(plan.offload_activations):
            loss = loss_fn(model, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(1 if device == "cpu" else 2):  # warm-up: optimizer states exist, kernels are chosen
        step()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if cuda:
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    est = estimate(config, plan)
    tok_s = tokens * steps / elapsed
    out = {**row, "status": "ok", "tokens_per_s": tok_s,
           "est_allocated_gib": est.peak_allocated / GIB, "est_reserved_gib": (est.peak_reserved - est.overhead) / GIB}
    if gpu is not None and gpu.bf16_tflops:
        out["mfu"] = tok_s * flops_per_token(config, plan.method, plan.seq_len, est.params) / (gpu.bf16_tflops * 1e12)
    if cuda:
        out["allocated_gib"] = torch.cuda.max_memory_allocated() / GIB
        out["reserved_gib"] = torch.cuda.max_memory_reserved() / GIB
        out["alloc_error"] = out["est_allocated_gib"] / out["allocated_gib"] - 1
    return out


def task_rows(smoke: bool) -> list[tuple[dict[str, Any], str, dict[str, Any], Any]]:
    """(row, task, config, batch builder) for the vlm and asr rows."""
    from automodel.catalog.registry import resolve

    vlm_config = TINY_QWEN2_VL if smoke else resolve("qwen2-vl-2b-instruct").config
    asr_config = TINY_WHISPER if smoke else resolve("whisper-small").config
    return [
        ({"name": "vlm lora 1 image", "method": "lora", "seq": 64 if smoke else 512, "batch": 1, "images": 1,
          "image_size": 56 if smoke else 448}, "vlm", vlm_config, vlm_batch),
        ({"name": "asr full x16", "method": "full", "seq": 32 if smoke else 128, "batch": 2 if smoke else 16},
         "asr", asr_config, asr_batch),
    ]


def vlm_batch(config: dict[str, Any], plan: Any, device: str) -> dict[str, Any]:
    """One image of plan.image_size px per row, as Qwen2-VL's processor lays it out: patches of 14 px
    (x 2 frames x 3 channels), 2 x 2 of them merged into each image token."""
    import torch

    from automodel.trainer.loss import IGNORE_INDEX

    v = config["vision_config"]
    size = plan.image_size[0] if isinstance(plan.image_size, tuple | list) else plan.image_size
    side = size // v["patch_size"]
    image_tokens = side * side // v["spatial_merge_size"] ** 2
    vocab = config.get("vocab_size") or config["text_config"]["vocab_size"]
    ids = torch.randint(0, min(vocab, config["image_token_id"]), (plan.micro_batch, plan.seq_len + image_tokens))
    ids[:, 1 : 1 + image_tokens] = config["image_token_id"]
    labels = ids.clone()
    labels[:, : 1 + image_tokens] = IGNORE_INDEX
    patch = 3 * v["temporal_patch_size"] * v["patch_size"] ** 2
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels,
             "pixel_values": torch.randn(plan.micro_batch * side * side, patch),
             "image_grid_thw": torch.tensor([[1, side, side]] * plan.micro_batch),
             "mm_token_type_ids": (ids == config["image_token_id"]).long()}  # 1 marks image tokens (M-RoPE)
    return {k: t.to(device) for k, t in batch.items()}


def asr_batch(config: dict[str, Any], plan: Any, device: str) -> dict[str, Any]:
    """30 s of log-mel features per row and plan.seq_len decoder labels."""
    import torch

    frames = 2 * config.get("max_source_positions", 1500)
    feats = torch.randn(plan.micro_batch, config.get("num_mel_bins", 80), frames)
    labels = torch.randint(3, config["vocab_size"], (plan.micro_batch, plan.seq_len))
    return {"input_features": feats.to(device), "decoder_input_ids": labels.to(device), "labels": labels.to(device)}


def run(smoke: bool, steps: int, out: Path) -> list[dict[str, Any]]:
    import torch

    from automodel.catalog.registry import resolve
    from automodel.trainer.tasks import adapter_for, llm

    device = "cuda" if torch.cuda.is_available() and not smoke else "cpu"
    gpu = None
    if device == "cuda":
        from automodel.advisor.hardware import _catalog_gpu

        gpu = _catalog_gpu(torch.cuda.get_device_name())
    torch.manual_seed(0)
    config = TINY_LLAMA if smoke else resolve(LLAMA).config
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        plans = [(row, config, llm_batch, llm.forward_loss) for row in llm_rows(smoke)]
        plans += [(row, task_config, batch_fn, adapter_for(task).forward_loss)
                  for row, task, task_config, batch_fn in task_rows(smoke)]
        for row, row_config, batch_fn, loss_fn in plans:
            try:
                results.append(run_row(row, row_config, batch_fn, loss_fn, steps=steps, device=device, gpu=gpu,
                                       workdir=Path(tmp)))
            except Exception as err:  # a failing row is a finding: report it, go on with the others
                results.append({**row, "status": "error", "note": f"{type(err).__name__}: {err}".splitlines()[0]})
                traceback.print_exc(file=sys.stderr)
            print_row(results[-1])
            gc.collect()  # the row's model and optimizer are gone: measure the next one from a clean device
            if device == "cuda":
                torch.cuda.empty_cache()
    meta = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "torch": torch.__version__,
            "gpu_catalog": gpu.name if gpu else None, "bf16_tflops": gpu.bf16_tflops if gpu else None,
            "smoke": smoke, "steps": steps}
    out.write_text(json.dumps({"meta": meta, "rows": results}, indent=1) + "\n")
    return results


HEADER = f"{'row':28} {'status':7} {'alloc':>7} {'est':>7} {'err':>7} {'reserv':>7} {'est':>7} {'tok/s':>9} {'MFU':>6}"


def print_row(r: dict[str, Any]) -> None:
    def f(key: str, fmt: str) -> str:
        return format(r[key], fmt) if key in r else "-"

    line = (f"{r['name']:28} {r['status']:7} {f('allocated_gib', '7.2f'):>7} {f('est_allocated_gib', '7.2f'):>7} "
            f"{f('alloc_error', '+7.1%'):>7} {f('reserved_gib', '7.2f'):>7} {f('est_reserved_gib', '7.2f'):>7} "
            f"{f('tokens_per_s', '9.0f'):>9} {f('mfu', '6.1%'):>6}")
    print(line + (f"  {r['note']}" if "note" in r else ""), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny configs on the CPU, one step per row")
    parser.add_argument("--steps", type=int, default=None, help="measured steps per row (default 5; smoke 1)")
    parser.add_argument("--out", type=Path, default=Path("gpu_check.json"), help="JSON output file")
    args = parser.parse_args(argv)
    print(HEADER)
    print("(GiB per GPU: measured peak allocated and reserved, beside the analytic estimate's)")
    with contextlib.redirect_stdout(sys.stdout):
        rows = run(args.smoke, args.steps or (1 if args.smoke else 5), args.out)
    print(f"wrote {args.out}")
    return 0 if all(r["status"] != "error" for r in rows) else 1


TINY_QWEN2_VL = {
    "model_type": "qwen2_vl", "architectures": ["Qwen2VLForConditionalGeneration"],
    "text_config": {"vocab_size": 256, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
                    "num_attention_heads": 4, "num_key_value_heads": 2, "bos_token_id": 1, "eos_token_id": 2,
                    "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]}},
    "vision_config": {"depth": 2, "embed_dim": 32, "hidden_size": 64, "num_heads": 2, "mlp_ratio": 2,
                      "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2},
    "image_token_id": 250, "video_token_id": 251, "vision_start_token_id": 252,
}
TINY_WHISPER = {
    "model_type": "whisper", "architectures": ["WhisperForConditionalGeneration"], "vocab_size": 96, "d_model": 32,
    "encoder_layers": 2, "decoder_layers": 2, "encoder_attention_heads": 2, "decoder_attention_heads": 2,
    "encoder_ffn_dim": 64, "decoder_ffn_dim": 64, "num_mel_bins": 16, "max_source_positions": 32,
    "max_target_positions": 32, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, "decoder_start_token_id": 1,
}

if __name__ == "__main__":
    sys.exit(main())

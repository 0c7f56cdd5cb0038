"""The analytic memory estimate: closed-form bytes per GPU for one training step or one generate call.

`estimate_analytic(config, plan)` models what this repo's engine does (trainer/modeling.py): transformers
5 with SDPA attention, peft LoRA on the language model's linears, the `cast_for_training` dtypes, FSDP2
`fully_shard` per block + root, non-reentrant activation checkpointing per block, fused AdamW, and the
chunked fp32 cross-entropy (trainer/loss.py) counted over every position. Pure arithmetic, no torch:
milliseconds. Every term, formula and source is in docs/memory.md; the short version is in
`estimate_analytic`'s docstring.
"""

from __future__ import annotations

import math

from automodel.catalog.architecture import EAGER_ATTENTION, ArchDims, dims_from_config
from automodel.catalog.memory.activations import (
    FP32,
    Eager,
    Trainable,
    audio_encoder_bytes,
    chunked_loss_bytes,
    conv_front_end_bytes,
    decoder_layer_bytes,
    inference_layer_bytes,
    loss_chunk_tokens,
    sliding_mask_bytes,
    vit_layer_bytes,
)
from automodel.catalog.memory.host import with_host
from automodel.catalog.memory.inputs import (
    ctc_words,
    input_lines,
    lora_scope,
    pixel_bytes,
    positions,
    stack_words,
    vit_forward_bytes,
)
from automodel.catalog.memory.plan import MemoryEstimate, Plan

GIB = 1024**3
# bitsandbytes NF4 with double quantisation (Dettmers et al. 2023, QLoRA, Sec. 3): 4-bit codes, one 8-bit
# absmax per 64 weights, one fp32 second-level constant per 256 absmax blocks.
NF4_BYTES = 0.5 + 1 / 64 + FP32 / (64 * 256)
# bitsandbytes 8-bit AdamW: two uint8 states + one fp32 absmax per 256-value block for each (Dettmers et al.
# 2022, "8-bit Optimizers via Block-wise Quantization"); tensors under 4096 values stay 32-bit (ignored).
ADAMW8_BYTES = 2 + 2 * FP32 / 256
# Device-level memory outside the caching allocator: CUDA context, kernels, cuBLAS/cuDNN handles (measured
# 0.5-0.7 GiB on A100/H100 with torch 2.x lazy module loading), plus NCCL buffers when ranks talk.
CUDA_CONTEXT_BYTES = int(0.6 * GIB)
NCCL_BYTES = int(0.25 * GIB)
# Caching-allocator reserve over the allocated peak (block rounding, split blocks, freed-but-cached
# activations); calibrated on the reserved rows of bench/data/measured-memory.csv (docs/memory.md).
# A training step frees and re-allocates tensors of many sizes (activations, recomputed blocks,
# gradients); inference mostly grows one cache, so it fragments less.
FRAGMENTATION = 1.15
FRAGMENTATION_INFERENCE = 1.10


def fragmentation(plan: Plan) -> float:
    """peak_reserved / peak_allocated (before the CUDA context) for this plan's mode."""
    return FRAGMENTATION if plan.mode == "train" else FRAGMENTATION_INFERENCE


def reserve_model(plan: Plan) -> tuple[float, int]:
    """(allocator factor, overhead bytes) turning peak_allocated into peak_reserved: CUDA context, plus NCCL
    with more than one rank. Both engines (and their training and inference paths) use it."""
    return fragmentation(plan), CUDA_CONTEXT_BYTES + (NCCL_BYTES if plan.gpus > 1 else 0)


def _compute_bytes(plan: Plan) -> int:
    return 4 if plan.precision == "fp32" else 2


def _adapter_params(d: ArchDims, plan: Plan) -> int:
    if plan.method == "full":
        return 0
    lins = [lin for lin in d.matched_linears(plan.lora_targets) if lin.component != "vision"]
    return sum(plan.lora_rank * (lin.in_features + lin.out_features) * lin.count for lin in lins)


def _quantised_params(d: ArchDims) -> int:
    """Parameters bitsandbytes stores in NF4: every nn.Linear except the output head."""
    return sum(lin.params for lin in d.linears if lin.name != "lm_head")


def _qlora_weights(d: ArchDims, total: int, scale: float) -> float:
    """QLoRA base weights on one rank before sharding: the linears in NF4, everything else in bf16."""
    quant = _quantised_params(d) * scale
    return quant * NF4_BYTES + (total - quant) * 2


def estimate_analytic(config: dict[str, object], plan: Plan, *, params: int | None = None) -> MemoryEstimate:
    """Per-GPU peak memory of `plan` on the model `config` describes (N = plan.gpus, FSDP2 shards by N).

    Terms (bytes; P params, T trainable, A LoRA adapter params, c compute bytes: 2 bf16, 4 fp32):
    - weights: full: P x (4 bf16-mixed/fp32, 2 bf16) / N; lora: frozen base in the compute dtype, P x c / N;
      qlora: linears x 0.5159 (NF4 + double-quant constants) + the rest x 2, / N.
    - adapter_weights: A x (4 bf16-mixed/fp32, 2 bf16) / N; A = r x (in + out) per adapted linear.
    - gradients: T x (dtype of the trainable param) / N, alive from backward to the step.
    - optimizer: AdamW 2 states in the param dtype (8 B/param for fp32 masters); 8-bit AdamW 2.03 B/param;
      SGD 0. The engine's AdamW on CUDA is torch's fused kernel: no state-sized temporary in the step
      (foreach AdamW would add one, the sqrt of exp_avg_sq).
    - activations: per-token bytes per block from activations.py x layers x tokens (no grad ckpt), or
      block inputs (c x h per token per layer) + one recomputed block (grad ckpt); plus ViT/encoder parts.
    - logits: the chunked loss (trainer/loss.py, default): 2 x c x hidden x tokens (target rows and their
      gradient) + one chunk of min(tokens, 2^24 / vocab) tokens x vocab x (4 + c, + 4 soft-capped); with
      every weight training the head's gradient is made in the loss's forward, and on one GPU the fp32
      head's bf16 cast. chunked_loss off: 12 x vocab x tokens (at the log-softmax backward its saved fp32
      output, the fp32 incoming gradient and the fp32 input gradient). Every position counts: exact when
      every token is a target, an upper bound with answer-only loss (the engine computes target positions only).
    - kv_cache (inference): 2 x layers x kv_heads x head_dim x (prompt + new) x batch x c (sliding-window
      layers keep the window); generate keeps only the last position's logits.
    - comm_buffers (N > 1, FSDP2): unsharded compute copies of the root (embeddings, head, norms) through
      forward and backward and of the running + prefetched block, plus one block's unsharded gradient
      (c + 4 fp32 reduce) and the root's. N = 1 with bf16-mixed: torch.autocast instead, whose bf16
      weight copies (full) and per-linear input copies are counted in activations.
    - overhead: CUDA context 0.6 GiB (+0.25 GiB NCCL with N > 1), in peak_reserved only.
    peak_allocated = resident + max(start of backward, a block's backward, optimizer step); peak_reserved =
    peak_allocated x 1.15 (training; 1.10 inference: caching allocator) + overhead.
    """
    d = dims_from_config(config)
    total = params if params is not None else d.total_params
    scale = total / d.total_params  # a caller's exact count rescales every weight-proportional term
    n = plan.gpus
    c = _compute_bytes(plan)
    seq, patches, frames = positions(d, plan, config)
    b = plan.micro_batch
    assumptions = _assumptions(plan, d, config)
    if plan.mode == "inference":
        return _inference(d, plan, total, scale, c, seq, patches, frames, assumptions, config)

    full = plan.method == "full"
    param_bytes = 4 if plan.precision in ("bf16-mixed", "fp32") else 2  # storage of trainable params
    adapters = _adapter_params(d, plan)
    frozen = (d.audio.frozen_params if d.audio is not None else 0) * scale  # never trained, even in full
    trainable = total - frozen if full else adapters
    if full:
        weights = (total - frozen) * param_bytes + frozen * c
    elif plan.method == "lora":
        weights = total * c
    else:
        weights = _qlora_weights(d, total, scale)
    weights /= n
    adapter_weights = adapters * param_bytes / n
    gradients = trainable * param_bytes / n
    if plan.optimizer == "adamw":  # torch's fused AdamW (trainer/modeling.build_optimizer): no temporary
        optimizer, step_tmp = 2 * trainable * param_bytes / n, 0.0
    elif plan.optimizer == "adamw-8bit":
        optimizer, step_tmp = trainable * ADAMW8_BYTES / n, 0.0
    else:
        optimizer, step_tmp = 0.0, 0.0
    if plan.cpu_offload:  # FSDP2 CPUOffloadPolicy: shards, their grads and the step live in host memory
        weights = adapter_weights = gradients = optimizer = step_tmp = 0.0

    adapted = frozenset(lin.name for lin in d.matched_linears(plan.lora_targets)) if not full else frozenset()
    autocast_1gpu = n == 1 and plan.precision == "bf16-mixed"  # the trainer: no FSDP2, torch.autocast
    tr = Trainable(full=full, adapted=adapted, rank=plan.lora_rank, own_copies=autocast_1gpu)
    eager = _eager(d, config, seq)
    per_layer_tok = decoder_layer_bytes(d, tr, c, cross_tokens_ratio=frames / seq if frames else 0.0, eager=eager)
    tokens = b * seq
    block = per_layer_tok * tokens
    # Vision tower and audio encoder blocks are checkpointed like the text blocks.
    vit_layer = vit_layer_bytes(d.vision, c, full) * b * patches if d.vision is not None else 0.0
    enc_layer, front = 0.0, 0.0
    if d.audio is not None:
        trains_audio = full or d.model_type == "whisper"  # LoRA on Whisper reaches encoder linears too
        per_frame, _ = audio_encoder_bytes(d.audio, c, trains_audio)
        enc_layer = per_frame * b * frames
        front = conv_front_end_bytes(d.audio, plan.audio_seconds, c, full) * b
        if trains_audio and d.model_type == "whisper":  # the encoder's final LayerNorm keeps an fp32 input copy
            front += FP32 * d.audio.width * b * frames
    vit_depth = d.vision.depth if d.vision is not None else 0
    enc_depth = d.audio.layers if d.audio is not None else 0
    layers = d.layers
    if plan.offload_activations:  # saved tensors wait on the host: the device holds the block backward is at
        layers, vit_depth, enc_depth = 1, min(vit_depth, 1), min(enc_depth, 1)
    head_in = (FP32 * d.hidden + (2 * c * d.hidden if full else 0)) * tokens  # final norm (+ head input)
    head_in += 2 * c * d.head_dim * tokens  # rotary cos/sin
    head_in += eager.masks(b, c) if eager else sliding_mask_bytes(d, b, seq, seq)
    # A VLM batch holds its fp32 pixel_values through the step; the tower's forward (before the language
    # model's) has one block's working set live on top of what the tower saves.
    pixels = pixel_bytes(d.vision) * b * patches if d.vision is not None else 0.0
    vit_fwd = vit_forward_bytes(d.vision, c) * b * patches if d.vision is not None else 0.0
    head_in += pixels
    if d.audio is not None:  # the batch's fp32 log-mel features or raw samples, held through the step
        head_in += d.audio.input_bytes(plan.audio_seconds) * b
    stream = FP32 if autocast_1gpu and full else c  # fp32 embeddings make the residual stream fp32
    if plan.grad_ckpt:
        kept = stream * d.hidden * tokens * layers + head_in + front
        kept += c * (d.vision.width if d.vision else 0) * b * patches * vit_depth * (1 if full else 0)
        kept += c * (d.audio.width if d.audio else 0) * b * frames * enc_depth * (1 if enc_layer else 0)
        recompute = max(block, vit_layer, enc_layer)  # one block's tensors, rebuilt in its backward
    else:
        kept = block * layers + vit_layer * vit_depth + enc_layer * enc_depth + head_in + front
        recompute = 0.0
    activations = kept + recompute
    # While a block runs backward, the gradients of its largest intermediates are live too.
    inter = d.experts_per_tok * d.moe_intermediate if d.num_experts else d.intermediate
    bwd_work = (c * inter * (3 if d.mlp == "gated" else 2) + 2 * c * d.hidden) * tokens
    if eager is not None:
        bwd_work = max(bwd_work, eager.backward_per_token(d) * tokens)
    # The loss. Chunked (the engine's default, trainer/loss.py): the target rows and their gradient plus one
    # chunk's logits; with every weight training, the head's gradient is made in the loss's forward (in the
    # dtype the forward sees the head in: FSDP2's unsharded compute copy, else the parameter's), and on one
    # GPU under autocast the fp32 head is cast to the compute dtype for the chunk matmuls. Plain: every
    # position's logits; at the log-softmax backward the fp32 log-softmax output, its incoming gradient
    # and the input gradient are live (12 B); in forward c + 4 + 4 <= 12.
    head_params = d.params.lm_head or d.params.embedding  # tied: the embedding matrix is the head
    head_grad_fwd = 0.0
    if chunked_loss(plan, d):
        softcap = config.get("final_logit_softcapping") is not None or \
            (isinstance(config.get("text_config"), dict) and config["text_config"].get("final_logit_softcapping") is not None)
        logits = chunked_loss_bytes(d.vocab, d.hidden, tokens, c, softcap=softcap)
        if full:
            head_grad_fwd = head_params * scale * (c if n > 1 else param_bytes)
            logits += 2 * head_params * scale if autocast_1gpu else 0
        # at the loss's end: on one GPU with fp32 masters the head's gradient, accumulated in the compute
        # dtype over the chunks, is cast to fp32 (both copies live for that moment)
        cast = head_params * scale * c if full and n == 1 and param_bytes != c else 0.0
        loss_fwd = logits + head_grad_fwd + cast
        loss_saved = c * d.hidden * tokens + head_grad_fwd  # the gradients it hands to backward
    else:
        logits = 12 * d.vocab * tokens
        loss_fwd = (c + 8) * d.vocab * tokens  # logits, fp32 copy, log-softmax
        loss_saved = logits

    root, blocks, block_grad, root_grad = _fsdp_buffers(d, plan, full, scale, c)
    comm = root + blocks + block_grad + root_grad
    resident = weights + adapter_weights + optimizer
    # Gradients arrive block by block (each reduce-scattered to its shard); the root's (embeddings, head)
    # stay unsharded until the root's backward ends: the head's from the first step of backward.
    block_share = d.params.layers / d.total_params if full else 1.0
    grads_blocks = gradients * block_share
    head_grad = root_grad * (d.params.lm_head / max(1, d.params.embedding + d.params.lm_head)) if not \
        d.tied_embeddings else root_grad
    # One GPU, bf16-mixed, full: autocast caches a bf16 copy of every linear weight through the forward
    # (and, without checkpointing, autograd keeps them for backward).
    weight_casts = 2 * _quantised_params(d) * scale if autocast_1gpu and full else 0.0
    # Gradient accumulation: the earlier micro batches' gradients are live through the next forward and
    # backward. Under FSDP2 the trainer reduce-scatters every micro batch (trainer/recipe.py), so they are
    # the sharded gradients, T x (param dtype) / N, the gradients term (one GPU: the same, unsharded).
    # Backward adds each block's new gradient into them as it comes (a per-block transient, in in_block),
    # so the gradients made in this backward are already inside `held`.
    held = gradients if plan.grad_accum > 1 else 0.0
    made = max(grads_blocks, held)
    fwd_end = held + kept + loss_fwd + root + weight_casts
    # every saved tensor at the loss's backward; FSDP2 blocks are not gathered yet
    start_bwd = held + kept + loss_saved + root + (0.0 if plan.grad_ckpt else weight_casts)
    in_block = bwd_work + root + blocks + block_grad + head_grad  # a block's backward
    if weight_casts and plan.grad_ckpt:  # the recomputed block casts its weights again
        in_block += 2 * d.params_per_layer * scale
    if plan.grad_ckpt:  # bound the block inputs still saved and the gradients made by their totals
        end_bwd = made + kept + recompute + in_block
    else:  # top block: every activation still saved; bottom block: every block's gradient made
        end_bwd = max(held + kept + in_block, made + block + in_block)
    root_bwd = made + root + root_grad * (1 + (4 / c if plan.precision == "bf16-mixed" else 0))
    end_bwd = max(end_bwd, root_bwd)  # the root's unsharded gradients and their fp32 reduce copy
    step = gradients + step_tmp
    vit_saved = vit_layer * vit_depth if not plan.grad_ckpt else c * (d.vision.width if d.vision else 0) * b * \
        patches * vit_depth * (1 if full else 0)
    vision = held + pixels + vit_saved + vit_fwd + weight_casts  # the vision tower's forward
    peak_alloc = resident + max(fwd_end, start_bwd, end_bwd, step, vision)
    factor, overhead = reserve_model(plan)
    return with_host(MemoryEstimate(
        engine="analytic", params=int(total), trainable_params=int(trainable), weights=int(weights),
        adapter_weights=int(adapter_weights), gradients=int(gradients), optimizer=int(optimizer),
        activations=int(activations), logits=int(logits), kv_cache=0, comm_buffers=int(comm),
        overhead=overhead, peak_allocated=int(peak_alloc), peak_reserved=int(math.ceil(peak_alloc * factor)) + overhead,
        assumptions=tuple(assumptions),
    ), d, plan)


def chunked_loss(plan: Plan, d: ArchDims) -> bool:
    """Whether the engine's loss for this plan is the chunked one (trainer/loss.py): language-model heads
    (llm, vlm) with `plan.chunked_loss`; the speech adapter's losses (Whisper's decoder cross-entropy,
    CTC) take the full logits."""
    return plan.chunked_loss and d.audio is None


def _fsdp_buffers(d: ArchDims, plan: Plan, full: bool, scale: float, c: int) -> tuple[float, float, float, float]:
    """FSDP2 transients with more than one rank (the trainer shards only then):
    (root params, block params, one block's gradient buffers, root gradients), bytes.

    root: the root module's parameters (embeddings, head, final norm) unsharded in the compute dtype from
    the root's forward to its backward (FSDP2 does not reshard the root after forward); blocks: the
    running and the prefetched block; full training only: one block's unsharded gradient in the compute
    dtype plus its fp32 reduce-scatter copy, and the root's unsharded gradients in the compute dtype.
    One rank: nothing (QLoRA: one linear dequantised from NF4 at a time)."""
    block = d.params_per_layer * scale
    root_params = (d.params.embedding + d.params.lm_head + d.params.final_norm) * scale
    live_blocks = 2
    if plan.gpus == 1:  # the trainer shards only with more than one process: nothing is gathered
        if plan.method != "qlora":
            return 0.0, 0.0, 0.0, 0.0
        # QLoRA: each linear's NF4 weight is dequantised for its matmul (forward and backward), one at a time.
        largest = max((lin.in_features * lin.out_features for lin in d.linears), default=0)
        return 0.0, largest * c * scale, 0.0, 0.0
    per_param = NF4_BYTES if plan.method == "qlora" else c
    root, blocks = root_params * c, live_blocks * block * per_param
    if not full:
        return root, blocks, 0.0, 0.0
    return root, blocks, block * (c + (4 if plan.precision == "bf16-mixed" else 0)), root_params * c


def _eager(d: ArchDims, config: dict[str, object], seq: int) -> Eager | None:
    if d.model_type not in EAGER_ATTENTION:
        return None
    softcap = d.model_type == "gemma2" and config.get("attn_logit_softcapping", 50.0) is not None
    return Eager(seq=seq, softcap=softcap, mask_kinds=2 if d.sliding_layers else 1)


def _inference(d: ArchDims, plan: Plan, total: int, scale: float, c: int, seq: int, patches: int, frames: int,
               assumptions: list[str], config: dict[str, object]) -> MemoryEstimate:
    """Weights + KV cache + the prefill's largest transient + the last position's fp32 logits."""
    b = plan.micro_batch
    weights = (_qlora_weights(d, total, scale) if plan.method == "qlora" else total * c) / plan.gpus
    adapters = _adapter_params(d, plan) * c / plan.gpus
    length = seq + plan.new_tokens
    kv_per_layer = 2 * d.kv_heads * d.head_dim * c * b
    if d.kind == "encoder":
        kv = 0.0
    else:
        window = d.sliding_window or length
        kv = kv_per_layer * ((d.layers - d.sliding_layers) * length + d.sliding_layers * min(window, length))
    kv += kv_per_layer * d.layers * frames  # Whisper cross-attention cache over encoder frames
    eager = _eager(d, config, seq)
    prefill = inference_layer_bytes(d, c, eager) * b * seq
    prefill += eager.masks(b, c) if eager else sliding_mask_bytes(d, b, seq, seq)
    if d.vision is not None and patches:
        v = d.vision
        prefill = max(prefill, (2 * c * v.width + c * v.mlp_dim * (3 if v.mlp_gated else 2)) * b * patches)
    if d.audio is not None and d.audio.kind == "whisper":
        a = d.audio
        prefill = max(prefill, (2 * c * a.width + 2 * c * a.ffn) * b * frames)
    logits = (c + FP32) * d.vocab * b * (seq if d.kind == "encoder" else 1)
    comm = 0.0
    if plan.gpus > 1:  # the engine serves a sharded model through FSDP2: root + running/prefetched block
        root, blocks, _, _ = _fsdp_buffers(d, plan, False, scale, c)
        comm = root + blocks
    peak = weights + adapters + kv + prefill + logits + comm
    factor, overhead = reserve_model(plan)
    return MemoryEstimate(
        engine="analytic", params=int(total), trainable_params=0, weights=int(weights),
        adapter_weights=int(adapters), gradients=0, optimizer=0, activations=int(prefill), logits=int(logits),
        kv_cache=int(kv), comm_buffers=int(comm), overhead=overhead, peak_allocated=int(peak),
        peak_reserved=int(math.ceil(peak * factor)) + overhead, assumptions=tuple(assumptions),
    )


def _assumptions(plan: Plan, d: ArchDims, config: dict[str, object]) -> list[str]:
    """What stack the numbers assume, and where a user's stack may differ."""
    attention = (f"eager attention ({d.model_type} has no SDPA path in transformers 5: batch x heads x seq x "
                 "seq scores are materialised)" if d.model_type in EAGER_ATTENTION else
                 "SDPA attention (flash/memory-efficient kernels, no seq x seq scores), no padding mask"
                 + (" (GQA without repeat_kv copies)" if d.kv_heads != d.heads else ""))
    out = [
        f"Stack: transformers 5 with {attention}; torch caching allocator.",
        f"{plan.gpus} GPU(s): FSDP2 fully_shard per block + root shards weights, gradients and optimizer "
        "state evenly; weight-proportional terms are divided by the GPU count." if plan.gpus > 1 else
        "1 GPU: no FSDP2 (the trainer shards only across processes); bf16-mixed runs under torch.autocast, "
        "which keeps a bf16 copy of each linear's input (and, training every weight, of each weight).",
        *input_lines(d, plan, config),
    ]
    if plan.mode == "inference":
        out.append("Inference: HF generate with a dynamic KV cache in the compute dtype; prefill keeps only the "
                   "last position's logits (fp32); vLLM/paged caches or quantised KV caches use less.")
        return out
    precision = {
        "bf16-mixed": "bf16-mixed: trainable parameters in fp32 (master weights, fp32 gradients and AdamW "
                      "state), frozen parameters in bf16, compute in bf16 (FSDP2 MixedPrecisionPolicy).",
        "bf16": "bf16: parameters, gradients and AdamW states all bf16.",
        "fp32": "fp32: parameters, activations, gradients and states all fp32.",
    }[plan.precision]
    out.append(precision)
    if plan.method != "full":
        out.append(f"LoRA r={plan.lora_rank} on {lora_scope(d)} ({'all-linear' if plan.lora_targets == 'all-linear' else ','.join(plan.lora_targets)}); "
                   "lora_dropout 0 (dropout > 0 saves an extra copy of each adapted input).")
    if plan.method == "qlora":
        out.append("QLoRA: bitsandbytes NF4 with double quantisation for every linear but the head "
                   "(0.516 B/param), bf16 compute; needs bitsandbytes (a CUDA GPU for real training).")
        if d.num_experts:
            experts = d.moe_layers * d.num_experts * 3 * d.hidden * d.moe_intermediate
            out.append(f"QLoRA on this MoE: its {d.num_experts} experts per layer ({experts / 1e9:.1f}B of "
                       f"{d.total_params / 1e9:.1f}B parameters) stay bf16: transformers 5 stores them as fused "
                       "3-D expert tensors, not nn.Linear modules, and bitsandbytes quantises only nn.Linear (so "
                       "LoRA cannot target them either); only the attention projections are NF4.")
    out.append({
        "adamw": "AdamW (torch, fused kernel on CUDA): two states in the parameter dtype and no state-sized "
                 "temporary in the step (foreach AdamW would add one); paged/offloaded optimizers save more.",
        "adamw-8bit": "8-bit AdamW (bitsandbytes): two uint8 states + fp32 block scales (2.03 B/param).",
        "sgd": "SGD without momentum: no optimizer state.",
    }[plan.optimizer])
    out.append(f"Activations: Korthikanti et al. 2022 recounted for {stack_words(d)}; "
               + ("gradient checkpointing keeps block inputs and recomputes one block at a time."
                  if plan.grad_ckpt else "no checkpointing: every block's saved tensors live until backward."))
    if d.model_type == "wav2vec2":  # CTC over frames, not next-token cross-entropy
        out.append(ctc_words(d))
    elif chunked_loss(plan, d):
        out.append(f"Logits: the engine's chunked linear + cross-entropy computes the head and the fp32 loss "
                   f"{loss_chunk_tokens(d.vocab)} tokens at a time (2^24 logits) and makes the gradients in the "
                   "forward: one chunk's logits plus the target rows and their gradient, never the full logits; "
                   "every position counted as a target (an upper bound with answer-only loss).")
    else:
        out.append("Logits: chunked loss off: every position's logits, fp32 cross-entropy (c-byte logits + fp32 "
                   "log-softmax + two fp32 gradients): exact for completion or packed data, where every token is a "
                   "target; an upper bound with answer-only loss (the engine computes logits only at target tokens).")
    if plan.grad_accum > 1:
        out.append(f"Gradient accumulation over {plan.grad_accum} micro batches: gradients live through every "
                   "forward and backward" + (", sharded (FSDP2 reduce-scatters every micro batch: communication "
                   "grows with accumulation, memory does not)." if plan.gpus > 1 else "."))
    if plan.offload_activations:
        out.append("Activation offloading: the tensors autograd saves (block inputs with checkpointing) wait in "
                   "host memory; the device holds one block's at a time in backward (host RAM and PCIe time not "
                   "counted here).")
    out.append("Not modelled: torch.compile, DeepSpeed, optimizer-in-backward, "
               "packed-sequence masks.")
    return out

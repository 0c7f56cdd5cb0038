"""Bytes autograd keeps per token for one transformer block, and the inference working set.

Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer Models", Sec. 4.1)
count a GPT block as s·b·h·(34 + 5·a·s/h) bytes in 16-bit. We recount tensor by tensor for what
transformers 5 + peft actually save in this repo's engine, which differs from their GPT in four ways:
- attention is SDPA (flash / memory-efficient kernels): no a·s² score or dropout tensors, only q, k, v,
  the output and a fp32 logsumexp per head (the 5·a·s/h term disappears);
- grouped-query attention: k and v are saved with kv_heads, not heads (`enable_gqa`, no repeat_kv copy);
- SwiGLU / GeGLU MLPs save gate, act(gate), up and their product (4 tensors of `intermediate`), not
  GELU's 2 tensors of 4h;
- RMSNorm (transformers' LlamaRMSNorm and kin) upcasts to fp32 and autograd keeps that fp32 copy;
  dropout is 0 in every modern checkpoint, so no masks.
Autograd saves a linear's input only when its weight (or a LoRA adapter on it) needs a gradient, so
`full` and `lora` differ in exactly those tensors. All counts are bytes per token (per position of the
sequence the block sees); `c` is the compute dtype's size (2 for bf16, 4 for fp32).
"""

from __future__ import annotations

from dataclasses import dataclass

from automodel.catalog.architecture import ArchDims
from automodel.catalog.towers import AudioDims, VisionDims

FP32 = 4
# I-sized tensors autograd keeps inside the activation: transformers' NewGELU/FastGELU are composed of
# Python ops (pow, tanh, two products), QuickGELU keeps x and sigmoid(1.702x); fused ops keep their input.
_ACT_SAVED = {"gelu_new": 4, "gelu_fast": 4, "gelu_python": 4, "quick_gelu": 2}


@dataclass(frozen=True)
class Trainable:
    """Which weights need gradients: every weight (`full`), or only LoRA adapters on `adapted` linears."""

    full: bool
    adapted: frozenset[str]
    rank: int
    # One GPU, bf16-mixed: no FSDP2, torch.autocast casts each linear's fp32 input (full: the fp32
    # residual stream; LoRA: peft's upcast to the fp32 adapter) to bf16 separately, and each matmul
    # keeps its own copy. Under FSDP2 the parameters are bf16 and every reader shares one tensor.
    own_copies: bool = False

    def needs_input(self, *names: str) -> bool:
        """Autograd saves a linear's input iff its weight or an adapter on it trains."""
        return self.full or any(n in self.adapted for n in names)

    def input_copies(self, *names: str) -> int:
        """How many c-byte copies of a shared input are saved by the linears reading it."""
        if not self.needs_input(*names):
            return 0
        if not self.own_copies:
            return 1
        return len(names) if self.full else sum(1 for n in names if n in self.adapted)

    def lora_extra(self, *names: str, c: int) -> int:
        """lora_A's output (r values) is saved for lora_B's weight gradient; dropout is 0 in this engine."""
        return sum(self.rank * c for n in names if n in self.adapted)


@dataclass(frozen=True)
class Eager:
    """Eager attention (transformers models without an SDPA path, e.g. Gemma 2's soft-capped attention):
    the (batch, heads, seq, seq) scores are materialised. Saved per score: the fp32 softmax output and its
    c-byte cast that multiplies v, plus tanh's output when logits are soft-capped; k and v are saved
    expanded to all heads (repeat_kv); a c-byte additive mask of batch x seq x seq per mask kind."""

    seq: int
    softcap: bool
    mask_kinds: int

    def per_token(self, d: ArchDims, c: int) -> float:
        cast = c if c != FP32 else 0  # in fp32 the softmax output is already the matmul's operand
        scores = d.heads * self.seq * (FP32 + cast + (c if self.softcap else 0))
        return scores + 2 * c * (d.heads - d.kv_heads) * d.head_dim

    def backward_per_token(self, d: ArchDims) -> float:
        """The fp32 gradient of the scores while one layer's attention runs backward."""
        return d.heads * self.seq * FP32

    def masks(self, batch: int, c: int) -> float:
        return float(self.mask_kinds * batch * self.seq * self.seq * c)


def decoder_layer_bytes(d: ArchDims, tr: Trainable, c: int, *, cross_tokens_ratio: float = 0.0,
                        eager: Eager | None = None) -> float:
    """Saved bytes per token for one text block (decoder layer; wav2vec2 encoder layer)."""
    h, hd = d.hidden, d.head_dim
    q, kv = d.heads * hd, d.kv_heads * hd
    names = {lin.name for lin in d.linears if lin.component == "text"}
    qkv = tuple(n for n in ("q_proj", "k_proj", "v_proj", "qkv_proj", "query_key_value", "c_attn") if n in names)
    o = next((n for n in ("o_proj", "dense", "out_proj", "c_proj") if n in names), "o_proj")
    # Norm: fp32 upcast of the input (RMSNorm) or the normalised input (LayerNorm), the bf16 normalised
    # value for the norm weight's gradient (full only) and the norm output that the projections read.
    # Gemma norms scale by (1 + w) in fp32, so the weight's gradient keeps the fp32 normalised value.
    w_keep = (FP32 if d.model_type.startswith("gemma") else c) if tr.full else 0

    if tr.full and tr.own_copies:
        w_keep = FP32  # the norm computes in fp32 (fp32 weights), its weight keeps the fp32 value

    def norm(out_read_by: tuple[str, ...]) -> float:
        return FP32 * h + FP32 + w_keep * h + c * h * tr.input_copies(*out_read_by)

    attn = norm(qkv)
    attn += c * (q + 2 * kv) + c * q + FP32 * d.heads  # q/k after RoPE, v, SDPA output, logsumexp
    attn += c * q if tr.needs_input(o) else 0  # transpose().contiguous() copy that o_proj reads
    if d.qk_norm:
        attn += FP32 * (q + kv) + w_keep * (q + kv)
    attn += tr.lora_extra(*qkv, o, c=c)
    if eager is not None:
        attn += eager.per_token(d, c)
    if d.norms_per_layer == 4:  # Gemma: post-attention and post-feedforward norms on the block outputs
        attn += 2 * (FP32 * h + FP32 + w_keep * h)
    if d.cross_attention:  # Whisper decoder: q/out per decoder token; k/v over encoder frames
        attn += norm(("q_proj",)) + c * 2 * q + FP32 * d.heads + (c * q if tr.needs_input("out_proj") else 0)
        # k/v over the encoder frames, and what their LoRA adapters keep: each one's copy of the encoder
        # states (own copies under autocast) and lora_A's output.
        attn += cross_tokens_ratio * (c * 2 * kv + c * h * tr.input_copies("k_proj", "v_proj")
                                      + tr.lora_extra("k_proj", "v_proj", c=c))
    mlp = mlp_bytes(d, tr, c)
    return attn + mlp


def mlp_bytes(d: ArchDims, tr: Trainable, c: int) -> float:
    """Saved bytes per token of the MLP half (its norm included); MoE counts routed tokens only."""
    h = d.hidden
    names = {lin.name for lin in d.linears if lin.component == "text"}
    up_names = tuple(n for n in ("gate_proj", "up_proj", "gate_up_proj", "fc1", "intermediate_dense", "w1", "w2", "c_fc",
                                "dense_h_to_4h") if n in names)
    down = next((n for n in ("down_proj", "fc2", "output_dense", "c_proj", "dense_4h_to_h") if n in names), "down_proj")
    w_keep = (FP32 if d.model_type.startswith("gemma") or tr.own_copies else c) if tr.full else 0
    norm = 0.0 if d.norms_per_layer == 1 else FP32 * h + FP32 + w_keep * h  # phi: one shared norm
    if d.num_experts:
        k, m = d.experts_per_tok, d.moe_intermediate
        routed = FP32 * 2 * d.num_experts + 2 * c * h * k  # router logits + probs, gathered inputs/outputs
        routed += c * k * m * (3 + (1 if tr.full else 0))  # experts are 3-D params: only `full` trains them
        norm += c * h
        shared = c * d.shared_expert_intermediate * (3 + (1 if tr.needs_input(down) else 0))
        dense_share = (d.layers - d.moe_layers) / d.layers
        dense = c * d.intermediate * (3 + (1 if tr.needs_input(down) else 0))
        return norm + (1 - dense_share) * (routed + shared) + dense_share * dense + tr.lora_extra(*up_names, down, c=c)
    norm += c * h * tr.input_copies(*up_names)
    inter = d.intermediate
    act = _ACT_SAVED.get(d.hidden_act, 1)
    if d.mlp == "gated":
        body = c * inter * (2 + act)  # what the activation keeps, act(gate) and up (the product's operands)
    else:
        body = c * inter * act  # what the activation keeps of fc1's output
    body += c * inter if tr.needs_input(down) else 0  # what the down projection reads
    return norm + body + tr.lora_extra(*up_names, down, c=c)


def vit_layer_bytes(v: VisionDims, c: int, full: bool) -> float:
    """Saved bytes per patch for one ViT block; a frozen tower (LoRA: the engine never adapts it) saves
    nothing because nothing inside it needs a gradient."""
    if not full:
        return 0.0
    w, m = v.width, v.mlp_dim
    norms = 2 * (FP32 * w + c * w + c * w)
    attn = c * 3 * w + c * w + FP32 * v.heads + c * w  # q, k, v, SDPA output, lse, proj input
    mlp = c * m * (4 if v.mlp_gated else 2)
    return norms + attn + mlp


def audio_encoder_bytes(a: AudioDims, c: int, trains: bool) -> tuple[float, float]:
    """(bytes per encoder frame per layer, bytes per sample of the conv front end) that autograd keeps.
    Whisper's encoder is a stack of LayerNorm/GELU blocks; wav2vec2's front end is 7 convolutions."""
    if not trains:
        return 0.0, 0.0
    if a.kind == "whisper":
        w = a.width
        per_frame = 2 * (FP32 * w + 2 * c * w) + c * 4 * w + FP32 * a.heads + c * w + 2 * c * a.ffn
        return per_frame, 0.0
    return 0.0, 0.0  # wav2vec2: see conv_front_end_bytes (depends on length, not on frames)


def conv_front_end_bytes(a: AudioDims, seconds: float, c: int, trains: bool) -> float:
    """wav2vec2 feature extractor: each conv's output and its GELU input are saved (per sample)."""
    if not trains or a.kind != "wav2vec2":
        return 0.0
    return sum(2 * c * ch * n for ch, n in zip(a.conv_channels, a.conv_lengths(seconds), strict=True))


def inference_layer_bytes(d: ArchDims, c: int, eager: Eager | None = None) -> float:
    """Largest working set inside one block during a no-grad prefill, per token: the residual stream,
    normalised input and embedding output plus the MLP's live intermediates (act(gate), up, product) or
    attention's q/k/v/output, whichever is larger (intermediates are freed as soon as consumed)."""
    h, q, kv = d.hidden, d.heads * d.head_dim, d.kv_heads * d.head_dim
    if d.num_experts:  # routed copies of the input and output, gate_up, act, product; shared expert
        k, m = d.experts_per_tok, d.moe_intermediate
        mlp = c * (2 * k * h + 4 * k * m + h) + c * d.shared_expert_intermediate * 3
    else:
        mlp = c * d.intermediate * (3 if d.mlp == "gated" else 2)
    attn = c * (2 * q + 2 * kv)
    if eager is not None:  # scores, fp32 softmax and its cast live at once for one layer
        attn += d.heads * eager.seq * (2 * c + FP32) + 2 * c * (d.heads - d.kv_heads) * d.head_dim
    # residual and normalised input, plus the embedding output (the model's forward keeps
    # `inputs_embeds` referenced) and the rotary cos/sin shared by every layer.
    return 3 * c * h + 2 * c * d.head_dim + max(mlp, attn)


def sliding_mask_bytes(d: ArchDims, batch: int, q_len: int, kv_len: int) -> float:
    """SDPA cannot express a sliding window with `is_causal`, so transformers materialises a boolean
    (batch, 1, q, kv) mask for the sliding layers; it lives through forward (and backward: the
    memory-efficient kernel keeps its attn_bias). Full-attention layers without padding need none."""
    return float(batch * q_len * kv_len) if d.sliding_layers else 0.0


# The chunked loss (trainer/loss.py) computes at most this many logits (tokens x vocab) at once:
# 2^24 values, 64 MiB per fp32 copy (about 130 tokens of a 128k vocabulary).
LOSS_CHUNK_LOGITS = 2**24


def loss_chunk_tokens(vocab: int) -> int:
    """Tokens per chunk of the engine's linear + cross-entropy: LOSS_CHUNK_LOGITS / vocab, rounded down
    to a multiple of 8 (tensor-core friendly rows), at least 8. One rule for the trainer and the estimator."""
    tokens = max(8, LOSS_CHUNK_LOGITS // max(1, vocab))
    return tokens - tokens % 8


def chunked_loss_bytes(vocab: int, hidden: int, tokens: int, c: int, *, softcap: bool) -> float:
    """Peak bytes of the chunked linear + cross-entropy beyond its inputs (trainer/loss.py), for `tokens`
    target rows: the gathered target rows and their gradient (c x hidden each, the gradient kept until
    backward), plus one chunk's fp32 logits (the softmax and its gradient are made in place in them)
    and either their c-byte matmul output (being upcast) or the gradient's c-byte cast (in fp32 both
    are the fp32 tensor itself), and with soft-capping tanh's fp32 output."""
    chunk = min(tokens, loss_chunk_tokens(vocab))
    per_logit = FP32 + (c if c != FP32 else 0) + (FP32 if softcap else 0)
    return 2 * c * hidden * tokens + per_logit * vocab * chunk

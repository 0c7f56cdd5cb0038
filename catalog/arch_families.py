"""Decoder families whose blocks are not Llama-shaped: fused or differently named projections, LayerNorm
with biases, plain GELU MLPs. Split from catalog/architecture.py; pure and torch-free.

`fused_family(...)` returns the block's linears (leaf names as peft sees them) and its per-layer extras
for phi, phi3, phi3small (remote code), qwen (v1, remote code), bloom, gpt2 and gpt_neox, or None for
Llama-shaped families. Shapes follow the transformers modeling files (and the Hub's remote code for
phi3small and qwen); the counts are checked against known parameter totals in the tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from automodel.catalog.architecture import LinearLayer, _Cfg


@dataclass(frozen=True)
class Family:
    linears: tuple[LinearLayer, ...]
    norm: Literal["rms", "layer"]
    norms: int  # norms per block
    mlp: Literal["gated", "plain"]
    inter: int  # MLP width
    extra: int  # per-block parameters outside the linears (norms)
    embedding_extra: int = 0  # learned positions (gpt2) or an embedding LayerNorm (bloom)


def fused_family(c: _Cfg, model_type: str, h: int, hd: int, q: int, kv: int, layers: int) -> Family | None:
    from automodel.catalog.architecture import LinearLayer

    def lin(name: str, i: int, o: int, bias: bool) -> LinearLayer:
        return LinearLayer(name, i, o, layers, bias, "text")

    if model_type == "phi":  # parallel attention + MLP under one LayerNorm, biases everywhere
        inter = c.int("intermediate_size")
        qk_ln = 2 * 2 * hd if c.bool("qk_layernorm", False) else 0
        return Family((lin("q_proj", h, q, True), lin("k_proj", h, kv, True), lin("v_proj", h, kv, True),
                       lin("dense", q, h, True), lin("fc1", h, inter, True), lin("fc2", inter, h, True)),
                      "layer", 1, "plain", inter, 2 * h + qk_ln)
    if model_type == "phi3small":  # fused qkv + GeGELU up_proj (2 x ff), LayerNorms, biases
        inter = c.int("ff_intermediate_size")
        return Family((lin("query_key_value", h, q + 2 * kv, True), lin("dense", q, h, True),
                       lin("up_proj", h, 2 * inter, True), lin("down_proj", inter, h, True)),
                      "layer", 2, "gated", inter, 4 * h)
    if model_type == "phi3":
        inter = c.int("intermediate_size")
        return Family((lin("qkv_proj", h, q + 2 * kv, False), lin("o_proj", q, h, False),
                       lin("gate_up_proj", h, 2 * inter, False), lin("down_proj", inter, h, False)),
                      "rms", 2, "gated", inter, 2 * h)
    if model_type == "qwen":  # Qwen v1: c_attn with bias; w1/w2 are halves of intermediate_size
        inter = c.int("intermediate_size") // 2
        return Family((lin("c_attn", h, 3 * q, True), lin("c_proj", q, h, False), lin("w1", h, inter, False),
                       lin("w2", h, inter, False), lin("c_proj", inter, h, False)),
                      "rms", 2, "gated", inter, 2 * h)
    if model_type in ("bloom", "gpt_neox"):  # fused query_key_value, LayerNorms and biases
        inter = 4 * h if model_type == "bloom" else c.int("intermediate_size")
        return Family((lin("query_key_value", h, 3 * q, True), lin("dense", q, h, True),
                       lin("dense_h_to_4h", h, inter, True), lin("dense_4h_to_h", inter, h, True)),
                      "layer", 2, "plain", inter, 4 * h, 2 * h if model_type == "bloom" else 0)
    if model_type == "gpt2":  # Conv1D layers (peft's all-linear wraps them too), learned positions
        inter = c.int("n_inner", 4 * h) or 4 * h
        return Family((lin("c_attn", h, 3 * h, True), lin("c_proj", h, h, True), lin("c_fc", h, inter, True),
                       lin("c_proj", inter, h, True)),
                      "layer", 2, "plain", inter, 4 * h, c.int("n_positions", 1024) * h)
    return None

"""Tiny Llama configs for the catalog tests: one base shape, each test names only what it changes.

Plain dicts (config.json contents), no torch: the analytic tests count them, the others build them.
"""

from __future__ import annotations


def tiny_llama(**changes: object) -> dict[str, object]:
    """2 layers, hidden 64, 4 query / 2 KV heads, MLP 128, vocab 100, untied defaults; `changes` override."""
    return {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 100,
        **changes,
    }

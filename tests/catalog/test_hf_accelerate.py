"""catalog/memory/hf_accelerate.py: accelerate's own figures on the meta model (as `accelerate
estimate-memory` computes them) and the device_map='auto' placement for multi-GPU inference."""

from __future__ import annotations

import pytest
import torch
from accelerate import init_empty_weights
from accelerate.utils import calculate_maximum_sizes
from transformers import AutoModelForCausalLM

from automodel.catalog.memory.analytic import estimate_analytic
from automodel.catalog.memory.hf_accelerate import accelerate_figures, device_map_estimate, differences
from automodel.catalog.memory.plan import Plan
from automodel.catalog.params import exact_param_count, hf_config_from_dict
from tests.catalog.configs import tiny_llama

TINY = tiny_llama(hidden_size=64, intermediate_size=128, vocab_size=1000, num_hidden_layers=4)


def test_figures_are_what_accelerate_estimate_memory_prints() -> None:
    # accelerate's CLI builds the model with init_empty_weights in fp32 and sizes it; so does this check.
    with init_empty_weights():
        theirs = AutoModelForCausalLM.from_config(hf_config_from_dict(TINY), dtype=torch.float32)
    total_fp32, _ = calculate_maximum_sizes(theirs)
    n = exact_param_count(TINY)
    bf16 = accelerate_figures(TINY, "bf16-mixed")
    assert 4 * n <= total_fp32 < 4 * n + 1024  # parameters + the rotary buffers accelerate counts too
    assert bf16.total_bytes == total_fp32 // 2 and bf16.precision == "bfloat16"
    assert bf16.training_bytes == 2 * total_fp32 == max(bf16.training_parts.values())  # two fp32 Adam states
    fp32 = accelerate_figures(TINY, "fp32")
    assert fp32.total_bytes == total_fp32 and fp32.training_bytes == 4 * total_fp32
    assert fp32.largest_layer_bytes == 2 * bf16.largest_layer_bytes > 0


def test_differences_name_the_terms_accelerate_leaves_out() -> None:
    plan = Plan(method="lora", seq_len=512)
    why = differences(accelerate_figures(TINY, plan.precision), estimate_analytic(TINY, plan), plan)
    assert "not their sum" in why[0] and "LoRA" in why[0] and "activations" in why[1]


def test_device_map_places_whole_blocks_and_reports_the_busiest_gpu() -> None:
    plan = Plan(mode="inference", seq_len=256, new_tokens=64, gpus=2)
    placed = device_map_estimate(TINY, plan)
    assert [s.gpu for s in placed.shares] == [0, 1] and sum(s.blocks for s in placed.shares) == 4
    assert all(s.blocks >= 1 for s in placed.shares)
    placed_bytes = sum(s.weight_bytes for s in placed.shares)
    assert 2 * exact_param_count(TINY) <= placed_bytes < 2 * exact_param_count(TINY) + 1024  # bf16, all placed
    one = estimate_analytic(TINY, plan.model_copy(update={"gpus": 1}))
    assert sum(s.estimate.kv_cache for s in placed.shares) == pytest.approx(one.kv_cache, abs=2)
    head = [s for s in placed.shares if "lm_head" in s.modules]
    assert len(head) == 1 and head[0].estimate.logits == one.logits
    assert placed.busiest.estimate.peak_reserved == max(s.estimate.peak_reserved for s in placed.shares)
    assert any("device_map='auto'" in a for a in placed.busiest.estimate.assumptions)

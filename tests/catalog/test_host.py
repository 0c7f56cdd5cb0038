"""Host RAM per process (catalog/memory/host.py): the terms follow the trainer's loading, checkpoint and export."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from automodel.catalog.architecture import dims_from_config
from automodel.catalog.memory.estimate import estimate
from automodel.catalog.memory.host import EXPORT_FILE_BYTES, FILE_BYTES, RUNTIME_BYTES, host_memory
from automodel.catalog.memory.plan import Plan
from automodel.catalog.registry import resolve
from tests.catalog.configs import tiny_llama

ROOT = Path(__file__).resolve().parents[2]


def test_one_process_loads_the_whole_model_n_processes_one_file_share() -> None:
    config = tiny_llama(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, vocab_size=128256)
    d = dims_from_config(config)
    total = d.total_params
    one = host_memory(d, Plan(method="lora", gpus=1), total=total, trainable=10**6)
    eight = host_memory(d, Plan(method="lora", gpus=8), total=total, trainable=10**6)
    assert one.loading == total * 2  # bf16 on the CPU, then moved
    assert eight.loading == (FILE_BYTES + 128256 * 4096 * 2) // 8
    assert one.peak == RUNTIME_BYTES + one.loading and eight.peak < one.peak
    assert eight.export == 10**6 * 4  # the adapter, gathered on rank 0
    full = host_memory(d, Plan(method="full", gpus=8), total=total, trainable=total)
    assert full.export == EXPORT_FILE_BYTES + 128256 * 4096 * 4  # one output file + one fp32 tensor, streamed
    assert full.checkpoint == 128256 * 4096 * 4 // 8  # one tensor's shard at a time
    offload = host_memory(d, Plan(method="full", gpus=8, cpu_offload=True), total=total, trainable=total)
    assert offload.offload == total * 16 // 8 and offload.peak > full.peak
    # async checkpoints stage the rank's whole trainable shard and its two AdamW states on the host
    staged = host_memory(d, Plan(method="full", gpus=8, async_checkpoint=True), total=total, trainable=total)
    assert staged.checkpoint == total * 12 // 8 and staged.peak > full.peak
    bf16 = host_memory(d, Plan(method="full", gpus=8, precision="bf16", async_checkpoint=True), total=total,
                       trainable=total)
    assert bf16.checkpoint == total * 6 // 8


def test_estimate_json_of_70b_lora_on_8_gpus_stays_below_the_model() -> None:
    out = subprocess.run([sys.executable, "-m", "automodel.advisor.cli", "estimate", "llama-3.1-70b", "--method", "lora",
                          "--gpus", "8", "--json"], capture_output=True, text=True, check=True).stdout
    data = json.loads(out)
    model_bytes = resolve("llama-3.1-70b").params * 2
    assert 0 < data["host_peak_bytes"] < model_bytes / 10
    assert set(data["host_breakdown"]) == {"runtime", "loading", "checkpoint", "export", "offload"}


def test_estimate_carries_the_host_figure_and_says_so() -> None:
    result = estimate(tiny_llama(), Plan(gpus=2))
    assert result.host_peak > 0 and result.to_json()["host_peak_bytes"] == result.host_peak
    assert any(a.startswith("host RAM per process") for a in result.assumptions)


def test_ram_warning_names_the_need_and_the_source() -> None:
    from automodel.catalog.memory.host import GIB, host_ram_warning, node_ram_bytes

    assert host_ram_warning(10 * GIB, 8, 100 * GIB, given=True) is None
    warning = host_ram_warning(10 * GIB, 8, 64 * GIB, given=True)
    assert warning is not None and "8 process(es) x 10.0 GiB peak = 80.0 GiB" in warning and "--host-mem" in warning
    assert "detected" in host_ram_warning(10 * GIB, 8, 64 * GIB, given=False)
    assert host_ram_warning(10 * GIB, 8, None, given=False) is None
    # the fixes offered are the ones that lower this plan's figure
    assert warning.endswith("spread the GPUs over more nodes, or use a node with more RAM")
    assert "use LoRA" in host_ram_warning(10 * GIB, 8, 64 * GIB, given=True, method="full")
    one = host_ram_warning(30 * GIB, 1, 24 * GIB, given=True, method="lora")
    assert one is not None and one.endswith("; use a node with more RAM")
    assert (node_ram_bytes() or 0) > 2**30  # Linux and macOS both answer


def test_recommend_and_dry_run_warn_when_the_node_is_too_small(tmp_path) -> None:
    cmd = [sys.executable, "-m", "automodel.advisor.cli"]
    rec = subprocess.run([*cmd, "recommend", "--task", "llm", "--gpu-mem", "80", "--gpus", "8", "--host-mem", "1GB",
                          "--json", "--top", "1"], capture_output=True, text=True, check=True)
    json.loads(rec.stdout)  # still JSON only on stdout
    assert "warning:" in rec.stderr and "--host-mem" in rec.stderr
    # described hardware (--gpu-mem, no GPU here) is not this machine: its RAM is no reason to warn
    described = subprocess.run([*cmd, "recommend", "--task", "llm", "--gpu-mem", "24", "--gpus", "8", "--method",
                                "full", "--json", "--top", "3"], capture_output=True, text=True, check=True)
    assert "warning:" not in described.stderr
    dry = subprocess.run([*cmd, "finetune", "llm", "-c", "examples/llm/tiny_offline.yaml", "--dry-run",
                          "--host-mem", "0.001"], capture_output=True, text=True, check=True, cwd=ROOT)
    assert "warning    host RAM: 1 process(es)" in dry.stdout and "host RAM / process (peak)" in dry.stdout
    roomy = subprocess.run([*cmd, "finetune", "llm", "-c", "examples/llm/tiny_offline.yaml", "--dry-run",
                            "--host-mem", "4096"], capture_output=True, text=True, check=True, cwd=ROOT)
    assert "host RAM:" not in roomy.stdout

"""Host memory and time of loading a pretrained model on N processes: shard by shard from the safetensors
files (the engine's path) versus rank 0 loading it and broadcasting it tensor by tensor (its fallback).

A Llama-shaped model of about --mb MB (fp32, safetensors files of 64 MB, values distinct per row) is written
to a temporary directory; `torchrun --nproc-per-node N` then builds the run's model (LoRA, FSDP2) in each
worker through `build.build_for_run`, once per path. For each rank the table shows the rise of the resident
high-water mark (VmHWM, reset before the load through /proc/self/clear_refs, after the imports the load
needs) and the wall time of the load. The broadcast path is forced by telling the loader that the files do
not cover the model. Linux only (VmHWM).

Usage: `.venv/bin/python bench/sharded_load.py [--nproc 2] [--mb 400]`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent

WORKER = """
import json, sys, time
import torch
from automodel.catalog.params import hf_config_from_dict
from automodel.trainer import distributed, loading
from automodel.trainer.config import load_config
from automodel.trainer.peft import adapt
from automodel.trainer.build import build_for_run, resolve_model
from automodel.trainer.tasks import adapter_for

def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024

cfg, path = load_config(sys.argv[1]), sys.argv[2]
if path == "broadcast":
    loading.covers = lambda targets, keys: False
d = distributed.setup()
source, config = resolve_model(cfg.model)
task = adapter_for(cfg.task)
adapt(loading.meta_model(task.model_class(), hf_config_from_dict(config), dtype=torch.float32,
                         attn_implementation="sdpa", trust_remote_code=False), cfg.peft)  # imports
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
before, start = status("VmRSS"), time.perf_counter()
build_for_run(cfg, task, source, config, d, "fp32")
seconds = time.perf_counter() - start
print("RESULT " + json.dumps({"rank": d.rank, "rise": status("VmHWM") - before, "seconds": seconds}), flush=True)
distributed.teardown(d)
"""


def write_model(directory: Path, megabytes: float) -> int:
    """A Llama config scaled to about `megabytes` of fp32 weights, saved as 64 MB safetensors files."""
    import torch
    from huggingface_hub import save_torch_state_dict

    from automodel.catalog.params import build_meta_model

    config = json.loads((ROOT / "examples/llm/tiny/model/config.json").read_text())
    per_layer = 4 * (1536 * 1536) * 2 / 3 + 3 * 1536 * 4096  # q, o full; k, v at 4 of 12 heads; the MLP
    layers = max(1, round(megabytes * 1e6 / 4 / per_layer))
    config.update(hidden_size=1536, intermediate_size=4096, num_hidden_layers=layers, num_attention_heads=12,
                  num_key_value_heads=4)
    state = {key: torch.arange(t.numel(), dtype=torch.float32).reshape(t.shape)
             for key, t in build_meta_model(config).state_dict().items()}
    directory.mkdir(parents=True)
    save_torch_state_dict(state, directory, max_shard_size="64MB")
    (directory / "config.json").write_text(json.dumps(config))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(ROOT / "examples/llm/tiny/model" / name, directory / name)
    return sum(t.numel() * t.element_size() for t in state.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--mb", type=float, default=400)
    args = parser.parse_args()
    from automodel.trainer.config import config_from_data, dump_yaml

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        size = write_model(tmp / "model", args.mb)
        data = {"model": {"name": str(tmp / "model"), "init": "pretrained"},
                "peft": {"method": "lora", "rank": 8},
                "data": {"source": str(ROOT / "examples/llm/tiny/data/train.jsonl"), "format": "instruction",
                         "instruction": {"prompt_template": "{question} {input}", "answer_column": "answer"}},
                "schedule": {"global_batch_size": 2 * args.nproc, "micro_batch_size": 1, "max_steps": 1},
                "output_dir": str(tmp / "out")}
        (tmp / "cfg.yaml").write_text(dump_yaml(config_from_data(data, [], environ={})))
        (tmp / "worker.py").write_text(WORKER)
        table = Table(title=f"loading a {size / 1e6:.0f} MB model (fp32) on {args.nproc} CPU processes")
        for column in ("path", "rank", "resident rise MB", "share of model", "load s"):
            table.add_column(column, justify="right" if column != "path" else "left")
        for path in ("files", "broadcast"):
            proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                                   f"--nproc-per-node={args.nproc}", str(tmp / "worker.py"), str(tmp / "cfg.yaml"),
                                   path], cwd=ROOT, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                sys.exit(proc.stderr[-3000:])
            rows = sorted((json.loads(line.split(" ", 1)[1]) for line in proc.stdout.splitlines()
                           if line.startswith("RESULT ")), key=lambda r: r["rank"])
            for r in rows:
                table.add_row(path, str(r["rank"]), f"{r['rise'] / 1e6:.0f}", f"{r['rise'] / size:.2f}",
                              f"{r['seconds']:.2f}")
        Console().print(table)


if __name__ == "__main__":
    main()

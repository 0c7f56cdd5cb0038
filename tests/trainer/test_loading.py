"""Loading on several processes: meta build, FSDP2, then each rank reads only its shards from the files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# Loads the model of the config given (without training) in each torchrun worker; reports resident memory
# (the rise of the high-water mark during the load) and whether every local shard equals its rows in the files.
WORKER = """
import json, sys
import torch
from safetensors import safe_open
from torch.distributed.tensor import DTensor
from automodel.trainer import distributed
from automodel.trainer.config import load_config
from automodel.trainer.loading import base_tensors, safetensors_files
from automodel.trainer.build import build_for_run, resolve_model
from automodel.trainer.tasks import adapter_for

def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024

cfg = load_config(sys.argv[1])
d = distributed.setup()
source, config = resolve_model(cfg.model)
# imports the load pulls in (transformers' model code, peft, accelerate) are no model memory: load them first
from automodel.catalog.params import hf_config_from_dict
from automodel.trainer.loading import meta_model
from automodel.trainer.peft import adapt
adapt(meta_model(adapter_for(cfg.task).model_class(), hf_config_from_dict(config), dtype=torch.float32,
                 attn_implementation="sdpa", trust_remote_code=False), cfg.peft)
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # resets VmHWM to the current resident size
before = status("VmRSS")
model = build_for_run(cfg, adapter_for(cfg.task), source, config, d, "fp32")
peak = status("VmHWM") - before
targets, equal, checked = base_tensors(model), True, 0
for file in safetensors_files(source):
    with safe_open(str(file), framework="pt") as handle:
        for key in handle.keys():
            full, live = handle.get_tensor(key), targets[key]
            local = live.to_local() if isinstance(live, DTensor) else live
            start = d.rank * -(-full.shape[0] // d.world) if isinstance(live, DTensor) else 0
            equal &= torch.equal(local, full[start : start + local.shape[0]])
            checked += 1
print("RESULT " + json.dumps({"rank": d.rank, "peak_rise": peak, "equal": bool(equal), "checked": checked}), flush=True)
distributed.teardown(d)
"""


def test_two_processes_each_hold_about_half_while_loading(tiny_config, tiny_assets: Path, tmp_path: Path) -> None:
    """A 450 MB model (fp32, 8 safetensors files): each of 2 processes' resident memory rises by well under the
    model's size while loading it (its shards plus one file's rows), and every shard equals the files' rows."""
    import shutil

    import torch
    from huggingface_hub import save_torch_state_dict

    from automodel.catalog.params import build_meta_model
    from automodel.trainer.config import dump_yaml

    config = json.loads((tiny_assets / "model/config.json").read_text())
    config.update(hidden_size=1536, intermediate_size=4096, num_hidden_layers=4, num_attention_heads=12,
                  num_key_value_heads=4)
    model_dir = tmp_path / "model"
    # distinct rows (exact in fp32), written in a fraction of the time a random init of 100M weights takes
    state = {key: torch.arange(t.numel(), dtype=torch.float32).reshape(t.shape)
             for key, t in build_meta_model(config).state_dict().items()}
    model_dir.mkdir()
    save_torch_state_dict(state, model_dir, max_shard_size="64MB")
    size = sum(t.numel() * t.element_size() for t in state.values())
    del state
    (model_dir / "config.json").write_text(json.dumps(config))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_assets / "model" / name, model_dir / name)
    assert len(list(model_dir.glob("*.safetensors"))) >= 6 and size > 400e6

    config_file = tmp_path / "load.yaml"
    config_file.write_text(dump_yaml(tiny_config(f"model.name={model_dir}", "model.init=pretrained")))
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           str(script), str(config_file)], cwd=REPO, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "shard by shard from" in proc.stdout
    results = [json.loads(line.split(" ", 1)[1]) for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert sorted(r["rank"] for r in results) == [0, 1]
    for r in results:
        assert r["equal"] and r["checked"] == 2 + 9 * config["num_hidden_layers"] + 1  # embed, head, norm
        print(f"rank {r['rank']}: resident rise {r['peak_rise'] / 1e6:.0f} MB for a {size / 1e6:.0f} MB model")
        assert r["peak_rise"] < 0.65 * size, (r, size)


def test_meta_build_keeps_tied_weights_tied(tiny_assets: Path) -> None:
    """transformers skips tying for weights without storage; unless the meta build ties them, a tied model
    (Whisper's head, Gemma's) would train two matrices on several processes and one on a single process."""
    import torch

    from automodel.catalog.params import hf_config_from_dict, model_class_for
    from automodel.trainer.loading import meta_model

    config = {**json.loads((tiny_assets / "model/config.json").read_text()), "tie_word_embeddings": True}
    model = meta_model(model_class_for(config), hf_config_from_dict(config), dtype=torch.float32,
                       attn_implementation="sdpa", trust_remote_code=False)
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert model.get_input_embeddings().weight.device.type == "meta"

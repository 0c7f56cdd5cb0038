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


# Builds the model of each config given (without training), as `build_for_run` does for a run of this world
# size, and writes (a file per rank: long lines of two ranks interleave on one stdout) a digest of every
# parameter and buffer gathered whole (LoRA adapters and peft's trainable copies included), the resident
# rise while building, and the model's size.
VLM_WORKER = """
import gc, hashlib, json, sys
from pathlib import Path
import torch
from torch.distributed.tensor import DTensor
from automodel.trainer import distributed
from automodel.trainer.config import load_config
from automodel.trainer.build import build_for_run, resolve_model
from automodel.trainer.tasks import adapter_for

def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024

d = distributed.setup()
# imports the load pulls in (transformers' model code, peft, accelerate) are no model memory: load them first
from automodel.catalog.params import hf_config_from_dict, model_class_for
from automodel.trainer.loading import meta_model
from automodel.trainer.peft import adapt
out, configs = Path(sys.argv[1]), sys.argv[2:]
for path in configs:
    cfg = load_config(path)
    config = resolve_model(cfg.model)[1]
    warm = meta_model(model_class_for(config), hf_config_from_dict(config), dtype=torch.float32,
                      attn_implementation="sdpa", trust_remote_code=False)
    adapter_for(cfg.task).prepare_model(warm, cfg)
    adapt(warm, cfg.peft)
for path in configs:
    cfg = load_config(path)
    source, config = resolve_model(cfg.model)
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current resident size
    before = status("VmRSS")
    model = build_for_run(cfg, adapter_for(cfg.task), source, config, d, "fp32")
    peak = status("VmHWM") - before
    digests, size = {}, 0
    for name, t in [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]:
        full = (t.full_tensor() if isinstance(t, DTensor) else t).detach().contiguous()
        digests[name] = f"{full.dtype} {tuple(full.shape)} " + hashlib.sha256(full.numpy().tobytes()).hexdigest()
        size += full.numel() * full.element_size() if "lora_" not in name else 0
    result = {"case": path, "rank": d.rank, "world": d.world, "peak_rise": peak, "size": size, "digests": digests}
    (out / f"{Path(path).stem}-{d.world}-{d.rank}.json").write_text(json.dumps(result))
    del model, full, t
distributed.teardown(d)
"""


def _write_big_pretrained(out: Path) -> None:
    """A Gemma-3-style VLM of ~400 MB (fp32, 64 MB files) as `save_pretrained` writes it (the checkpoint layout
    before transformers 5: `language_model.model.*`), its weights distinct rows written in a fraction of
    the time a random init of 100M weights takes."""
    import torch

    from automodel.catalog.params import build_meta_model

    config = json.loads((out / "config.json").read_text())
    config["text_config"].update(hidden_size=1536, intermediate_size=4096, num_hidden_layers=4, num_attention_heads=12,
                                 num_key_value_heads=4, head_dim=128, query_pre_attn_scalar=128,
                                 layer_types=["sliding_attention", "full_attention"] * 2)
    (out / "config.json").write_text(json.dumps(config))
    model = build_meta_model(config).to_empty(device="cpu")
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.arange(param.numel(), dtype=torch.float32).reshape(param.shape) / param.numel())
    model.save_pretrained(str(out), max_shard_size="64MB")


def test_vlms_load_sharded_on_two_processes_as_on_one(tmp_path: Path) -> None:
    """Gemma-3-style and Qwen2-VL-style VLMs (LoRA, vision tower trained whole through peft's trainable copy)
    take the meta path on 2 processes: the gathered parameters and buffers equal one process's exactly, from
    a random init (broadcast from rank 0) and from a saved directory (its own files, shard by shard, through
    transformers' renames of VLM checkpoint keys). The vision tower's position ids are buffers computed at
    construction; left unrestored in the trainable copy they were garbage and the embedding lookup failed.
    Loading the ~400 MB Gemma-3-style VLM, each rank's resident memory rises by well under its size."""
    from automodel.trainer.config import config_from_data, dump_yaml
    from automodel.trainer.modeling import build_model
    from tests.trainer.vlm_assets import model_dir, run_config

    configs = []
    for style in ("gemma", "qwen"):
        for init in ("random", "pretrained"):
            root = tmp_path / f"{style}-{init}"
            directory = model_dir(root, style)
            if init == "pretrained" and style == "gemma":
                _write_big_pretrained(directory)
            elif init == "pretrained":
                config = json.loads((directory / "config.json").read_text())
                build_model(config, device="cpu", seed=1).save_pretrained(str(directory))
            data = run_config(root, style, root / "unused.jsonl", model={"init": init, "vision": "full"})
            path = tmp_path / f"{style}-{init}.yaml"
            path.write_text(dump_yaml(config_from_data(data)))
            configs.append(str(path))
    script = tmp_path / "worker.py"
    script.write_text(VLM_WORKER)
    results: dict[int, list[dict]] = {}
    for world in (1, 2):
        launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"] if world == 2 else []
        proc = subprocess.run([sys.executable, *launcher, str(script), str(tmp_path), *configs], cwd=REPO,
                              capture_output=True, text=True, timeout=400)
        assert proc.returncode == 0, proc.stderr[-3000:]
        results[world] = [json.loads(p.read_text()) for p in sorted(tmp_path.glob(f"*-{world}-?.json"))]
    assert proc.stdout.count("shard by shard from") == 2 and proc.stdout.count("broadcasting them") == 2
    one = {r["case"]: r for r in results[1]}
    assert len(one) == 4 and len(results[2]) == 8
    for r in results[2]:
        reference = one[r["case"]]["digests"]
        assert any("modules_to_save" in n and "position_ids" in n for n in reference) or "qwen" in r["case"]
        differ = sorted(n for n in reference if r["digests"].get(n) != reference[n])
        assert r["digests"].keys() == reference.keys() and not differ, (r["case"], r["rank"], differ[:5])
        if "gemma-pretrained" in r["case"]:
            print(f"rank {r['rank']}: resident rise {r['peak_rise'] / 1e6:.0f} MB for a {r['size'] / 1e6:.0f} MB VLM")
            assert r["size"] > 350e6 and r["peak_rise"] < 0.65 * r["size"], r["peak_rise"]


def test_checkpoint_names_without_transformers_renaming_helpers_keep_the_file_keys(monkeypatch) -> None:
    """The renamings come from private transformers helpers; where a version lacks them, checkpoints in the
    model's own layout still load from their files (identity names), never a crash."""
    import builtins

    from automodel.trainer import loading

    real_import = builtins.__import__

    def no_conversion_mapping(name, *args, **kwargs):  # noqa: ANN001, ANN202
        if name == "transformers.conversion_mapping":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_conversion_mapping)
    keys = {"model.embed_tokens.weight", "lm_head.weight"}
    assert loading.checkpoint_names(object(), keys) == {k: k for k in keys}

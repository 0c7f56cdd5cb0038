"""Exports reload with stock peft/transformers and give the trained model's logits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def _trained(cfg, out: Path, *, lora: bool):
    """The trained model, rebuilt from the seed and the final checkpoint's weights."""
    from automodel.trainer.checkpoint import read_weights
    from automodel.trainer.modeling import build_model
    from automodel.trainer.peft import adapt

    config = json.loads((Path(cfg.model.name) / "config.json").read_text())
    model = adapt(build_model(config, device="cpu", seed=cfg.seed), cfg.peft)
    state = read_weights(out / "checkpoints/step_00000004")
    missing, unexpected = model.load_state_dict(state, strict=not lora)
    assert not unexpected
    return model.eval()


def _logits(model):
    import torch

    ids = torch.tensor([[1, 40, 41, 42, 43, 44, 45, 46]])
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_adapter_and_merged_exports_reload_with_trained_logits(tiny_config, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import torch
    from peft import AutoPeftModel, PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from automodel.trainer.modeling import build_model
    from automodel.trainer.recipe import run

    cfg = tiny_config("schedule.max_steps=4", "checkpoint.export=both", "optimizer.lr=5e-2")
    result = run(cfg)
    out = tmp_path / "run"
    assert result.exports == {"adapter": str(out / "adapter"), "merged": str(out / "merged")}
    trained = _logits(_trained(cfg, out, lora=True))

    config = json.loads((Path(cfg.model.name) / "config.json").read_text())
    base = build_model(config, device="cpu", seed=cfg.seed)
    untrained = _logits(base)
    assert not torch.allclose(trained, untrained, atol=1e-3)  # training moved the model
    adapter = PeftModel.from_pretrained(base, out / "adapter").eval()
    torch.testing.assert_close(_logits(adapter), trained, rtol=1e-5, atol=1e-5)

    # the run saved its random init, and the adapter names it: the adapter directory stands on its own
    adapter_config = json.loads((out / "adapter/adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == str((out / "base").resolve())
    assert adapter_config["auto_mapping"] == {"base_model_class": "AutoModelForCausalLM",
                                              "parent_library": AutoModelForCausalLM.__module__}
    saved_base = AutoModelForCausalLM.from_pretrained(out / "base").eval()
    torch.testing.assert_close(_logits(saved_base), untrained, rtol=0, atol=0)
    assert AutoTokenizer.from_pretrained(out / "base").eos_token == "</s>"
    # from the adapter directory alone, elsewhere: AutoPeftModel reads base_model_name_or_path and the
    # auto mapping from disk (the same as in a new process; by hand: python -c "AutoPeftModel.from_pretrained(...)")
    monkeypatch.chdir(tmp_path.parent)
    standalone = AutoPeftModel.from_pretrained(str(out / "adapter")).eval()
    torch.testing.assert_close(_logits(standalone), trained, rtol=1e-5, atol=1e-5)

    merged = AutoModelForCausalLM.from_pretrained(out / "merged").eval()
    assert not any("lora" in name for name, _ in merged.named_parameters())
    assert (out / "merged/model.safetensors").is_file()
    torch.testing.assert_close(_logits(merged), trained, rtol=1e-4, atol=1e-4)
    assert AutoTokenizer.from_pretrained(out / "adapter").eos_token == "</s>"


def test_full_finetune_exports_the_whole_model(tiny_config, tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from automodel.trainer.recipe import run

    cfg = tiny_config("schedule.max_steps=4", "peft.method=none", "checkpoint.export=merged", "optimizer.lr=1e-3")
    run(cfg)
    out = tmp_path / "run"
    merged = AutoModelForCausalLM.from_pretrained(out / "merged").eval()
    torch.testing.assert_close(_logits(merged), _logits(_trained(cfg, out, lora=False)), rtol=1e-5, atol=1e-5)
    assert not (out / "adapter").exists()


@pytest.mark.parametrize("export", ["adapter", "both"])
def test_adapter_export_needs_lora(tiny_config, export: str) -> None:
    from automodel.catalog.errors import UserError

    with pytest.raises(UserError) as err:
        tiny_config("peft.method=none", f"checkpoint.export={export}")
    assert err.value.field is not None and "export" in err.value.field


def test_base_reference_is_loadable_from_anywhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from automodel.trainer.export import base_reference

    monkeypatch.chdir(tmp_path)
    (tmp_path / "models/tiny").mkdir(parents=True)
    out = Path("runs/a")
    assert base_reference("models/tiny", init="random", output_dir=out) == str(tmp_path / "runs/a/base")
    assert base_reference("models/tiny", init="pretrained", output_dir=out) == str(tmp_path / "models/tiny")
    assert base_reference("Qwen/Qwen3-0.6B", init="pretrained", output_dir=out) == "Qwen/Qwen3-0.6B"


def test_merged_export_streams_into_files_and_reloads(tiny_config, tmp_path: Path) -> None:
    """Small files force several: numbered safetensors plus an index, as save_pretrained writes them; stock
    transformers reloads them with the live model's merged logits. No optimizer, no second model built."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from automodel.trainer.distributed import Dist
    from automodel.trainer.export import export_merged
    from automodel.trainer.loading import init_lora
    from automodel.trainer.modeling import build_model
    from automodel.trainer.peft import adapt

    cfg = tiny_config()
    config = json.loads((Path(cfg.model.name) / "config.json").read_text())
    model = adapt(build_model(config, device="cpu", seed=0), cfg.peft)
    init_lora(model, seed=1)
    with torch.no_grad():  # B is zero after init: give the adapters something to merge
        for name, param in model.named_parameters():
            if ".lora_B." in name:
                param.normal_(0, 0.05)
    tokenizer = AutoTokenizer.from_pretrained(cfg.model.name)
    out = export_merged(model, tokenizer, tmp_path / "merged", Dist(rank=0, world=1, device=torch.device("cpu")),
                        dtype=torch.float32, max_shard_bytes=30_000)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 2 and files[-1].endswith(f"-of-{len(files):05d}.safetensors")
    assert not any("lora" in key or "base_layer" in key for key in index["weight_map"])
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    torch.testing.assert_close(_logits(merged), _logits(model.eval()), rtol=1e-5, atol=1e-5)

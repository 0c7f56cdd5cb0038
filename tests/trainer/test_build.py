"""trainer/build.py: model resolution (the catalog's) and the weights' loading for a run."""

from __future__ import annotations

from pathlib import Path

import pytest


def test_qlora_loads_the_base_as_nf4_on_this_process_gpu(tiny_config, monkeypatch) -> None:
    """The engine's from_pretrained call for qlora on a GPU (mocked: tests/trainer/test_qlora.py runs it on the CPU)."""
    import torch

    from automodel.trainer import build
    from automodel.trainer.modeling import build_model
    from automodel.trainer.tasks import llm

    cfg = tiny_config("peft.method=qlora", "model.init=pretrained", "checkpoint.export=adapter")
    source, config = build.resolve_model(cfg.model)
    seen: dict = {}

    class Loader:
        @staticmethod
        def from_pretrained(path, **kwargs):
            seen.update(kwargs, path=path)
            return build_model(config, device="cpu", dtype=kwargs["dtype"], seed=0)

    monkeypatch.setattr(llm, "model_class", lambda: Loader)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    model = build.load_model(cfg, source, config, device="cpu", cuda=True)
    quant = seen["quantization_config"]
    assert (quant.load_in_4bit, quant.bnb_4bit_quant_type, quant.bnb_4bit_use_double_quant) == (True, "nf4", True)
    assert quant.bnb_4bit_compute_dtype == torch.bfloat16 and seen["dtype"] == torch.bfloat16
    assert seen["device_map"] == {"": 3} and seen["path"] == source and model.config.use_cache is False
    seen.clear()
    build.load_model(tiny_config("model.init=pretrained"), source, config, device="cpu", cuda=True)
    assert "quantization_config" not in seen and "device_map" not in seen  # lora loads as before


def test_model_resolution_is_the_catalogs(tiny_config, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One resolution (catalog.registry.resolve): directories, config.json files and catalog names alike;
    its errors name model.name."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a catalog name's Hub reachability check is not tested here
    from automodel.catalog.errors import UserError
    from automodel.catalog.registry import resolve
    from automodel.trainer import build

    cfg = tiny_config()
    directory = Path(cfg.model.name)
    source, config = build.resolve_model(cfg.model)
    assert source == str(directory) and config == resolve(str(directory)).config
    cfg_file = tiny_config(f"model.name={directory / 'config.json'}")
    assert build.resolve_model(cfg_file.model) == (str(directory), config)
    named = tiny_config("model.name=qwen2.5-0.5b-instruct")
    source, config = build.resolve_model(named.model)
    assert source == resolve("qwen2.5-0.5b-instruct").hf_id and config["model_type"] == "qwen2"
    with pytest.raises(UserError) as err:
        build.resolve_model(tiny_config("model.name=no-such-model-xyz").model)
    assert err.value.field == "model.name"

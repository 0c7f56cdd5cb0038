"""bitsandbytes on the CPU, end to end. QLoRA: a random-init base saved and loaded in NF4, training,
checkpoint, kill and exact resume, and an adapter export that loads on a 4-bit base. 8-bit AdamW: full
fine-tuning with uint8 optimizer states, checkpoint, kill and exact resume."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("bitsandbytes")

from automodel.trainer.metrics import read_metrics  # noqa: E402
from tests.conftest import interrupted_at_call  # noqa: E402

ARGS = ("peft.method=qlora", "schedule.max_steps=6", "schedule.checkpoint_every=3", "schedule.val_every=6",
        "optimizer.lr=2e-2", "checkpoint.export=adapter", "distributed.activation_checkpointing=true")


def _losses(out: Path) -> list[tuple[int, float, float | None]]:
    return [(r["step"], r["loss"], r.get("val_loss")) for r in read_metrics(out / "metrics.jsonl")]


@pytest.fixture
def tiny_config(make_assets, tmp_path: Path):  # noqa: ANN001, ANN201
    """The shared tiny recipe on a hidden-64 model: bitsandbytes' CPU 4-bit kernels work on blocks of 64
    inputs, so a hidden size of 32 (the other trainer tests') has no whole block."""
    from automodel.trainer.config import config_from_data
    from tests.conftest import tiny_config_data

    assets = tmp_path / "assets"
    make_assets.write_assets(assets, n_train=64, n_val=16, seed=0, hidden=64, layers=2)

    def make(*overrides: str, output_dir: Path | None = None):  # noqa: ANN202
        return config_from_data(tiny_config_data(assets, output_dir or tmp_path / "run"), list(overrides), environ={})

    return make


def test_qlora_trains_resumes_exactly_and_exports_on_cpu(tiny_config, tmp_path: Path, capsys) -> None:
    import torch

    from automodel.trainer import recipe
    from automodel.trainer.tasks import llm

    straight = recipe.run(tiny_config(*ARGS, output_dir=tmp_path / "straight"))
    err = capsys.readouterr().err
    assert err.count("qlora on the CPU") == 1  # said once, to stderr
    assert "kernels-community" not in err and "gemm_4bit" not in err  # no Hub kernel fetch, no warning
    losses = [loss for _, loss, _ in _losses(tmp_path / "straight")]
    assert len(losses) == 6 and losses[-1] < losses[0] - 0.5
    assert "kernels" not in sys.modules or sys.modules["kernels"] is not None  # the Hub-kernel block was undone

    # Killed in step 5 (after the step-3 checkpoint), then rerun: the same losses, step for step.
    with interrupted_at_call(llm, 2 * 4 + 1), pytest.raises(KeyboardInterrupt):  # 2 micro batches per step
        recipe.run(tiny_config(*ARGS, output_dir=tmp_path / "resumed"))
    resumed = recipe.run(tiny_config(*ARGS, output_dir=tmp_path / "resumed"))
    assert resumed.resumed_from == 3
    assert _losses(tmp_path / "resumed") == _losses(tmp_path / "straight")

    # The random init was saved as a model and quantised as it loaded: its linears are NF4 Linear4bit.
    import bitsandbytes as bnb
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from automodel.trainer.modeling import qlora_quantization_config

    base = AutoModelForCausalLM.from_pretrained(tmp_path / "straight/base", quantization_config=qlora_quantization_config(),
                                                device_map={"": "cpu"}, dtype=torch.bfloat16)
    assert isinstance(base.model.layers[0].self_attn.q_proj, bnb.nn.Linear4bit)
    assert base.model.layers[0].self_attn.q_proj.weight.quant_type == "nf4"
    # The exported adapter loads on that 4-bit base and scores the validation rows as the run did.
    model = PeftModel.from_pretrained(base, tmp_path / "straight/adapter")
    model.eval()
    cfg = tiny_config(*ARGS)
    tokenizer = llm.load_processor(cfg.model.name)
    samples = llm.build_samples(cfg.data, tokenizer, validation=True, seed=cfg.seed)
    batch = llm.collate(samples, tokenizer)
    with torch.no_grad():
        val = (llm.forward_loss(model, batch) / llm.count_targets(batch)).item()
    assert val == pytest.approx(straight.val_loss, rel=1e-3)


def test_adamw_8bit_full_finetuning_trains_and_resumes_exactly(tiny_config, tmp_path: Path) -> None:
    import torch

    from automodel.trainer import checkpoint, recipe
    from automodel.trainer.tasks import llm

    args = ("peft.method=none", "optimizer.name=adamw-8bit", "optimizer.lr=1e-3", "schedule.max_steps=6",
            "schedule.checkpoint_every=3", "checkpoint.export=none")
    recipe.run(tiny_config(*args, output_dir=tmp_path / "straight"))
    losses = [loss for _, loss, _ in _losses(tmp_path / "straight")]
    assert len(losses) == 6 and losses[-1] < losses[0] - 0.3
    # the states really are 8-bit where bitsandbytes makes them so: uint8 moments for every weight of at
    # least 4096 elements (its min_8bit_size; smaller ones keep fp32 states), saved in the checkpoint
    import torch.distributed.checkpoint as dcp

    weights = checkpoint.read_weights(tmp_path / "straight/checkpoints/step_00000006")
    meta = dcp.FileSystemReader(str(tmp_path / "straight/checkpoints/step_00000006/dcp")).read_metadata()
    prefix, suffix = "optimizer.state.", ".__bnb_optimizer_quant_state__.state1"
    moments = {k[len(prefix):-len(suffix)]: m.properties.dtype for k, m in meta.state_dict_metadata.items()
               if k.endswith(suffix)}
    assert set(moments) == set(weights)  # full fine-tuning: every weight has its state
    expected = {name: torch.uint8 if weights[name].numel() >= 4096 else torch.float32 for name in weights}
    assert moments == expected and sum(d == torch.uint8 for d in moments.values()) >= 8

    with interrupted_at_call(llm, 2 * 4 + 1), pytest.raises(KeyboardInterrupt):  # step 5's first micro batch
        recipe.run(tiny_config(*args, output_dir=tmp_path / "resumed"))
    assert recipe.run(tiny_config(*args, output_dir=tmp_path / "resumed")).resumed_from == 3
    assert _losses(tmp_path / "resumed") == _losses(tmp_path / "straight")

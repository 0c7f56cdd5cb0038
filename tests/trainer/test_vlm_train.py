"""vlm on the shared engine: what trains, a short run whose loss falls, export reload, image-less batches,
two processes equal to one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from automodel.trainer.config import config_from_data
from automodel.trainer.metrics import read_metrics
from automodel.trainer.tasks import vlm
from tests.conftest import interrupted_at_call
from tests.trainer.vlm_assets import ROOT, make_assets, model_dir, processor, run_config


def _model(tmp_path: Path, style: str, **sections):
    from automodel.trainer.modeling import build_model
    from automodel.trainer.peft import adapt

    cfg = config_from_data(run_config(tmp_path, style, tmp_path / "x.jsonl", **sections))
    config = json.loads((model_dir(tmp_path, style) / "config.json").read_text())
    model = build_model(config, device="cpu", seed=0)
    vlm.prepare_model(model, cfg)
    return adapt(model, cfg.peft)


def _trainable(model) -> set[str]:
    """Trainable parameter names, without peft's `modules_to_save.default.` infix."""
    return {name.replace("modules_to_save.default.", "") for name, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("style", ["gemma", "qwen"])
def test_lora_trains_the_language_model_linears_only_and_vision_modes_add_their_parts(tmp_path: Path,
                                                                                     style: str) -> None:
    tower = "vision_tower" if style == "gemma" else "visual"
    lora = _trainable(_model(tmp_path, style))
    assert lora and all("lora_" in n and ".language_model." in n for n in lora)  # no vision tower, no lm_head
    projector = _trainable(_model(tmp_path, style, model={"vision": "projector"})) - lora
    assert projector and all(("multi_modal_projector" if style == "gemma" else "merger") in n for n in projector)
    full = _trainable(_model(tmp_path, style, model={"vision": "full"})) - lora
    assert any(tower in n and ("layers" in n or "blocks" in n) for n in full) and projector <= full
    everything = _trainable(_model(tmp_path, style, peft={"method": "none"}, checkpoint={"export": "merged"}))
    assert not any(tower in n for n in everything) and any("lm_head" in n for n in everything)


def test_a_batch_without_images_gets_a_blank_image_row_that_changes_nothing(tmp_path: Path) -> None:
    """Every forward runs the vision tower (FSDP2's all-gathers are collective): an image-less batch gets
    a blank-image row with no targets; the text rows' loss and gradients are unchanged."""
    import torch

    proc = processor("qwen")
    rows = [{"messages": [{"role": "user", "content": "say hi"}, {"role": "assistant", "content": "hi"}]}]
    (tmp_path / "t.jsonl").write_text(json.dumps(rows[0]) + "\n")
    from automodel.trainer.config import DataConfig

    sample = vlm.build_samples(DataConfig(source=str(tmp_path / "t.jsonl"), format="chat"), proc,
                               validation=False, seed=0)[0]
    batch = vlm.collate([sample], proc)
    assert batch["input_ids"].shape[0] == 2 and "pixel_values" in batch
    assert (batch["labels"][1] == -100).all() and vlm.count_targets(batch) == sample.num_targets - 0
    model = _model(tmp_path, "qwen", model={"vision": "full"})
    loss = vlm.forward_loss(model, batch)
    loss.backward()
    alone = {k: v[:1] for k, v in batch.items() if k in ("input_ids", "attention_mask", "labels")}
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    reference = vlm.forward_loss(model, alone)
    reference.backward()
    assert loss.item() == pytest.approx(reference.item(), rel=1e-5)
    visual = [n for n in grads if ".visual." in n]
    assert visual and all(torch.count_nonzero(grads[n]) == 0 for n in visual)  # ran, contributed nothing
    for name, p in model.named_parameters():
        if p.grad is not None and ".visual." not in name:
            torch.testing.assert_close(p.grad, grads[name], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("style", ["gemma", "qwen"])
def test_short_run_loss_falls_and_exact_match_is_reported(tmp_path: Path, style: str) -> None:
    from automodel.trainer.recipe import run

    train = make_assets.write_rows(tmp_path / "data", "train", 16, 0)
    val = make_assets.write_rows(tmp_path / "data", "val", 4, 1)
    cfg = config_from_data(run_config(tmp_path, style, train, data={"validation": {
        "source": str(val), "exact_match": True}}))
    result = run(cfg)
    losses = [m["loss"] for m in read_metrics(tmp_path / "out" / "metrics.jsonl")]
    assert losses[-1] < 0.9 * losses[0]
    assert 0.0 <= result.val_metrics["val_exact_match"] <= 1.0 and result.val_loss is not None


def test_adapter_and_processor_export_load_in_a_new_process(tmp_path: Path) -> None:
    """The adapter directory stands on its own (its base is the run's saved random init); the processor is
    saved beside both exports."""
    from automodel.trainer.recipe import run

    train = make_assets.write_rows(tmp_path / "data", "train", 8, 0)
    cfg = config_from_data(run_config(tmp_path, "gemma", train, schedule={"max_steps": 1},
                                      checkpoint={"export": "both"}, model={"vision": "projector"}))
    result = run(cfg)
    code = f"""
import json
from transformers import AutoModelForImageTextToText, AutoProcessor
from peft import AutoPeftModel
adapter, merged = {result.exports['adapter']!r}, {result.exports['merged']!r}
processor = AutoProcessor.from_pretrained(adapter)
model = AutoPeftModel.from_pretrained(adapter)
full = AutoModelForImageTextToText.from_pretrained(merged)
AutoProcessor.from_pretrained(merged)
trained = [n for n, _ in model.named_parameters() if "modules_to_save" in n]
print(json.dumps([type(processor).__name__, type(model.get_base_model()).__name__, type(full).__name__, len(trained)]))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    name, base, full, projector = json.loads(out.stdout.strip().splitlines()[-1])
    assert (name, base, full) == ("Gemma3Processor", "Gemma3ForConditionalGeneration",
                                  "Gemma3ForConditionalGeneration")
    assert projector > 0  # the trained projector travels in the adapter


def test_two_processes_match_one(tmp_path: Path) -> None:
    """`--nproc-per-node 2` (gloo, the model built on the meta device, FSDP2 over decoder and vision blocks)
    gives the one-process losses. Two rows are text-only: length bucketing puts them in one micro batch,
    which rank 0 runs while rank 1 runs images; without the blank-image row rank 1's vision all-gathers
    would wait forever."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    train = make_assets.write_rows(tmp_path / "data", "train", 14, 0)
    with open(train, "a") as f:
        for i in (1, 2):
            f.write(json.dumps({"messages": [{"role": "user", "content": f"Count to {i}."},
                                             {"role": "assistant", "content": " ".join(make_assets.COUNTS[:i])}]}) + "\n")
    short = ["schedule.max_steps=3", "schedule.val_every=null", "schedule.checkpoint_every=null",
             "schedule.log_every=1", "schedule.micro_batch_size=2", "schedule.global_batch_size=8",
             "logging.progress_bar=false", "checkpoint.export=none", "data.validation=null", "model.vision=full",
             "lr_schedule.warmup_steps=1", f"data.source={train}"]
    runs = {}
    for n in (1, 2):
        cmd = [sys.executable, "-m", "automodel.advisor.cli", "finetune", "vlm", "-c",
               str(ROOT / "examples" / "vlm" / "tiny_offline.yaml"), *(["--nproc-per-node", "2"] if n == 2 else []),
               f"output_dir={tmp_path / f'np{n}'}", *short]
        runs[n] = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert runs[n].returncode == 0, runs[n].stderr[-3000:]
    # the VLM is built on the meta device and filled from rank 0 (trainer/loading.py), as an LLM is
    assert "loading weights on rank 0 and broadcasting them" in runs[2].stdout
    one, two = (read_metrics(tmp_path / f"np{n}" / "metrics.jsonl") for n in (1, 2))
    assert [m["step"] for m in one] == [m["step"] for m in two] == [1, 2, 3]
    for a, b in zip(one, two, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)


def test_interrupted_run_resumes_to_identical_losses(tmp_path: Path) -> None:
    """The engine's resume (weights, optimizer, schedule, RNG; data position = step) carries over to vlm:
    a run stopped after its step-2 checkpoint and rerun logs the uninterrupted run's losses exactly."""
    from automodel.trainer.recipe import run

    train = make_assets.write_rows(tmp_path / "data", "train", 16, 0)

    def cfg(name: str):
        return config_from_data(run_config(tmp_path, "gemma", train, output_dir=str(tmp_path / name),
                                           schedule={"max_steps": 4, "checkpoint_every": 2},
                                           model={"vision": "full"}))

    run(cfg("straight"))
    # the first micro batch of step 3 (2 micro batches per step)
    with interrupted_at_call(vlm, 2 * 2 + 1), pytest.raises(KeyboardInterrupt):
        run(cfg("resumed"))
    assert run(cfg("resumed")).resumed_from == 2

    def losses(name: str) -> list[tuple[int, float]]:
        return [(m["step"], m["loss"]) for m in read_metrics(tmp_path / name / "metrics.jsonl")]

    assert losses("resumed") == losses("straight")


def test_sigkill_mid_run_then_rerun_reproduces_losses(tmp_path: Path) -> None:
    """A real SIGKILL after a checkpoint; rerunning the same command resumes from `latest` and logs the
    uninterrupted run's losses and validation figures exactly (images re-encoded, data order by step)."""
    import signal
    import time

    from automodel.trainer.config import dump_yaml

    train = make_assets.write_rows(tmp_path / "data", "train", 16, 0)
    val = make_assets.write_rows(tmp_path / "data", "val", 4, 1)

    def cfg(name: str):
        return config_from_data(run_config(
            tmp_path, "gemma", train, output_dir=str(tmp_path / name), model={"vision": "full"},
            schedule={"max_steps": 12, "checkpoint_every": 4, "val_every": 4},
            data={"validation": {"source": str(val), "exact_match": True}}))

    def logged(name: str) -> list[tuple]:
        return [(m["step"], m["loss"], m["grad_norm"], m.get("val_loss"), m.get("val_exact_match"))
                for m in read_metrics(tmp_path / name / "metrics.jsonl")]

    out = tmp_path / "killed"
    code = ("import sys; from automodel.trainer.config import load_config; "
            "from automodel.trainer.recipe import run; run(load_config(sys.argv[1]))")
    # both runs in subprocesses with the same threads: a CPU reduction's order (and so the last bit of a
    # grad norm) depends on the thread count, which this test process may not share
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    for name in ("straight", "killed"):
        (tmp_path / f"{name}.yaml").write_text(dump_yaml(cfg(name)))
    straight = subprocess.run([sys.executable, "-c", code, str(tmp_path / "straight.yaml")], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=300)
    assert straight.returncode == 0, straight.stderr[-2000:]
    cmd = [sys.executable, "-c", code, str(tmp_path / "killed.yaml")]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (out / "checkpoints/latest").is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert logged("killed")[-1][0] < 12
    rerun = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "resuming from" in rerun.stdout
    assert logged("killed") == logged("straight")
    assert [m[0] for m in logged("straight")] == list(range(1, 13))

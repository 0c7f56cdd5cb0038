"""asr on the engine: tiny Whisper and Wav2Vec2-CTC train on the committed spoken digits, log val_wer/val_cer,
resume exactly, export loadable models, and two FSDP2 processes match one."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from automodel.trainer.metrics import read_metrics
from tests.conftest import interrupted_at_call
from tests.trainer.asr_assets import CLIPS, REPO, asr_config, write_models

FEW = ("data.num_samples=32", "data.validation.num_samples=8", "schedule.global_batch_size=8",
       "schedule.micro_batch_size=4")


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_models(tmp_path_factory.mktemp("asr_models"))


def _config(models: dict[str, Path], kind: str, out: Path, *overrides: str) -> Any:
    return asr_config(models[kind], CLIPS / "train.jsonl", out, *FEW, *overrides, validation=CLIPS / "val.jsonl")


def _logged(out: Path) -> list[tuple[Any, ...]]:
    return [(r["step"], r["loss"], r.get("val_loss"), r.get("val_wer"), r.get("val_cer"))
            for r in read_metrics(out / "metrics.jsonl")]


@pytest.mark.parametrize("kind", ["whisper", "ctc"])
def test_loss_falls_and_wer_is_logged(models: dict[str, Path], tmp_path: Path, kind: str) -> None:
    from automodel.trainer.recipe import run

    result = run(_config(models, kind, tmp_path / kind, "schedule.max_steps=10", "schedule.val_every=5"))
    records = read_metrics(tmp_path / kind / "metrics.jsonl")
    assert records[-1]["loss"] < 0.9 * records[0]["loss"]
    vals = [r for r in records if "val_loss" in r]
    assert [r["step"] for r in vals] == [5, 10]
    assert all(r["val_wer"] >= 0 and r["val_cer"] >= 0 for r in vals)
    assert records[0]["tokens"] > 0 and records[0]["target_tokens"] > 0
    summary = json.loads((tmp_path / kind / "summary.json").read_text())
    assert summary["val_metrics"] == result.val_metrics == {"val_wer": vals[-1]["val_wer"],
                                                            "val_cer": vals[-1]["val_cer"]}


def test_interrupted_run_resumes_to_identical_losses(models: dict[str, Path], tmp_path: Path) -> None:
    from automodel.trainer import recipe
    from automodel.trainer.tasks import asr

    args = ("schedule.max_steps=4", "schedule.checkpoint_every=2", "schedule.val_every=2", "peft.method=lora",
            "peft.dropout=0.1")
    recipe.run(_config(models, "whisper", tmp_path / "straight", *args))
    # step 3's first micro batch (2 per step, 2 validation batches)
    with interrupted_at_call(asr, 2 * 2 + 2 + 1), pytest.raises(KeyboardInterrupt):
        recipe.run(_config(models, "whisper", tmp_path / "resumed", *args))
    assert recipe.run(_config(models, "whisper", tmp_path / "resumed", *args)).resumed_from == 2
    assert _logged(tmp_path / "resumed") == _logged(tmp_path / "straight")


RELOAD = """
import json, sys, torch
from transformers import AutoModelForCTC, AutoProcessor
from peft import AutoPeftModel
want = torch.load(sys.argv[1])
processor = AutoProcessor.from_pretrained(sys.argv[2])
merged = AutoModelForCTC.from_pretrained(sys.argv[2]).eval()
assert type(AutoProcessor.from_pretrained(sys.argv[3])).__name__ == "WhisperProcessor"
adapted = AutoPeftModel.from_pretrained(sys.argv[3]).eval()  # onto the run's saved random base, on its own
with torch.no_grad():
    ctc = merged(input_values=want["ctc_in"]).logits
    whisper = adapted(input_features=want["w_in"], decoder_input_ids=want["w_dec"]).logits
print(json.dumps([float((ctc - want["ctc"]).abs().max()), float((whisper - want["whisper"]).abs().max())]))
"""


def test_exports_load_in_a_new_process(models: dict[str, Path], tmp_path: Path) -> None:
    """CTC full fine-tuning exports a merged model, Whisper LoRA an adapter, each with its processor; a new
    process elsewhere loads them with AutoProcessor / AutoModelForCTC / AutoPeftModel (the adapter onto the
    run's saved random base, from its directory alone) and computes the logits of the trained weights (the
    final checkpoint's, loaded here into the engine's own seed-0 model)."""
    import torch

    from automodel.trainer.checkpoint import read_weights
    from automodel.trainer.peft import adapt
    from automodel.trainer.recipe import run
    from automodel.trainer.tasks import asr

    short = ("schedule.max_steps=2", "data.validation.num_samples=2")
    runs = {"ctc": _config(models, "ctc", tmp_path / "ctc", *short, "checkpoint.export=merged"),
            "whisper": _config(models, "whisper", tmp_path / "w", *short, "peft.method=lora",
                               "checkpoint.export=adapter")}
    exports = {kind: run(cfg).exports for kind, cfg in runs.items()}
    want: dict[str, Any] = {}
    for kind, cfg in runs.items():
        processor = asr.load_processor(str(models[kind]))
        batch = asr.collate(asr.build_samples(cfg.data, processor, validation=True, seed=0), processor)
        from automodel.trainer.modeling import build_model

        model = adapt(build_model(json.loads((models[kind] / "config.json").read_text()), device="cpu", seed=0),
                      cfg.peft)
        state = read_weights(Path(cfg.output_dir) / "checkpoints/step_00000002")
        assert not model.load_state_dict(state, strict=False).unexpected_keys
        with torch.no_grad():
            if kind == "ctc":
                want["ctc_in"] = batch["input_values"]
                want["ctc"] = model.eval()(input_values=batch["input_values"]).logits
            else:
                want["w_in"], want["w_dec"] = batch["input_features"], batch["decoder_input_ids"]
                want["whisper"] = model.eval()(input_features=want["w_in"], decoder_input_ids=want["w_dec"]).logits
    torch.save(want, tmp_path / "want.pt")
    proc = subprocess.run([sys.executable, "-c", RELOAD, str(tmp_path / "want.pt"), exports["ctc"]["merged"],
                           exports["whisper"]["adapter"]], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == pytest.approx([0.0, 0.0], abs=1e-5)


def test_two_processes_match_one(models: dict[str, Path], tmp_path: Path) -> None:
    """FSDP2 over 2 gloo processes (Whisper's encoder and decoder layers sharded; greedy generation for WER in
    lock step on both ranks) equals one process with gradient accumulation."""
    from automodel.trainer.config import dump_yaml
    from automodel.trainer.recipe import run

    args = ("schedule.max_steps=2", "schedule.val_every=2", "data.validation.num_samples=16")  # 2 chunks: a round
    run(_config(models, "whisper", tmp_path / "one", *args))
    (tmp_path / "two.yaml").write_text(dump_yaml(_config(models, "whisper", tmp_path / "two", *args)))
    script = tmp_path / "worker.py"
    script.write_text("import sys\nfrom automodel.trainer.config import load_config\n"
                      "from automodel.trainer.recipe import run\nrun(load_config(sys.argv[1]))\n")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           str(script), str(tmp_path / "two.yaml")], cwd=REPO, capture_output=True, text=True,
                          timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = read_metrics(tmp_path / "one/metrics.jsonl"), read_metrics(tmp_path / "two/metrics.jsonl")
    assert [r["step"] for r in two] == [1, 2]
    for a, b in zip(one, two, strict=True):
        assert a["target_tokens"] == b["target_tokens"]
        for key in ("loss", "grad_norm", "val_loss", "val_wer", "val_cer"):
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-4), (a["step"], key)

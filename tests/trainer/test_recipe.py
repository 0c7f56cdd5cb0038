"""The recipe end to end on a tiny CPU model: loss falls, metrics, exact resume after an interrupt and a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from automodel.trainer.metrics import read_metrics
from tests.conftest import interrupted_at_call

REPO = Path(__file__).resolve().parents[2]


def _losses(output_dir: Path) -> list[tuple[int, float, float | None]]:
    return [(r["step"], r["loss"], r.get("val_loss")) for r in read_metrics(output_dir / "metrics.jsonl")]


def test_single_process_loss_falls_and_metrics_are_written(tiny_config, tmp_path: Path) -> None:
    from automodel.trainer.recipe import run

    cfg = tiny_config("schedule.max_steps=24", "schedule.val_every=12", "optimizer.lr=2e-2")
    result = run(cfg)
    records = read_metrics(tmp_path / "run/metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, 25))
    for key in ("loss", "lr", "tokens_per_s", "grad_norm", "tokens", "target_tokens"):
        assert all(isinstance(r[key], (int, float)) for r in records), key
    # Pinned: random init with seed 0 on the committed tiny recipe (fp32 CPU).
    assert records[0]["loss"] == pytest.approx(5.99656, rel=1e-4)
    first, last = records[0]["loss"], sum(r["loss"] for r in records[-4:]) / 4
    assert last < first - 0.5
    vals = [r["val_loss"] for r in records if "val_loss" in r]
    assert len(vals) == 2 and vals[1] < vals[0]
    assert result.final_loss == records[-1]["loss"] and result.val_loss == vals[-1]
    assert result.steps == 24 and result.tokens_per_s > 0
    summary = json.loads((tmp_path / "run/summary.json").read_text())
    assert summary["peak_memory_bytes"] > 0 and "estimate" in summary
    assert (tmp_path / "run/config.yaml").is_file()


def test_lr_schedule_warmup_and_decay(tiny_config) -> None:
    from automodel.trainer.recipe import lr_factor

    cfg = tiny_config("lr_schedule.warmup_steps=4", "lr_schedule.min_lr_ratio=0.1")
    factors = [lr_factor(cfg, s, 20) for s in range(20)]
    assert factors[:4] == pytest.approx([0.2, 0.4, 0.6, 0.8]) and factors[4] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[4:], factors[5:], strict=False)) and factors[-1] > 0.1
    lin = tiny_config("lr_schedule.kind=linear")
    assert lr_factor(lin, 10, 20) == pytest.approx(1 - 9 / 19)


def test_target_only_logits_equal_full_logits_loss(tiny_assets: Path) -> None:
    import torch
    import torch.nn.functional as F

    from automodel.trainer.data import Sample
    from automodel.trainer.modeling import build_model
    from automodel.trainer.tasks.llm import collate, forward_loss

    config = json.loads((tiny_assets / "model/config.json").read_text())
    model = build_model(config, device="cpu", seed=1)
    tokenizer = type("Tok", (), {"pad_token_id": 0})()
    batch = collate([Sample((1, 5, 6, 7, 8), (-100, -100, -100, 7, 8)), Sample((1, 9, 10), (-100, 9, 10))], tokenizer)
    ours = forward_loss(model, batch)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    vocab = logits.shape[-1]
    ref = F.cross_entropy(logits[:, :-1].reshape(-1, vocab), batch["labels"][:, 1:].reshape(-1), reduction="sum")
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_interrupted_run_resumes_to_identical_losses(tiny_config, tmp_path: Path) -> None:
    from automodel.trainer import recipe
    from automodel.trainer.tasks import llm

    args = ("schedule.max_steps=8", "schedule.checkpoint_every=3", "schedule.val_every=4", "schedule.log_every=2",
            "peft.dropout=0.1")
    recipe.run(tiny_config(*args, output_dir=tmp_path / "straight"))

    # first micro batch of step 5 (2 micro batches per step)
    with interrupted_at_call(llm, 2 * 4 + 1), pytest.raises(KeyboardInterrupt):
        recipe.run(tiny_config(*args, output_dir=tmp_path / "resumed"))
    assert (tmp_path / "resumed/checkpoints/latest").read_text().strip() == "step_00000003"
    result = recipe.run(tiny_config(*args, output_dir=tmp_path / "resumed"))
    assert result.resumed_from == 3
    assert _losses(tmp_path / "resumed") == _losses(tmp_path / "straight")
    again = recipe.run(tiny_config(*args, output_dir=tmp_path / "resumed"))  # finished: nothing left to do
    assert again.resumed_from == 8 and again.final_loss == result.final_loss
    assert again.val_loss == result.val_loss is not None
    assert _losses(tmp_path / "resumed") == _losses(tmp_path / "straight")


def test_sigkill_mid_run_then_rerun_reproduces_losses(tiny_config, tmp_path: Path) -> None:
    """A real SIGKILL while training; rerunning the same command resumes from `latest`."""
    from automodel.trainer.config import dump_yaml
    from automodel.trainer.recipe import run

    args = ("schedule.max_steps=16", "schedule.checkpoint_every=4", "schedule.log_every=1")
    run(tiny_config(*args, output_dir=tmp_path / "straight"))
    out = tmp_path / "killed"
    config_file = tmp_path / "killed.yaml"
    config_file.write_text(dump_yaml(tiny_config(*args, output_dir=out)))
    code = ("import sys; from automodel.trainer.config import load_config; "
            "from automodel.trainer.recipe import run; run(load_config(sys.argv[1]))")
    cmd = [sys.executable, "-c", code, str(config_file)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (out / "checkpoints/latest").is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    killed_at = _losses(out)[-1][0]
    assert killed_at < 16
    rerun = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "resuming from" in rerun.stdout
    assert _losses(out) == _losses(tmp_path / "straight")


def test_gated_or_missing_model_is_a_user_error(tiny_config, monkeypatch) -> None:
    import huggingface_hub.constants

    from automodel.catalog.errors import UserError
    from automodel.trainer.recipe import run

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at call time; no network
    with pytest.raises(UserError) as err:
        run(tiny_config("model.name=no-such-org/no-such-model", "model.init=pretrained"))
    assert err.value.field == "model.name" and "no-such-org/no-such-model" in err.value.message
    assert "hf auth login" in (err.value.hint or "")  # gated models
    assert "model directory" in (err.value.hint or "")  # the catalog's one resolution: the local way out
    # a local directory without weights: a clear message that points at model.init=random
    with pytest.raises(UserError) as err:
        run(tiny_config("model.init=pretrained"))
    assert err.value.field == "model.name" and "model.init=random" in (err.value.hint or "")


def test_packing_with_epochs_and_too_large_batch(tiny_config, tiny_assets: Path) -> None:
    from automodel.catalog.errors import UserError
    from automodel.trainer.recipe import run
    from automodel.trainer.tasks.llm import build_samples, load_processor

    args = ("data.packing=true", "schedule.max_steps=null", "schedule.epochs=2", "schedule.global_batch_size=32",
            "schedule.micro_batch_size=16", "schedule.log_every=100")
    cfg = tiny_config(*args)
    rows = build_samples(cfg.data, load_processor(cfg.model.name), validation=False, seed=cfg.seed)
    assert all(r.position_ids is not None and len(r.input_ids) <= 48 for r in rows) and len(rows) < 256
    result = run(cfg)
    assert result.steps == 2 * (len(rows) // 32)
    logged = read_metrics(Path(cfg.output_dir) / "metrics.jsonl")
    assert [r["epoch"] for r in logged] == [1]  # one line: the final step (log_every is larger)
    with pytest.raises(UserError) as err:
        run(tiny_config(*args[:-2], "schedule.global_batch_size=4096", "schedule.micro_batch_size=16"))
    assert err.value.field == "schedule.global_batch_size" and "packed rows" in err.value.message


def test_committed_tiny_example_trains_and_exports(tmp_path: Path, monkeypatch) -> None:
    """examples/llm/tiny_offline.yaml as committed (shortened): the loss falls and peft loads the adapter."""
    from peft import PeftConfig

    from automodel.trainer.config import load_config
    from automodel.trainer.recipe import run

    monkeypatch.chdir(REPO)  # the example's paths are relative to the repository root
    cfg = load_config(REPO / "examples/llm/tiny_offline.yaml",
                      [f"output_dir={tmp_path / 'tiny'}", "schedule.max_steps=40", "schedule.val_every=20",
                       "logging.progress_bar=false"])
    result = run(cfg)
    records = read_metrics(tmp_path / "tiny/metrics.jsonl")
    assert records[-1]["loss"] < records[0]["loss"] - 1.0
    assert PeftConfig.from_pretrained(result.exports["adapter"]).r == cfg.peft.rank


def test_peak_memory_covers_the_training_loop_only(tiny_config, monkeypatch) -> None:
    """The measured peak (compared with the estimate) starts after the model, optimizer and a resume's
    full-tensor copies are placed, and is read before export gathers full tensors."""
    import torch

    from automodel.trainer import checkpoint, export, metrics
    from automodel.trainer.recipe import run

    reset_on = []
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", reset_on.append)
    metrics.reset_peak(torch.device("cuda", 1))
    metrics.reset_peak(torch.device("cpu"))
    assert reset_on == [torch.device("cuda", 1)]

    run(tiny_config("schedule.max_steps=2"))
    calls: list[str] = []

    def record(name, fn):
        def wrapped(*args, **kwargs):
            calls.append(name)
            return fn(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(checkpoint, "load", record("load", checkpoint.load))
    monkeypatch.setattr(metrics, "reset_peak", record("reset", metrics.reset_peak))
    monkeypatch.setattr(metrics, "peak_memory", record("peak", metrics.peak_memory))
    monkeypatch.setattr(export, "export_adapter", record("export", export.export_adapter))
    result = run(tiny_config("schedule.max_steps=3", "checkpoint.export=adapter"))
    assert result.resumed_from == 2 and calls == ["load", "reset", "peak", "export"]


def test_cpu_offload_in_one_process_is_refused(tiny_config, tmp_path: Path) -> None:
    """One process trains the plain model on its GPU; offload (an FSDP2 policy) would silently not happen
    while the estimate counts weights, gradients and optimizer state in host memory."""
    from automodel.catalog.errors import UserError
    from automodel.trainer.recipe import run

    with pytest.raises(UserError, match="CPU offload needs FSDP2") as err:
        run(tiny_config("distributed.cpu_offload=true"))
    assert err.value.field == "distributed.cpu_offload" and not (tmp_path / "run").exists()


def test_the_runs_own_words_fresh_resumed_and_finished(tiny_config, tmp_path: Path, capsys) -> None:
    """A fresh run says nothing about resuming; a longer rerun resumes from step N; rerunning a finished run
    says so (no summary with 0 tokens/s, summary.json untouched)."""
    from automodel.trainer.recipe import run

    run(tiny_config("schedule.max_steps=2", "schedule.checkpoint_every=2"))
    err = capsys.readouterr().err
    assert "resumed" not in err and "already finished" not in err
    summary = (tmp_path / "run/summary.json").read_text()
    again = run(tiny_config("schedule.max_steps=2", "schedule.checkpoint_every=2"))
    out, err = capsys.readouterr()
    assert "already finished" in err and "step_00000002 is step 2 of 2" in err and "schedule.max_steps" in err
    assert "tokens/s" not in err and "resuming" not in out
    assert (tmp_path / "run/summary.json").read_text() == summary and again.steps == 2
    run(tiny_config("schedule.max_steps=3", "schedule.checkpoint_every=2"))
    out, err = capsys.readouterr()
    assert "resuming from" in out and "resumed from step 2" in err

"""`automodel finetune | validate | config` through the router: exit codes, messages, dry-run, no secrets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from automodel.advisor.cli import main as automodel

TINY_LLAMA = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 128, "hidden_size": 64,
    "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
    "max_position_embeddings": 128, "rms_norm_eps": 1e-5, "tie_word_embeddings": False,
}


@pytest.fixture
def tiny_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A config for a random-init 2-layer Llama on a 4-row jsonl file, all inside tmp_path; its output_dir
    interpolates HF_TOKEN, which holds `secret`."""
    monkeypatch.setenv("HF_TOKEN", "secret")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text(json.dumps(TINY_LLAMA))
    rows = [{"prompt": f"say {i}", "completion": f" {i}"} for i in range(4)]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = {
        "model": {"name": str(tmp_path / "model" / "config.json"), "init": "random"},
        "data": {"source": str(tmp_path / "train.jsonl"), "format": "completion", "max_seq_len": 32,
                 "completion": {"prompt_column": "prompt", "completion_column": "completion"}},
        "schedule": {"global_batch_size": 4, "micro_batch_size": 2, "max_steps": 2},
        "output_dir": str(tmp_path / "out-${HF_TOKEN}"),
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_config_schema_is_json_schema(capsys: pytest.CaptureFixture[str]) -> None:
    assert automodel(["config", "schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["additionalProperties"] is False
    assert {"model", "data", "schedule", "peft"} <= set(schema["properties"])
    assert "description" in schema["$defs"]["PeftConfig"]["properties"]["rank"]


def test_help_lists_examples(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        automodel(["finetune", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "--nproc-per-node" in out and "tiny_offline.yaml" in out and "key.sub=value" in out


def test_validate_ok(tiny_config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert automodel(["validate", "-c", str(tiny_config), "--nproc-per-node", "2"]) == 0
    out = capsys.readouterr().out
    assert "config ok" in out and "micro 2 x 2 processes x 1 accumulation" in out


@pytest.mark.parametrize(
    ("argv", "field", "needle"),
    [
        (["validate", "-c", "{cfg}", "peft.rnak=4"], "peft.rnak", "did you mean `peft.rank`?"),
        (["validate", "-c", "{cfg}", "--nproc-per-node", "3"], "schedule.global_batch_size", "not divisible"),
        (["validate", "-c", "{cfg}", "data.source=/no/such.jsonl"], "data.source", "no such file"),
        (["validate", "-c", "{cfg}", "model.name=no-such-model-xyz"], "model.name", "unknown model"),
        (["validate", "-c", "{cfg}", "checkpoint.resume=/no/ckpt"], "checkpoint.resume", "no such checkpoint"),
        (["validate", "-c", "{cfg}", "schedule.micro_batch_size=3"], "schedule.global_batch_size",
         "use a multiple of 3 (e.g. 6)"),
        (["validate", "-c", "{cfg}", "--peft.rank"], "--peft.rank", "cannot read override"),
        (["validate", "-c", "/no/such.yaml"], "-c", "cannot read config file"),
        (["finetune", "llm", "-c", "{cfg}", "--nnodes", "2"], "--master-addr", "multi-node"),
        (["validate", "-c", "{cfg}", "peft.target_modules=q_proj,qproj"], "peft.target_modules",
         "qproj matches no linear layer"),
        # finetune runs validate's checks before loading anything: the typo stops it, not a silent partial LoRA
        (["finetune", "llm", "-c", "{cfg}", "peft.target_modules=q_proj,qproj"], "peft.target_modules",
         "qproj matches no linear layer"),
        (["finetune", "llm", "-c", "{cfg}", "data.source=/no/such.jsonl"], "data.source", "no such file"),
        (["validate", "-c", "{cfg}", "--nproc-per-node", "two"], "--nproc-per-node", "'two' is not a whole number"),
        (["finetune", "llm"], "--config", "is required"),
        (["validate", "-c", "{cfg}", "--nnodes", "0"], "--nnodes", "must be at least 1, got 0"),  # was a traceback
        (["validate", "-c", "{cfg}", "--nproc-per-node", "-1"], "--nproc-per-node", "must be at least 1"),
        (["finetune", "llm", "-c", "{cfg}", "--master-port", "99999"], "--master-port", "in [1, 65535]"),
    ],
)
def test_user_errors_exit_2_naming_the_field(tiny_config: Path, capsys: pytest.CaptureFixture[str],
                                             argv: list[str], field: str, needle: str) -> None:
    code = automodel([a.replace("{cfg}", str(tiny_config)) for a in argv])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and "Traceback" not in err
    assert f"{field}:" in err and needle in err


def test_yaml_syntax_error_is_one_line_with_the_position(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  name: [unclosed\n")
    assert automodel(["validate", "-c", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: -c: {bad} is not valid YAML at line 3, column 1: expected ',' or ']'")
    assert "<unicode string>" not in err and len(err.strip().splitlines()) == 2  # message + fix


def test_seq_len_beyond_the_context_warns(tiny_config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert automodel(["validate", "-c", str(tiny_config), "data.max_seq_len=256"]) == 0
    assert "warning    data.max_seq_len 256 is beyond" in capsys.readouterr().out  # context is 128
    assert automodel(["validate", "-c", str(tiny_config), "data.max_seq_len=128"]) == 0
    assert "warning" not in capsys.readouterr().out


def test_task_mismatch_with_the_yaml(tiny_config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = yaml.safe_load(tiny_config.read_text())
    tiny_config.write_text(yaml.safe_dump({**data, "task": "asr"}))
    assert automodel(["finetune", "llm", "-c", str(tiny_config), "--dry-run"]) == 2
    assert "task: the config is for task `asr`" in capsys.readouterr().err


def test_dry_run_prints_config_and_estimate_without_secrets(tiny_config: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert automodel(["finetune", "llm", "-c", str(tiny_config), "--dry-run", "--nproc-per-node", "2",
                      "peft.rank=4"]) == 0
    captured = capsys.readouterr()
    out = captured.out
    assert "secret" not in out and "secret" not in captured.err
    resolved = yaml.safe_load(out.split("\n---\n")[0])
    assert resolved["peft"]["rank"] == 4
    assert resolved["output_dir"].endswith("out-${HF_TOKEN}")
    assert "memory estimate per GPU" in out and "2 GPUs" in out and "peak allocated" in out
    assert not (tiny_config.parent / "out-secret").exists()  # a dry run writes nothing


def test_docs_carry_the_current_schema_tables(capsys: pytest.CaptureFixture[str]) -> None:
    """docs/training.md embeds `automodel config schema --format markdown`; regenerate it when this fails."""
    from automodel.trainer.config import TrainConfig
    from automodel.trainer.overrides import schema_paths

    assert automodel(["config", "schema", "--format", "markdown"]) == 0
    tables = capsys.readouterr().out.strip()
    docs = (Path(__file__).resolve().parents[2] / "docs" / "training.md").read_text()
    assert tables in docs
    sections = {p for p in schema_paths(TrainConfig) if f"### `{p}`" in tables}
    leaves = set(schema_paths(TrainConfig)) - sections
    assert all(f"| `{p}` |" in tables for p in leaves)


QLORA = ["peft.method=qlora", "model.init=pretrained"]  # the weights are only read once the run starts


def test_qlora_validates_and_dry_runs_anywhere(tiny_config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert automodel(["validate", "-c", str(tiny_config), *QLORA]) == 0
    assert "config ok" in capsys.readouterr().out
    assert automodel(["finetune", "llm", "-c", str(tiny_config), "--dry-run", *QLORA]) == 0
    out = capsys.readouterr().out
    assert yaml.safe_load(out.split("\n---\n")[0])["peft"]["method"] == "qlora"
    assert "memory estimate per GPU" in out and "assumes: QLoRA: bitsandbytes NF4" in out


@pytest.mark.parametrize("argv", [["validate", "-c", "{cfg}", "--nproc-per-node", "2"],
                                  ["finetune", "llm", "-c", "{cfg}", "--dry-run", "--nproc-per-node", "2"],
                                  ["finetune", "llm", "-c", "{cfg}", "--nnodes", "2", "--master-addr", "h",
                                   "--master-port", "29500"]])
def test_qlora_on_more_than_one_process_exits_2(tiny_config: Path, capsys: pytest.CaptureFixture[str],
                                                argv: list[str]) -> None:
    assert automodel([a.replace("{cfg}", str(tiny_config)) for a in argv] + QLORA) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: peft.method: qlora runs in one process, not 2") and "peft.method=lora" in err


def test_adamw_8bit_on_more_than_one_process_exits_2(tiny_config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """bitsandbytes' 8-bit AdamW steps whole tensors, not FSDP2 shards: refused before anything runs."""
    argv = ["validate", "-c", str(tiny_config), "--nproc-per-node", "2", "optimizer.name=adamw-8bit"]
    assert automodel(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: optimizer.name: adamw-8bit runs in one process, not 2") and "Traceback" not in err
    assert automodel(["validate", "-c", str(tiny_config), "optimizer.name=adamw-8bit"]) == 0


def test_qlora_without_bitsandbytes_exits_2_before_writing(tiny_config: Path, capsys: pytest.CaptureFixture[str],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Whether or not this machine has bitsandbytes: both checks that look for it (the doctor's pre-flight
    and the engine's own) are shown a machine without it."""
    from automodel.trainer import environment, peft

    real_spec, real_probe = peft.importlib.util.find_spec, environment.probe_package
    monkeypatch.setattr(peft.importlib.util, "find_spec",
                        lambda name, *a: None if name == "bitsandbytes" else real_spec(name, *a))
    monkeypatch.setattr(environment, "probe_package", lambda dist, module, load: environment.Package(dist, None)
                        if dist == "bitsandbytes" else real_probe(dist, module, load))
    assert automodel(["finetune", "llm", "-c", str(tiny_config), *QLORA]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: peft.method: ") and "pip install bitsandbytes" in err and "Traceback" not in err
    assert err.count("error:") == 1
    assert not (tiny_config.parent / "out-secret").exists()  # stopped before the output dir was made


def test_cpu_offload_in_one_process_exits_2(tiny_config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Offload is an FSDP2 policy; one process would train unsharded on its GPU, against the estimate."""
    for argv in (["validate", "-c", str(tiny_config)], ["finetune", "llm", "-c", str(tiny_config), "--dry-run"]):
        assert automodel([*argv, "distributed.cpu_offload=true"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: distributed.cpu_offload: CPU offload needs FSDP2") and "Traceback" not in err
    assert automodel(["validate", "-c", str(tiny_config), "--nproc-per-node", "2", "distributed.cpu_offload=true"]) == 0


def test_doctor_json_and_table(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert automodel(["doctor", "--json", "--output-dir", str(tmp_path)]) == 0
    data = json.loads(capsys.readouterr().out)
    verdicts = {(r["task"], r["method"]): r for r in data["readiness"]}
    assert verdicts["llm", "lora"]["ready"] and verdicts["llm", "full"]["ready"]  # CPU: for testing
    assert data["output_dir"] == str(tmp_path) and data["free_disk_bytes"] > 0
    assert automodel(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "ready to train?" in out and "torch" in out and "host RAM" in out
    assert automodel(["doctor", "extra"]) == 2


def test_finetune_stops_first_on_what_the_machine_lacks(tiny_config: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    import dataclasses

    from automodel.trainer import cli, environment

    real = environment.probe(".", gpu_details=False)
    packages = {k: v for k, v in real.packages.items() if k != "peft"}
    monkeypatch.setattr(cli, "probe", lambda *a, **k: dataclasses.replace(real, packages=packages))
    assert automodel(["finetune", "llm", "-c", str(tiny_config)]) == 2
    err = capsys.readouterr().err
    assert "peft.method: this machine cannot run llm lora: peft (not installed)" in err and "automodel doctor" in err
    assert not list(tiny_config.parent.glob("out-*"))  # stopped before anything was written

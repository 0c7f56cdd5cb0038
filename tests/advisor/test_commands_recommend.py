"""`automodel recommend`: flags, exit codes, the --json shape, --write-config, and consistency with
`automodel estimate` for every pick over a grid of scenarios."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from automodel.advisor import hardware
from automodel.advisor.cli import main
from automodel.trainer.config import load_config

GIB = 2**30


def recommend_json(capsys, *flags: str) -> dict:
    assert main(["recommend", *flags, "--json"]) == 0
    out = capsys.readouterr().out
    return json.loads(out)  # stdout is JSON only


def test_json_shape_is_the_issue_s(capsys) -> None:
    doc = recommend_json(capsys, "--task", "vlm", "--gpu-mem", "24GB", "--top", "3")
    assert {"inputs", "recommendations", "excluded"} <= set(doc)
    assert doc["inputs"]["task"] == "vlm" and doc["inputs"]["gpu_mem_bytes"] == 24 * GIB
    assert 0 < len(doc["recommendations"]) <= 3
    for i, rec in enumerate(doc["recommendations"], 1):
        assert rec["rank"] == i and rec["modality"] == "vlm"
        assert {"rank", "model", "hf_id", "family", "modality", "params", "strategy", "estimate", "gpu_mem_bytes",
                "headroom_bytes", "score", "reasons"} <= set(rec)
        assert set(rec["strategy"]) == {"method", "lora_rank", "precision", "grad_ckpt", "gpus", "nodes",
                                        "micro_batch", "grad_accum", "seq_len", "images", "image_size"}
        assert set(rec["estimate"]) == {"peak_allocated_bytes", "peak_reserved_bytes", "breakdown"}
        assert rec["headroom_bytes"] == rec["gpu_mem_bytes"] - rec["estimate"]["peak_reserved_bytes"] > 0
        assert isinstance(rec["reasons"], list) and rec["reasons"]
    assert all(set(e) == {"model", "reason", "kind"} for e in doc["excluded"])


def test_flags_reach_the_profile(capsys) -> None:
    doc = recommend_json(capsys, "--task", "llm", "--use-case", "code", "--gpu", "A100-80GB", "--gpus", "2",
                         "--nodes", "1", "--priority", "quality", "--multilingual", "--no-gated", "--commercial",
                         "--method", "lora", "--seq-len", "4096", "--batch-size", "2", "--top", "2")
    inputs = doc["inputs"]
    assert (inputs["use_case"], inputs["gpu"], inputs["gpus"], inputs["priority"]) == ("code", "A100-80GB", 2, "quality")
    assert inputs["multilingual"] and inputs["no_gated"] and inputs["commercial"]
    for rec in doc["recommendations"]:
        s = rec["strategy"]
        assert (s["method"], s["seq_len"], s["micro_batch"]) == ("lora", 4096, 2)


def test_too_small_hardware_is_exit_0_with_reasons(capsys, tmp_path) -> None:
    assert main(["recommend", "--task", "llm", "--gpu-mem", "1", "--write-config", str(tmp_path / "x.yaml")]) == 0
    assert "no config was written" in capsys.readouterr().err and not (tmp_path / "x.yaml").exists()
    doc = recommend_json(capsys, "--task", "llm", "--gpu-mem", "1")
    assert doc["recommendations"] == []
    sized = [e for e in doc["excluded"] if "remote-code" not in e["reason"]]
    assert sized and all("GiB per GPU" in e["reason"] and "you have 1.0" in e["reason"] for e in sized)


@pytest.mark.parametrize(
    ("flags", "field"),
    [
        (["--task", "llm", "--gpu-mem", "lots"], "--gpu-mem"),
        (["--task", "llm", "--gpu", "banana"], "--gpu"),
        (["--task", "llm", "--use-case", "vqa", "--gpu-mem", "24"], "--use-case"),
    ],
)
def test_bad_input_exits_2_naming_the_flag(capsys, flags, field) -> None:
    assert main(["recommend", *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {field}:") and "Traceback" not in err


def test_argparse_errors_exit_2_naming_the_flag(capsys) -> None:
    cases = [("--task", ["--gpu-mem", "24"]), ("--task", ["--task", "tts", "--gpu-mem", "24"]),
             ("--gpus", ["--task", "llm", "--gpus", "0"]), ("--top", ["--task", "llm", "--top", "0"])]
    for field, flags in cases:
        assert main(["recommend", *flags]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {field}: ") and "usage:" not in err, err


def test_no_hardware_given_or_detected_exits_2(capsys, monkeypatch) -> None:
    monkeypatch.setattr(hardware, "detect", lambda **kw: None)
    assert main(["recommend", "--task", "llm"]) == 2
    assert "none detected" in capsys.readouterr().err


def test_detected_hardware_is_used(capsys, monkeypatch) -> None:
    found = hardware.Hardware(gpu="L4", memory_bytes=22 * GIB, gpus_per_node=2, source="nvidia-smi")
    monkeypatch.setattr(hardware, "detect", lambda **kw: found)
    doc = recommend_json(capsys, "--task", "asr")
    assert doc["inputs"]["hardware_source"] == "nvidia-smi" and doc["inputs"]["gpus"] == 2
    assert doc["recommendations"][0]["gpu_mem_bytes"] == 22 * GIB


def test_human_output_has_table_and_next_step(capsys) -> None:
    assert main(["recommend", "--task", "llm", "--gpu-mem", "24", "--use-case", "chat"]) == 0
    out = capsys.readouterr().out
    assert "GiB/GPU" in out and "next: automodel recommend --task llm --use-case chat --gpu-mem 24" in out
    assert "90% of one GPU's memory" in " ".join(out.split())  # the headroom rule, as `estimate --fit` states it
    assert "--write-config" in out and "&& automodel finetune llm -c" in out


def test_write_config_validates_against_the_trainer_schema(capsys, tmp_path) -> None:
    path = tmp_path / "sub" / "run.yaml"
    doc = recommend_json(capsys, "--task", "llm", "--gpu-mem", "24", "--write-config", str(path))
    top = doc["recommendations"][0]
    text = path.read_text()
    assert "FILL IN data.source" in text
    cfg = load_config(path)
    assert cfg.model.name == top["model"] and cfg.data.max_seq_len == top["strategy"]["seq_len"]
    assert cfg.distributed.activation_checkpointing == top["strategy"]["grad_ckpt"]


def test_write_config_writes_a_qlora_top_pick_that_validates(capsys, tmp_path) -> None:
    path = tmp_path / "q.yaml"
    assert main(["recommend", "--task", "llm", "--gpu-mem", "24", "--priority", "quality", "--json",
                 "--write-config", str(path)]) == 0
    captured = capsys.readouterr()
    first = json.loads(captured.out)["recommendations"][0]
    assert first["strategy"]["method"] == "qlora"  # bf16 LoRA of the best model does not fit in 24 GiB
    assert captured.err == ""  # the top pick itself is written: no note, no fallback to another row
    cfg = load_config(path)
    assert (cfg.model.name, cfg.peft.method, cfg.peft.rank) == (first["model"], "qlora", first["strategy"]["lora_rank"])
    assert main(["validate", "-c", str(path)]) == 2 and "data.source" in capsys.readouterr().err  # placeholder
    assert main(["validate", "-c", str(path), "data.source=someorg/chats"]) == 0
    assert "config ok" in capsys.readouterr().out


GRID = [
    ("llm", "12", "1", "balanced", "auto"),
    ("llm", "24", "1", "quality", "auto"),
    ("llm", "80", "8", "quality", "auto"),
    ("llm", "48", "1", "latency", "full"),
    ("vlm", "24", "1", "balanced", "auto"),
    ("vlm", "80", "2", "quality", "lora"),
    ("asr", "16", "1", "balanced", "auto"),
]


@pytest.mark.parametrize(("task", "mem", "gpus", "priority", "method"), GRID)
def test_every_pick_equals_automodel_estimate(capsys, task, mem, gpus, priority, method) -> None:
    doc = recommend_json(capsys, "--task", task, "--gpu-mem", mem, "--gpus", gpus, "--priority", priority,
                         "--method", method, "--top", "5")
    assert doc["recommendations"]
    for rec in doc["recommendations"]:
        s = rec["strategy"]
        flags = ["estimate", rec["model"], "--method", s["method"], "--precision", s["precision"],
                 "--seq-len", str(s["seq_len"]), "--batch-size", str(s["micro_batch"]),
                 "--grad-accum", str(s["grad_accum"]),
                 "--grad-ckpt" if s["grad_ckpt"] else "--no-grad-ckpt", "--gpus", str(s["gpus"] * s["nodes"]),
                 "--json"]
        if s["lora_rank"] is not None:
            flags += ["--lora-rank", str(s["lora_rank"])]
        # What a sample holds is part of the strategy: images and their size, or seconds of audio.
        assert {"images", "image_size"} <= set(s) if task == "vlm" else not {"images", "image_size"} & set(s)
        assert ("audio_seconds" in s) == (task == "asr")
        if task == "vlm":
            assert s["images"] >= 1
            flags += ["--images", str(s["images"]), "--image-size", s["image_size"]]
        if task == "asr":
            flags += ["--audio-seconds", str(s["audio_seconds"])]
        assert main(flags) == 0
        est = json.loads(capsys.readouterr().out)
        assert est["peak_reserved_bytes"] == rec["estimate"]["peak_reserved_bytes"], rec["model"]
        assert est["peak_allocated_bytes"] == rec["estimate"]["peak_allocated_bytes"]
        assert est["breakdown"] == rec["estimate"]["breakdown"]


def test_recommend_does_not_import_torch() -> None:
    code = ("import sys, automodel.advisor.cli as c; rc = c.main(['recommend', '--task', 'vlm', '--gpu-mem', '24',"
            " '--json']); print('TORCH', 'torch' in sys.modules, rc, file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "TORCH False 0" in done.stderr


def test_advise_runs_the_wizard(monkeypatch) -> None:
    from automodel.advisor import wizard

    monkeypatch.setattr(wizard, "run", lambda force=False: 130)
    assert main(["advise"]) == 130


def test_write_config_never_replaces_a_file_without_force(capsys, tmp_path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("# my edits\n")
    assert main(["recommend", "--task", "llm", "--gpu-mem", "24", "--write-config", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "--force" in err and "Traceback" not in err
    assert path.read_text() == "# my edits\n"  # untouched
    assert main(["recommend", "--task", "llm", "--gpu-mem", "24", "--write-config", str(path), "--force"]) == 0
    assert load_config(path).model.name and "FILL IN" in path.read_text()
    capsys.readouterr()
    assert main(["recommend", "--task", "llm", "--gpu-mem", "24", "--force"]) == 2
    assert capsys.readouterr().err.startswith("error: --force:")


def test_model_plans_a_named_model_and_the_task_follows(capsys, tmp_path) -> None:
    path = tmp_path / "vl.yaml"
    doc = recommend_json(capsys, "--model", "qwen2.5-vl-7b-instruct", "--gpu", "A100-80GB", "--gpus", "2",
                         "--write-config", str(path))
    assert doc["inputs"]["task"] == "vlm" and doc["inputs"]["models"] == ["qwen2.5-vl-7b-instruct"]
    (rec,) = doc["recommendations"]
    assert rec["model"] == "qwen2.5-vl-7b-instruct" and rec["strategy"]["gpus"] == 2
    assert load_config(path).model.name == "qwen2.5-vl-7b-instruct"
    assert main(["recommend", "--model", "Qwen/Qwen2.5-VL-7B-Instruct", "--gpu", "A100-80GB", "--gpus", "2"]) == 0
    out = capsys.readouterr().out
    assert "qwen2.5-vl-7b-instruct" in out and "next: automodel recommend --model" in out
    fam = recommend_json(capsys, "--family", "qwen2.5-vl", "--gpu-mem", "80")
    assert {r["family"] for r in fam["recommendations"]} == {"qwen2.5-vl"} and len(fam["recommendations"]) == 3


@pytest.mark.parametrize(
    ("flags", "field", "words"),
    [
        (["--model", "qwen2.5-vl-7b-instruct", "--task", "llm"], "--task", "is a vlm model"),
        (["--model", "qwen-vl-7b"], "--model", "did you mean"),
        (["--family", "qwen9"], "--family", "unknown family"),
        (["--model", "qwen3-8b", "--family", "qwen3"], "--model", "not both"),
        ([], "--task", "--model NAME"),
        (["--task", "llm", "--global-batch", "3", "--batch-size", "2"], "--global-batch", "multiple"),
    ],
)
def test_model_family_and_batch_errors_name_the_flag(capsys, flags, field, words) -> None:
    assert main(["recommend", *flags, "--gpu-mem", "24"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {field}:") and words in err and "Traceback" not in err


def test_a_model_too_big_for_the_hardware_is_excluded_with_numbers(capsys) -> None:
    doc = recommend_json(capsys, "--model", "llama-3.1-70b-instruct", "--gpu-mem", "24")
    assert doc["recommendations"] == [] and doc["excluded"][0]["kind"] == "memory"
    assert "GiB per GPU" in doc["excluded"][0]["reason"]

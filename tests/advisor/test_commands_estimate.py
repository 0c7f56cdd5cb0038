"""`automodel estimate`: JSON shape, table output, exit codes, torch-free import."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from automodel.advisor.cli import main

TINY = {
    "model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 100,
}


@pytest.fixture
def config_path(tmp_path: Path) -> str:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(TINY))
    return str(path)


def test_json_shape(config_path: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["estimate", config_path, "--method", "full", "--seq-len", "256", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    for key in ("params", "trainable_params", "peak_allocated_bytes", "peak_reserved_bytes", "breakdown",
                "assumptions"):
        assert key in doc
    assert doc["params"] == doc["trainable_params"] == 86_848
    assert doc["breakdown"]["weights"] == 4 * 86_848
    assert doc["plan"]["seq_len"] == 256 and isinstance(doc["assumptions"], list)


def test_fit_json_and_table(config_path: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["estimate", config_path, "--fit", "--gpu-mem", "2GiB", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["fit"]["budget_bytes"] == 2 * 1024**3 and doc["fit"]["max_micro_batch"] >= 1
    assert doc["fits"] is True
    assert main(["estimate", config_path, "--mode", "inference", "--new-tokens", "64"]) == 0
    out = capsys.readouterr().out
    assert "kv cache" in out and "assumptions" in out and "peak reserved" in out


@pytest.mark.parametrize(("argv", "flag"), [
    (["--seq-len", "-1"], "--seq-len"), (["--lora-rank", "0"], "--lora-rank"), (["--gpus", "0"], "--gpus"),
    (["--precision", "fp16"], "--precision"), (["--batch-size", "x"], "--batch-size"), (["--fit"], "--gpu-mem"),
    (["--fit", "--gpu-mem", "lots"], "--gpu-mem"), (["--lora-targets", ","], "--lora-targets"),
    # flags that cannot apply to the plan or the model: answering anyway would answer another question
    (["--method", "full", "--lora-rank", "8"], "--lora-rank"), (["--method", "full", "--lora-targets", "q_proj"],
    "--lora-targets"), (["--new-tokens", "5"], "--new-tokens"), (["--mode", "inference", "--grad-accum", "4"],
    "--grad-accum"), (["--mode", "inference", "--no-grad-ckpt"], "--grad-ckpt"),
    (["--mode", "inference", "--optimizer", "sgd"], "--optimizer"), (["--images", "2"], "--images"), (["--lora-targets", "q_proj,qproj"], "--lora-targets"),
    (["--image-size", "448x448"], "--image-size"), (["--max-pixels", "1000"], "--max-pixels"),
    (["--audio-seconds", "5"], "--audio-seconds"),
])
def test_nonsense_exits_2_naming_the_flag(config_path: str, argv: list[str], flag: str,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["estimate", config_path, *argv]) == 2  # argparse's own complaints are UserErrors too
    err = capsys.readouterr().err
    assert flag in err and "Traceback" not in err


def test_estimate_path_does_not_import_torch(config_path: str) -> None:
    # --compare accelerate and --mode inference --gpus N>1 import torch and accelerate; nothing else does.
    code = ("import sys; from automodel.advisor.cli import main; "
            f"rc = main(['estimate', {config_path!r}, '--json']) + main(['estimate', {config_path!r}, '--mode', "
            "'inference', '--gpu-mem', '24', '--fit', '--json']); "
            "print('TORCH' if {'torch', 'accelerate'} & set(sys.modules) else 'NOTORCH', rc)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith("NOTORCH 0")


def test_unknown_lora_target_lists_the_models_linears(config_path: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["estimate", config_path, "--lora-targets", "qproj", "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "qproj matches no linear layer" in captured.err
    assert "q_proj" in captured.err and "Value error" not in captured.err


def test_seq_len_beyond_context_warns_on_stderr(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**TINY, "max_position_embeddings": 512}))
    assert main(["estimate", str(path), "--seq-len", "1024", "--json"]) == 0
    captured = capsys.readouterr()
    doc = json.loads(captured.out)  # stdout stays one JSON document
    assert doc["plan"]["seq_len"] == 1024 and len(doc["warnings"]) == 1 and "512" in doc["warnings"][0]
    assert captured.err.startswith("warning: --seq-len = 1024 tokens is beyond")
    assert main(["estimate", str(path), "--seq-len", "512", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["warnings"] == []


def test_fit_and_recommend_share_one_headroom_rule(capsys: pytest.CaptureFixture[str]) -> None:
    flags = ["estimate", "qwen2.5-7b-instruct", "--method", "lora", "--seq-len", "2048", "--grad-ckpt"]
    assert main([*flags, "--gpu-mem", "24", "--fit", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["limit_bytes"] == doc["fit"]["limit_bytes"] == int(0.9 * 24 * 1024**3)
    assert doc["fits"] == (doc["peak_reserved_bytes"] <= doc["limit_bytes"])
    assert main(["recommend", "--model", "qwen2.5-7b-instruct", "--gpu-mem", "24", "--json"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert doc["headroom_rule"] == rec["assumptions"][0]  # one sentence, stated by both commands
    assert main([*flags, "--gpu-mem", "24"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "90% of one GPU's memory" in out and "`recommend` uses the same rule" in out


def test_compare_accelerate_and_inference_device_map(config_path: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["estimate", config_path, "--method", "full", "--compare", "accelerate", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    acc = doc["accelerate"]
    assert acc["precision"] == "bfloat16" and 0 <= acc["total_bytes"] - 2 * doc["params"] < 1024  # + buffers
    assert acc["training_bytes"] == 4 * acc["total_bytes"] and len(acc["why_ours_differs"]) >= 2
    assert main(["estimate", config_path, "--compare", "accelerate"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "accelerate estimate-memory (bfloat16" in out and "why ours differs" in out
    assert main(["estimate", config_path, "--mode", "inference", "--gpus", "2", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    placed = doc["device_map"]
    busiest = placed["gpus"][placed["busiest_gpu"]]
    assert len(placed["gpus"]) == 2 and sum(g["blocks"] for g in placed["gpus"]) == 2
    assert busiest["peak_reserved_bytes"] == doc["peak_reserved_bytes"]
    assert main(["estimate", config_path, "--mode", "inference", "--gpus", "2", "--simulate"]) == 2
    assert "error: --simulate:" in capsys.readouterr().err


def _doc(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    assert main(["estimate", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_images_cost_their_tokens(capsys: pytest.CaptureFixture[str]) -> None:
    """qwen2.5-vl-7b-instruct: 2 images > 1 > 0, each 448x448 image adding 256 tokens to the sequence."""
    docs = [_doc(capsys, "qwen2.5-vl-7b-instruct", "--images", str(n)) for n in (0, 1, 2)]
    peaks = [d["peak_reserved_bytes"] for d in docs]
    assert peaks[2] > peaks[1] > peaks[0]
    assert all(d["image_tokens_per_image"] == 256 and d["image_patches_per_image"] == 1024 for d in docs)
    # the image tokens' cost: the language model sees 2048 + 256 positions, as 2304 text tokens would
    longer = _doc(capsys, "qwen2.5-vl-7b-instruct", "--images", "0", "--seq-len", "2304")
    assert docs[1]["breakdown"]["logits"] == longer["breakdown"]["logits"]
    assert 0 <= peaks[1] - longer["peak_reserved_bytes"] < 0.02 * peaks[1]  # + pixels and the frozen tower
    big = _doc(capsys, "qwen2.5-vl-7b-instruct", "--images", "1", "--image-size", "1280x720")
    assert big["image_tokens_per_image"] == 1196 and big["plan"]["image_size"] == "1280x720"
    assert big["peak_reserved_bytes"] > peaks[1]
    capped = _doc(capsys, "qwen2.5-vl-7b-instruct", "--images", "1", "--image-size", "1280x720",
                  "--max-pixels", str(448 * 448))
    assert capped["image_tokens_per_image"] < 1196 and capped["plan"]["max_pixels"] == 448 * 448


@pytest.mark.parametrize("size", ["foo", "0x448", "448x", "448x448x3", "-5", "1000x3"])
def test_bad_image_size_exits_2(size: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["estimate", "qwen2.5-vl-7b-instruct", "--images", "1", "--image-size", size]) == 2
    err = capsys.readouterr().err
    assert "--image-size" in err and "Traceback" not in err and ("WIDTHxHEIGHT" in err or "200:1" in err)


def test_whisper_sees_30_s_and_wav2vec2_grows(capsys: pytest.CaptureFixture[str]) -> None:
    short, full = (_doc(capsys, "openai/whisper-large-v3", "--audio-seconds", s) for s in ("5", "30"))
    assert short["peak_reserved_bytes"] == full["peak_reserved_bytes"]
    assert short["audio_frames"] == full["audio_frames"] == 1500 and short["plan"]["audio_seconds"] == 5.0
    words = " ".join(short["assumptions"])
    assert all(w in words for w in ("GELU", "LayerNorm", "encoder-decoder", "1500 encoder frames"))
    assert not any(w in words for w in ("SwiGLU", "GQA", "RMSNorm"))
    w5, w30 = (_doc(capsys, "wav2vec2-base-960h", "--audio-seconds", s) for s in ("5", "30"))
    assert w30["peak_reserved_bytes"] > w5["peak_reserved_bytes"]
    assert (w5["audio_frames"], w30["audio_frames"]) == (249, 1499)
    words = " ".join(w5["assumptions"])
    assert "wav2vec2" in words and "CTC" in words and "SwiGLU" not in words and "RMSNorm" not in words


def test_gemma3_images_are_a_fixed_count(capsys: pytest.CaptureFixture[str]) -> None:
    small, large = (_doc(capsys, "gemma-3-4b-it", "--images", "1", "--image-size", s) for s in ("64x64", "4000x3000"))
    assert small["image_tokens_per_image"] == large["image_tokens_per_image"] == 256
    assert small["peak_reserved_bytes"] == large["peak_reserved_bytes"]
    assert main(["estimate", "gemma-3-4b-it", "--images", "1", "--max-pixels", "1000"]) == 2
    assert "896" in capsys.readouterr().err

"""`automodel catalog list|show` and `automodel gpus`, through the real CLI router."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from automodel.advisor.cli import main
from automodel.advisor.commands_catalog import parse_params, select_models
from automodel.catalog.errors import UserError
from automodel.catalog.registry import load_catalog

REFERENCE = Path(__file__).resolve().parents[2].parent / "shared" / "reference" / "model-configs"

# Published config.json files of models outside the catalog, with their exact (well-known) counts.
LLAMA_2_7B = {
    "architectures": ["LlamaForCausalLM"],
    "bos_token_id": 1,
    "eos_token_id": 2,
    "hidden_act": "silu",
    "hidden_size": 4096,
    "initializer_range": 0.02,
    "intermediate_size": 11008,
    "max_position_embeddings": 4096,
    "model_type": "llama",
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "num_key_value_heads": 32,
    "pretraining_tp": 1,
    "rms_norm_eps": 1e-05,
    "rope_scaling": None,
    "tie_word_embeddings": False,
    "torch_dtype": "float16",
    "use_cache": True,
    "vocab_size": 32000,
}
MISTRAL_7B = {
    "architectures": ["MistralForCausalLM"],
    "bos_token_id": 1,
    "eos_token_id": 2,
    "hidden_act": "silu",
    "hidden_size": 4096,
    "initializer_range": 0.02,
    "intermediate_size": 14336,
    "max_position_embeddings": 32768,
    "model_type": "mistral",
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "num_key_value_heads": 8,
    "rms_norm_eps": 1e-05,
    "rope_theta": 10000.0,
    "sliding_window": 4096,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "use_cache": True,
    "vocab_size": 32000,
}
PHI_1_5 = {
    "architectures": ["PhiForCausalLM"],
    "attention_dropout": 0.0,
    "embd_pdrop": 0.0,
    "hidden_act": "gelu_new",
    "hidden_size": 2048,
    "initializer_range": 0.02,
    "intermediate_size": 8192,
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": 2048,
    "model_type": "phi",
    "num_attention_heads": 32,
    "num_hidden_layers": 24,
    "num_key_value_heads": None,
    "partial_rotary_factor": 0.5,
    "qk_layernorm": False,
    "resid_pdrop": 0.0,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
    "vocab_size": 51200,
}
GPT2 = {  # tied lm_head: the shared tensor must be counted once
    "architectures": ["GPT2LMHeadModel"],
    "model_type": "gpt2",
    "n_ctx": 1024,
    "n_embd": 768,
    "n_head": 12,
    "n_layer": 12,
    "n_positions": 1024,
    "vocab_size": 50257,
}


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_list_json_has_every_model_with_exact_params(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run(capsys, "catalog", "list", "--json")
    assert rc == 0 and err == ""
    rows = {row["hf_id"]: row for row in json.loads(out)}
    assert {m.hf_id: m.params for m in load_catalog().models} == {h: r["params"] for h, r in rows.items()}
    if REFERENCE.is_dir():
        for path in REFERENCE.glob("*.json"):
            ref = json.loads(path.read_text())
            assert ref["hf_id"] in rows
            if ref["params_exact"] is not None:
                assert rows[ref["hf_id"]]["params"] == ref["params_exact"]
    assert rows["Qwen/Qwen3-30B-A3B"]["active_params"] == 3_353_032_704
    assert rows["microsoft/Phi-3-small-8k-instruct"]["params_method"] == "analytic"


def test_list_filters(capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = run(capsys, "catalog", "list", "--task", "asr", "--json")
    assert {r["family"] for r in json.loads(out)} == {"whisper", "wav2vec2"}
    _, out, _ = run(capsys, "catalog", "list", "--family", "qwen3", "--max-params", "8.2B", "--json")
    assert [r["name"] for r in json.loads(out)] == ["qwen3-0.6b", "qwen3-1.7b", "qwen3-4b", "qwen3-8b"]
    _, out, _ = run(capsys, "catalog", "list", "--use-case", "translation", "--json")
    assert [r["name"] for r in json.loads(out)] == ["whisper-small", "whisper-medium", "whisper-large-v3"]
    assert {m.family for m in select_models(family="llama")} == {"llama-3.2", "llama-3.1"}
    assert {m.family for m in select_models(family="Gemma 2")} == {"gemma-2"}
    sizes = [m.params for m in select_models(task="vlm", use_case="document", max_params=parse_params("9B"))]
    assert sizes == sorted(sizes) and max(sizes) < 9e9 and len(sizes) == 5


def test_max_params_is_a_size_class(capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = run(capsys, "catalog", "list", "--task", "llm", "--max-params", "8B", "--json")
    rows = {r["name"]: r["params"] for r in json.loads(out)}
    assert rows["llama-3.1-8b"] == 8_030_261_248 and rows["qwen3-8b"] == 8_190_735_360  # the 8B class is in
    assert max(rows.values()) < 9e9 and "gemma-2-9b-it" not in rows
    _, out, _ = run(capsys, "catalog", "list", "--task", "llm", "--max-params", "7B", "--json")
    names = {r["name"] for r in json.loads(out)}
    assert "qwen2.5-7b-instruct" in names and "llama-3.1-8b" not in names  # 7.62B is a 7B model
    assert parse_params("1.5b") == 1_600_000_000 and parse_params("8e9") == 8_000_000_001
    assert parse_params("8000000000") == 8_000_000_001  # a plain count is exact


@pytest.mark.parametrize(
    ("text", "value"),
    [("8B", 9 * 10**9), ("500M", 501 * 10**6), ("1.5b", 16 * 10**8), ("8e9", 8 * 10**9 + 1), ("1000", 1001)],
)
def test_parse_params_gives_the_exclusive_bound_of_the_size_class(text: str, value: int) -> None:
    assert parse_params(text) == value


def test_bad_flags_exit_2_with_one_message(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run(capsys, "catalog", "list", "--max-params", "eight")
    assert rc == 2 and out == "" and "--max-params" in err and "8B" in err and "Traceback" not in err
    rc, out, err = run(capsys, "catalog", "list", "--family", "lama")
    assert rc == 2 and "did you mean" in err
    rc, out, err = run(capsys, "catalog", "show", "qwen-3-8b", "--json")
    assert rc == 2 and out == "" and "error: MODEL: unknown model 'qwen-3-8b'; did you mean 'qwen3-8b'" in err
    with pytest.raises(UserError):
        parse_params("-3B")
    with pytest.raises(UserError, match="is below 1"):
        parse_params("0")
    rc, out, err = run(capsys, "catalog", "list", "--max-params", "1e400")  # was an OverflowError traceback
    assert rc == 2 and "too large" in err and "Traceback" not in err
    rc, out, err = run(capsys, "catalog", "list", "--task", "asr", "--use-case", "code", "--json")
    assert rc == 2 and out == "" and err.startswith("error: --use-case: no asr model in the catalog is made for code")
    assert "transcription" in err


def test_show_catalog_model(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(capsys, "catalog", "show", "google/GEMMA-3-4b-it", "--json")
    card = json.loads(out)
    assert rc == 0 and card["resolved_from"] == "catalog" and card["params"] == 4_300_079_472
    arch = card["architecture"]
    assert (arch["vocab_size"], arch["attention_heads"], arch["kv_heads"], arch["head_dim"]) == (
        262208,
        8,
        4,
        256,
    )
    assert arch["tied_embeddings"] is True and arch["vision_layers"] == 27 and arch["layers"] == 34
    assert card["gated"] is True and card["commercial_use"] is True and "vqa" in card["use_cases"]
    _, out, _ = run(capsys, "catalog", "show", "qwen3-30b-a3b", "--json")
    moe = json.loads(out)["architecture"]
    assert (moe["experts"], moe["experts_per_token"]) == (128, 8)
    _, out, _ = run(capsys, "catalog", "show", "whisper-large-v3-turbo", "--json")
    whisper = json.loads(out)["architecture"]
    assert (whisper["layers"], whisper["encoder_layers"], whisper["hidden_size"]) == (4, 32, 1280)


@pytest.mark.parametrize(
    ("config", "params", "layers"),
    [(LLAMA_2_7B, 6_738_415_616, 32), (MISTRAL_7B, 7_241_732_096, 32), (PHI_1_5, 1_418_270_720, 24)]
    + [(GPT2, 124_439_808, 12)],
    ids=["llama-2-7b", "mistral-7b-v0.1", "phi-1_5", "gpt2"],
)
def test_show_config_outside_catalog_gives_exact_count(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, config: dict, params: int, layers: int
) -> None:
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(json.dumps(config))
    rc, out, err = run(capsys, "catalog", "show", str(model_dir / "config.json"), "--json")
    assert rc == 0, err
    card = json.loads(out)
    assert card["params"] == params and card["resolved_from"] == "path" and card["family"] is None
    assert card["params_method"] == "meta-build" and card["architecture"]["layers"] == layers


def test_show_mistral_architecture_uses_transformers_defaults(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "config.json").write_text(
        json.dumps({k: v for k, v in MISTRAL_7B.items() if k != "num_key_value_heads"})
    )
    _, out, _ = run(capsys, "catalog", "show", str(tmp_path), "--json")
    card = json.loads(out)
    assert card["architecture"]["kv_heads"] == 8  # MistralConfig's default, not the 32 heads
    assert card["params"] == 7_241_732_096


def test_gpus_json(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(capsys, "gpus", "--json")
    rows = {r["name"]: r for r in json.loads(out)}
    assert rc == 0 and len(rows) >= 15
    assert rows["H100-SXM"]["memory_bytes"] == int(rows["H100-SXM"]["memory_gib"] * 2**30)
    assert rows["T4"]["bf16"] is False and rows["T4"]["bf16_tflops"] is None
    assert all(r["source"] for r in rows.values())


def test_tables_render(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(capsys, "catalog", "list", "--task", "vlm")
    assert rc == 0 and "gemma-3-4b-it" in out and "9 models" in out
    rc, out, _ = run(capsys, "catalog", "show", "qwen3-30b-a3b")
    assert rc == 0 and "30,532,122,624" in out and "active per token" in out
    rc, out, _ = run(capsys, "gpus")
    assert rc == 0 and "MI300X" in out and "GiB" in out


@pytest.mark.parametrize(
    "argv",
    [["catalog", "--help"], ["catalog", "list", "--help"], ["catalog", "show", "--help"], ["gpus", "--help"]],
)
def test_help_has_examples(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 0
    assert "examples:" in capsys.readouterr().out


def test_catalog_commands_never_import_torch() -> None:
    script = (
        "import io, sys, contextlib\n"
        "from automodel.advisor.cli import main\n"
        "for argv in (['catalog', 'list'], ['catalog', 'list', '--json'], ['catalog', 'show', 'llama-3.2-1b'],"
        " ['catalog', 'show', 'Qwen/Qwen3-8B', '--json'], ['gpus']):\n"
        "    with contextlib.redirect_stdout(io.StringIO()):\n"
        "        assert main(argv) == 0, argv\n"
        "print(sorted(m for m in ('torch', 'transformers', 'huggingface_hub') if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    assert result.stdout.strip() == "[]"

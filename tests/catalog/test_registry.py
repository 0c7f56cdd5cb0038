"""Model resolution (catalog name, HF id, config.json, directory, Hub) and GPU lookup. The Hub is mocked:
`huggingface_hub.hf_hub_download` is replaced, so nothing touches the network."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import huggingface_hub
import huggingface_hub.constants
import pytest
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
)

from automodel.catalog import hub as hub_module
from automodel.catalog.errors import UserError
from automodel.catalog.registry import find_gpu, find_model, load_catalog, resolve
from tests.catalog.configs import tiny_llama

# A 2-layer Llama: embed 256*64 + lm_head 256*64 + 2 * (4*64*64 + 3*64*128 + 2*64) + 64.
TINY_LLAMA = tiny_llama(num_key_value_heads=4, vocab_size=256, tie_word_embeddings=False)
TINY_LLAMA_PARAMS = 2 * 256 * 64 + 2 * (4 * 64 * 64 + 3 * 64 * 128 + 2 * 64) + 64


def _hub_error(cls: type[Exception], message: str) -> Exception:
    # The hub's HTTP errors want a live response object; the message is all resolve() reads.
    err = cls.__new__(cls)
    Exception.__init__(err, message)
    return err


@pytest.fixture(autouse=True)
def _hub_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    """The reachability probe says the Hub answered (the tests below fake its answers), so nothing here
    touches the network; the tests of the probe itself undo this."""
    monkeypatch.setattr(hub_module, "unreachable", lambda repo_id, filename="config.json", **_: None)
    # huggingface_hub reads HF_HUB_OFFLINE once, at its import: a test elsewhere that imported it under
    # HF_HUB_OFFLINE=1 must not make every Hub test here an offline one
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[dict[str, str]]:
    """Fake hf_hub_download: serves TINY_LLAMA for any repo, records each call."""
    calls: list[dict[str, str]] = []
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    def fake_download(repo_id: str, filename: str, **kwargs: object) -> str:
        calls.append({"repo_id": repo_id, "filename": filename, **kwargs})
        path = tmp_path / "hub" / repo_id / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(TINY_LLAMA))
        return str(path)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    return calls


def test_load_catalog_is_cached() -> None:
    assert load_catalog() is load_catalog()
    assert len(load_catalog().models) == 56 and len(load_catalog().families) == 17


@pytest.mark.parametrize(
    "text", ["llama-3.2-1b", "LLAMA-3.2-1B", "meta-llama/Llama-3.2-1B", " meta-llama/llama-3.2-1b "]
)
def test_catalog_names_and_ids_case_insensitive(text: str) -> None:
    resolved = resolve(text)
    assert resolved.source == "catalog" and resolved.name == "llama-3.2-1b"
    assert resolved.hf_id == "meta-llama/Llama-3.2-1B"
    assert resolved.params == 1_235_814_400 and resolved.params_method == "meta-build"
    assert resolved.config["hidden_size"] == 2048 and resolved.spec is find_model(text)


def test_resolved_config_is_a_copy() -> None:
    resolve("qwen3-8b").config["hidden_size"] = 1
    assert resolve("qwen3-8b").config["hidden_size"] == 4096 == find_model("qwen3-8b").config["hidden_size"]


def test_config_file_and_directory(tmp_path: Path) -> None:
    model_dir = tmp_path / "my-llama"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(json.dumps(TINY_LLAMA))
    by_file = resolve(str(model_dir / "config.json"))
    by_dir = resolve(model_dir)
    for resolved in (by_file, by_dir):
        assert resolved.source == "path" and resolved.name == "my-llama" and resolved.spec is None
        assert resolved.hf_id is None and resolved.params == TINY_LLAMA_PARAMS
        assert resolved.params_method == "meta-build"
    other = tmp_path / "llama-tiny.json"
    other.write_text(json.dumps(TINY_LLAMA))
    assert resolve(other).name == "llama-tiny"


def test_config_outside_the_catalog_counted_like_the_catalog_entry(tmp_path: Path) -> None:
    """Phi-3-small's config as a file: the same analytic count and label as its catalog entry."""
    spec = find_model("phi-3-small-8k-instruct")
    path = tmp_path / "phi3small.json"
    path.write_text(json.dumps(spec.config))
    resolved = resolve(path)
    assert resolved.spec is None
    assert (resolved.params, resolved.params_method) == (spec.params, spec.params_method) == (spec.params, "analytic")


def test_bad_paths(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="has no config.json") as info:
        resolve(tmp_path)
    assert info.value.field == "MODEL"
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(UserError, match="cannot read .* as JSON"):
        resolve(tmp_path / "config.json")
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 3}))
    with pytest.raises(UserError, match="no `model_type`"):
        resolve(tmp_path)
    with pytest.raises(UserError, match="no such file or directory"):
        resolve(str(tmp_path / "missing" / "config.json"))


def test_hub_fetches_only_config_json(hub: list[dict[str, str]]) -> None:
    resolved = resolve("acme/Tiny-Llama-Chat")
    assert hub == [{"repo_id": "acme/Tiny-Llama-Chat", "filename": "config.json"}]
    assert resolved.source == "hub" and resolved.hf_id == "acme/Tiny-Llama-Chat"
    assert resolved.name == "Tiny-Llama-Chat" and resolved.params == TINY_LLAMA_PARAMS


def test_catalog_ids_never_touch_the_hub(hub: list[dict[str, str]]) -> None:
    resolve("Qwen/Qwen3-8B")
    assert hub == []


@pytest.mark.parametrize("value", ["1", "true", "YES"])
def test_offline_is_a_clear_error(
    hub: list[dict[str, str]], monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", value)
    with pytest.raises(UserError) as info:
        resolve("acme/Tiny-Llama-Chat")
    assert "HF_HUB_OFFLINE" in info.value.message and info.value.field == "MODEL"
    assert "config.json" in info.value.hint
    assert hub == []
    assert resolve("qwen3-8b").source == "catalog"  # the catalog still works offline


def test_gated_repo_names_repo_licence_page_and_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    def gated(repo_id: str, filename: str, **_: object) -> str:
        raise _hub_error(GatedRepoError, "403 gated")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", gated)
    with pytest.raises(UserError) as info:
        resolve("meta-llama/Llama-3.3-70B-Instruct")
    text = info.value.render()
    assert "meta-llama/Llama-3.3-70B-Instruct" in text
    assert "https://huggingface.co/meta-llama/Llama-3.3-70B-Instruct" in text and "HF_TOKEN" in text


def test_unknown_hub_repo_suggests_catalog_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    def missing(repo_id: str, filename: str, **_: object) -> str:
        raise _hub_error(RepositoryNotFoundError, "404")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", missing)
    with pytest.raises(UserError) as info:
        resolve("Qwen/Qwen2.5-7B-Instrct")
    assert "did you mean" in info.value.message and "'Qwen/Qwen2.5-7B-Instruct'" in info.value.message

    def no_config(repo_id: str, filename: str, **_: object) -> str:
        raise _hub_error(EntryNotFoundError, "404 entry")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_config)
    with pytest.raises(UserError, match="has no config.json"):
        resolve("acme/weights-only")


# A plain network failure, and the Hub client's "no connection, no cached copy" (a subclass of the
# missing-file error, so it must not be reported as "has no config.json").
@pytest.mark.parametrize(
    "error",
    [
        lambda: OSError("connection refused"),
        lambda: LocalEntryNotFoundError("cannot reach the Hub and the file is not cached"),
    ],
    ids=["network-failure", "no-connection-not-missing-config"],
)
def test_network_failure_is_a_user_error(monkeypatch: pytest.MonkeyPatch, error: Callable[[], Exception]) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    def down(repo_id: str, filename: str, **_: object) -> str:
        raise error()

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", down)
    with pytest.raises(UserError, match="could not fetch config.json of acme/x from the Hub") as info:
        resolve("acme/x")
    assert "network" in (info.value.hint or "")


def test_unknown_short_name_did_you_mean() -> None:
    with pytest.raises(UserError) as info:
        resolve("qwen3-7b")
    assert info.value.field == "MODEL"
    assert "did you mean" in info.value.message and "'qwen3-8b'" in info.value.message
    with pytest.raises(UserError, match="empty model name"):
        resolve("  ")


@pytest.mark.parametrize(
    ("text", "name"),
    [("h100", "H100-SXM"), ("RTX 4090", "RTX-4090"), ("4090", "RTX-4090"), ("a100_80gb", "A100-80GB")]
    + [("mi300x", "MI300X"), ("T4", "T4"), ("l40s", "L40S")],
)
def test_find_gpu(text: str, name: str) -> None:
    assert find_gpu(text).name == name


@pytest.mark.parametrize(("text", "names"), [("a100", "A100-40GB, A100-80GB"), ("V100", "V100-16GB, V100-32GB"),
                                            ("rtx", "RTX-3090, RTX-4090, RTX-5090, RTX-A6000")])
def test_find_gpu_ambiguous_stem_is_an_error(text: str, names: str) -> None:
    with pytest.raises(UserError) as info:
        find_gpu(text)
    assert info.value.field == "--gpu" and info.value.message.endswith(f"could be any of {names}")


def test_find_gpu_unknown() -> None:
    with pytest.raises(UserError) as info:
        find_gpu("H100 SMX")
    assert (
        info.value.field == "--gpu"
        and "did you mean" in info.value.message
        and "'H100-SXM'" in info.value.message
    )
    assert "automodel gpus" in info.value.hint


def test_context_length_from_catalog_or_config(tmp_path: Path) -> None:
    assert resolve("llama-3.1-8b").context_length == 131072  # the catalog's figure
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model_type": "llama", "max_position_embeddings": 4096}))
    assert resolve(str(path)).context_length == 4096
    path.write_text(json.dumps({"model_type": "whisper", "max_position_embeddings": 1500, "max_target_positions": 448}))
    assert resolve(str(path)).context_length == 448  # Whisper: decoder tokens, not encoder frames
    path.write_text(json.dumps({"model_type": "qwen2_vl", "text_config": {"max_position_embeddings": 32768}}))
    assert resolve(str(path)).context_length == 32768
    path.write_text(json.dumps({"model_type": "llama"}))
    assert resolve(str(path)).context_length is None


@pytest.fixture
def closed_port_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The Hub's address is a closed local port (refused at once; no real network) and the cache is empty."""
    import huggingface_hub.constants

    import automodel.catalog.hub

    monkeypatch.undo()  # the autouse fake probe goes: these tests run the real one
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    assert automodel.catalog.hub.unreachable.__name__ == "unreachable"


def test_unreachable_hub_fails_at_once_naming_offline_mode(closed_port_hub: None) -> None:
    """One refused connection, no five retries: the message names HF_HUB_OFFLINE=1 and a local directory."""
    with pytest.raises(UserError) as info:
        resolve("someorg/x")
    assert info.value.field == "MODEL" and "cannot reach the Hugging Face Hub" in info.value.message
    assert "HF_HUB_OFFLINE=1" in info.value.hint and "local model directory" in info.value.hint


def test_unreachable_hub_uses_a_cached_config(closed_port_hub: None, monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Path) -> None:
    cached = tmp_path / "cached-config.json"
    cached.write_text(json.dumps(TINY_LLAMA))
    calls = []

    def from_cache(repo_id: str, filename: str, **kwargs: object) -> str:
        calls.append(kwargs)
        return str(cached)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", from_cache)
    assert resolve("someorg/x").params == TINY_LLAMA_PARAMS
    assert calls == [{"local_files_only": True}]

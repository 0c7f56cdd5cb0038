"""The ranking engine over the seed's hardware tiers, tasks and requirements.

Every scenario checks the invariants (each pick fits the stated memory with the headroom policy, the
modality is never mixed, ranks are ordered) and then what a user would expect of it.
"""

from __future__ import annotations

import pytest

from automodel.advisor.profile import Hardware, Profile, Requirements, StrategyPreference, Task
from automodel.advisor.rank import (
    MFU,
    Recommendations,
    recommend,
    train_seconds,
    world_sizes,
)
from automodel.catalog.memory.headroom import HEADROOM
from automodel.catalog.registry import find_gpu, load_catalog

GIB = 2**30


def run(task: str, mem_gib: float | None = None, *, gpu: str | None = None, gpus: int = 1, nodes: int = 1,
        use_case: str | None = None, method: str = "auto", grad_ckpt: str = "auto", **req) -> Recommendations:
    spec = find_gpu(gpu) if gpu else None
    hw = Hardware(gpu=spec.name if spec else None, memory_bytes=spec.memory_bytes if spec else int(mem_gib * GIB),
                  gpus_per_node=gpus, nodes=nodes, bf16_tflops=spec.bf16_tflops if spec else None)
    profile = Profile(task=Task(modality=task, use_case=use_case), hardware=hw,
                      requirements=Requirements(**req), strategy=StrategyPreference(method=method, grad_ckpt=grad_ckpt))
    result = recommend(profile)
    check_invariants(result)
    return result


def check_invariants(result: Recommendations) -> None:
    hw = result.profile.hardware
    names = {m.name: m for m in load_catalog().models}
    for i, rec in enumerate(result.recommendations):
        assert rec.rank == i + 1
        assert rec.estimate.peak_reserved <= HEADROOM * hw.memory_bytes, rec.model.name
        assert rec.headroom_bytes == hw.memory_bytes - rec.estimate.peak_reserved
        assert rec.model.modality == result.profile.task.modality
        assert rec.plan.gpus <= hw.total_gpus and rec.gpus_per_node * rec.nodes == rec.plan.gpus
        assert rec.plan.seq_len == result.profile.seq_len and rec.plan.micro_batch == result.profile.requirements.batch
        assert rec.reasons and "GiB" in rec.reasons[0]
    scores = [r.score for r in result.recommendations]
    assert scores == sorted(scores, reverse=True)
    considered = {r.model.name for r in result.recommendations} | {e.model for e in result.excluded}
    expected = {n for n, m in names.items() if m.modality == result.profile.task.modality}
    assert considered == expected  # every model of the task is either ranked or excluded, no others


TIERS = [("8-16 GB", 12), ("24-48 GB", 24), ("24-48 GB", 48), ("80 GB", 80)]


@pytest.mark.parametrize(("tier", "mem"), TIERS)
@pytest.mark.parametrize("task", ["llm", "vlm", "asr"])
def test_every_tier_and_task_gives_fitting_picks(tier, mem, task) -> None:
    result = run(task, mem)
    assert result.recommendations, f"{task} on {tier} ({mem} GiB) found nothing"


def test_priorities_move_the_size_the_way_a_user_expects() -> None:
    for mem in (16, 24, 80):
        top = {p: run("llm", mem, priority=p).recommendations[0].model for p in ("latency", "balanced", "quality")}
        assert top["latency"].params <= top["balanced"].params <= top["quality"].params, mem
        assert top["latency"].params < top["quality"].params


def test_balanced_follows_the_seed_tiers() -> None:
    small = run("llm", 12).recommendations[0].model.params
    mid = run("llm", 24, seq_len=1024).recommendations[0]
    assert small <= 4.5e9  # 8-16 GB: the 1-4B class
    assert 6e9 <= mid.model.params <= 10e9 and mid.plan.method == "lora"  # 24 GB: the 7-9B class with LoRA
    # At 2048 tokens only Code Llama 7B (32K vocabulary) of that class fits LoRA in 24 GB; a general request
    # then gets the best general model that fits LoRA (3-4B) rather than a 2023 code specialist.
    top = run("llm", 24).recommendations[0]
    assert small <= top.model.params <= 10e9 and "chat" in top.model.use_cases and top.plan.method == "lora"


def test_more_memory_never_shrinks_the_quality_pick() -> None:
    sizes = [run("llm", mem, priority="quality").recommendations[0].model.params for mem in (12, 24, 48, 80)]
    assert sizes == sorted(sizes)


def test_full_fine_tuning_only_when_it_fits_and_quality_matters() -> None:
    small = run("llm", 80, use_case="chat", priority="quality")
    tiny = [r for r in small.recommendations if r.model.params < 2e9]
    by_name = {r.model.name: r for r in run("llm", 80).recommendations}
    assert by_name["qwen2.5-0.5b-instruct"].plan.method == "full"  # fits easily: full fine-tuning
    assert by_name["llama-3.1-8b-instruct"].plan.method != "full"  # 8B full needs ~16 bytes/param > 80 GiB
    assert all(r.plan.method != "full" for r in run("llm", 80, priority="latency").recommendations)
    assert tiny or small.recommendations


def test_a_plan_uses_every_gpu_with_the_throughput_gain_in_its_reasons() -> None:
    result = run("llm", gpu="H100-SXM", gpus=8, priority="quality")
    assert result.recommendations[0].plan.gpus == 8
    for rec in result.recommendations:
        if rec.plan.method == "qlora":  # one process: says why the other 7 stay idle
            assert rec.plan.gpus == 1 and any("QLoRA runs in one process" in r for r in rec.reasons)
            continue
        assert rec.plan.gpus == 8 and (rec.gpus_per_node, rec.nodes) == (8, 1), rec.model.name
        assert any(r.startswith("Uses all 8 GPUs") and "~8x the tokens/s" in r for r in rec.reasons)
    small = next(r for r in result.recommendations if r.model.name == "qwen2.5-0.5b-instruct")
    assert small.plan.gpus == 8 and not small.plan.grad_ckpt  # data parallel, no checkpointing needed
    two_nodes = run("llm", gpu="H100-SXM", gpus=8, nodes=2).recommendations[0]
    assert (two_nodes.plan.gpus, two_nodes.gpus_per_node, two_nodes.nodes) == (16, 8, 2)


def test_fewer_gpus_only_when_the_global_batch_cannot_be_split() -> None:
    result = run("llm", 24, gpus=8, nodes=2, global_batch=8)
    for rec in result.recommendations:
        assert rec.plan.gpus * rec.plan.micro_batch * rec.plan.grad_accum == 8
        if rec.plan.method != "qlora":
            assert rec.plan.gpus == 8
            assert any("split evenly over at most 8 of the 16 GPUs" in r and "--global-batch 16" in r
                       for r in rec.reasons)
    exact = run("llm", 24, gpus=8, global_batch=32).recommendations[0]
    assert exact.plan.gpus == 8 and exact.plan.grad_accum == 4
    odd = run("llm", 24, gpus=8, global_batch=6).recommendations[0]  # 6 splits over 6 GPUs, not 8
    assert odd.plan.gpus == 6 and any("at most 6 of the 8" in r for r in odd.reasons)


def test_multi_node_reaches_70b_full_fine_tuning_or_lora() -> None:
    result = run("llm", gpu="H100-SXM", gpus=8, nodes=4, priority="quality")
    top = result.recommendations[0]
    assert top.model.params > 60e9
    assert top.plan.method in ("full", "lora")


def test_grad_ckpt_only_when_needed() -> None:
    by_name = {r.model.name: r for r in run("llm", 24).recommendations}
    assert not by_name["qwen2.5-0.5b-instruct"].plan.grad_ckpt
    off = run("llm", 24, grad_ckpt="off")
    assert all(not r.plan.grad_ckpt for r in off.recommendations)
    on = run("llm", 24, grad_ckpt="on")
    assert all(r.plan.grad_ckpt for r in on.recommendations)


@pytest.mark.parametrize("method", ["full", "lora", "qlora"])
def test_forced_method_is_used_for_every_pick(method) -> None:
    result = run("llm", 24, method=method)
    assert result.recommendations and {r.plan.method for r in result.recommendations} == {method}


def test_qlora_picks_say_they_need_cuda_and_bitsandbytes() -> None:
    result = run("llm", 12, priority="quality")
    qlora = [r for r in result.recommendations if r.plan.method == "qlora"]
    assert qlora and all(any("bitsandbytes" in reason for reason in r.reasons) for r in qlora)


def test_commercial_filter() -> None:
    result = run("llm", 24, commercial_only=True)
    assert all(r.model.commercial_use for r in result.recommendations)
    excluded = {e.model: e.reason for e in result.excluded}
    assert "qwen2.5-3b-instruct" in excluded and "commercial" in excluded["qwen2.5-3b-instruct"]
    assert "qwen2.5-3b-instruct" in {r.model.name for r in run("llm", 24).recommendations}


def test_no_gated_filter() -> None:
    result = run("llm", 24, allow_gated=False)
    assert result.recommendations and not any(r.model.gated for r in result.recommendations)
    assert any("gated" in e.reason for e in result.excluded if e.model.startswith("llama"))


def test_safety_picks_the_gemma_families() -> None:
    result = run("llm", 24, safety=True)
    assert result.recommendations and all(r.model.family.startswith("gemma") for r in result.recommendations)
    vlm = run("vlm", 24, safety=True)
    assert vlm.recommendations and all(r.model.family.startswith("gemma") for r in vlm.recommendations)


def test_multilingual_and_use_case_filters() -> None:
    multi = run("llm", 24, multilingual=True)
    assert "codellama-7b-instruct" in {e.model for e in multi.excluded}
    code = run("llm", 24, use_case="code")
    assert {r.model.name for r in code.recommendations} >= {"codellama-7b-instruct"}
    assert "gemma-2-9b-it" in {e.model for e in code.excluded}
    translate = {e.model for e in run("asr", 16, use_case="translation").excluded}
    assert "whisper-large-v3-turbo" in translate  # the checkpoint's own tags decide, not its family's
    asr = run("asr", 16, multilingual=True)
    assert {r.model.family for r in asr.recommendations} == {"whisper"}  # wav2vec2 is English only


def test_use_case_strength_ranks_the_family_up() -> None:
    docs = run("vlm", 48, use_case="document").recommendations
    assert docs[0].model.family in ("qwen2-vl", "qwen2.5-vl")


def test_long_sequences_exclude_short_context_models() -> None:
    result = run("llm", 80, seq_len=8192)
    reasons = {e.model: e.reason for e in result.excluded}
    assert "phi-2" in reasons and "2048" in reasons["phi-2"]


def test_too_small_hardware_explains_with_numbers() -> None:
    result = run("llm", 1)
    assert not result.recommendations
    sized = [e for e in result.excluded if "remote-code" not in e.reason]
    assert sized and all("GiB per GPU" in e.reason and "you have 1.0" in e.reason for e in sized)


def test_remote_code_models_are_excluded_with_the_reason() -> None:
    reasons = {e.model: e.reason for e in run("llm", 80).excluded}
    assert "phi3small" in reasons["phi-3-small-8k-instruct"]


def test_exclusion_when_one_gpu_is_too_small_names_the_method_and_tokens() -> None:
    result = run("llm", 24, method="lora")
    reason = {e.model: e.reason for e in result.excluded}["llama-3.1-70b-instruct"]
    assert "LoRA r16 at 2048 tokens" in reason and "you have 24.0" in reason


def test_training_time_from_flops() -> None:
    result = run("llm", gpu="A100-80GB", dataset_tokens=100_000_000)
    rec = result.recommendations[0]
    n = rec.model.active_params or rec.model.params
    per_token = (6 if rec.plan.method == "full" else 4) * n + (2 * n if rec.plan.grad_ckpt else 0)
    expected = 1e8 * per_token / (rec.plan.gpus * 312e12 * MFU[rec.plan.method])
    assert rec.train_seconds == pytest.approx(expected)
    assert any(" h for 100M tokens" in r for r in rec.reasons)
    assert train_seconds(rec.model, rec.plan, 10**8, None) is None


def test_moe_time_uses_active_params() -> None:
    moe = next(m for m in load_catalog().models if m.active_params)
    plan = run("llm", 80).recommendations[0].plan.model_copy(update={"method": "lora", "grad_ckpt": False, "gpus": 1})
    assert train_seconds(moe, plan, 10**9, 100.0) == pytest.approx(1e9 * 4 * moe.active_params / (100e12 * MFU["lora"]))


def test_world_sizes() -> None:
    assert world_sizes(1, 1) == [1]
    assert world_sizes(4, 1) == [1, 2, 3, 4]
    assert world_sizes(2, 3) == [1, 2, 4, 6]
    assert world_sizes(8, 4) == [1, 2, 3, 4, 5, 6, 7, 8, 16, 24, 32]


def test_forced_fsdp_degree() -> None:
    hw = Hardware(memory_bytes=80 * GIB, gpus_per_node=8)
    profile = Profile(task=Task(modality="llm"), hardware=hw, strategy=StrategyPreference(fsdp_degree=4))
    assert {r.plan.gpus for r in recommend(profile).recommendations} == {4}


def test_recommendation_json_shape() -> None:
    rec = run("vlm", 24).recommendations[0]
    data = rec.to_json()
    assert set(data) >= {"rank", "model", "hf_id", "family", "modality", "params", "strategy", "estimate",
                         "gpu_mem_bytes", "headroom_bytes", "score", "reasons"}
    assert set(data["strategy"]) == {"method", "lora_rank", "precision", "grad_ckpt", "gpus", "nodes",
                                     "micro_batch", "grad_accum", "seq_len", "images", "image_size"}
    assert set(data["estimate"]) == {"peak_allocated_bytes", "peak_reserved_bytes", "breakdown"}
    assert rec.plan.images == 1  # a VLM plan carries an image per sequence
    assert (data["strategy"]["images"], data["strategy"]["image_size"]) == (1, "448x448")
    asr = run("asr", 24).recommendations[0].to_json()["strategy"]
    assert asr["audio_seconds"] == 30.0 and "images" not in asr


def test_near_misses_say_which_sequence_length_would_fit() -> None:
    from automodel.catalog.memory.estimate import estimate

    result = run("llm", 24, use_case="chat")
    rec, hint = next((r, h) for r in result.recommendations for h in r.reasons
                     if h.startswith("Not LoRA") and "--seq-len" in h)
    seq = int(hint.split("--seq-len ")[1].rstrip(").").split(")")[0])
    limit = HEADROOM * result.profile.hardware.memory_bytes
    lora = rec.plan.model_copy(update={"method": "lora", "grad_ckpt": True})
    fits = estimate(rec.model.config, lora.model_copy(update={"seq_len": seq}), params=rec.model.params)
    over = estimate(rec.model.config, lora.model_copy(update={"seq_len": seq + 128}), params=rec.model.params)
    assert fits.peak_reserved <= limit < over.peak_reserved


def test_use_case_no_model_of_the_modality_offers_is_a_user_error() -> None:
    from automodel.catalog.errors import UserError

    with pytest.raises(UserError) as info:
        run("vlm", 24, use_case="code")
    assert info.value.field == "--use-case" and "vqa" in (info.value.hint or "")


def test_seq_len_beyond_context_excludes_with_the_reason() -> None:
    result = run("llm", 80, seq_len=200_000)
    reasons = {e.model: e for e in result.excluded}
    assert reasons["llama-3.1-8b"].kind == "requirement" and "131072" in reasons["llama-3.1-8b"].reason


def _names(result: Recommendations) -> list[str]:
    return [r.model.name for r in result.recommendations]


def test_general_request_ranks_general_models_ahead_of_specialists() -> None:
    result = run("llm", 24, commercial_only=True, allow_gated=False)
    names = _names(result)
    assert "chat" in result.recommendations[0].model.use_cases and names[0] != "codellama-7b-instruct"
    assert names.index("qwen3-4b") < names.index("codellama-7b-instruct")
    assert names.index("phi-4-mini-instruct") < names.index("codellama-7b-instruct")
    code = next(r for r in result.recommendations if r.model.name == "codellama-7b-instruct")
    assert any("specialist" in reason and "--use-case" in reason for reason in code.reasons)
    assert "specialist (code, instruction)" in code.summary
    assert not any("specialist" in r.summary for r in run("llm", 24, use_case="code").recommendations)


def test_code_use_case_puts_code_models_first_and_current_ones_above_code_llama() -> None:
    for mem in (24, 48, 80):
        result = run("llm", mem, use_case="code")
        top = result.recommendations[0].model
        assert "chat" not in top.use_cases and "code" in top.use_cases, (mem, top.name)  # a code specialist leads
        by_name = {r.model.name: (i, r) for i, r in enumerate(result.recommendations)}
        for coder in (n for n in by_name if n.startswith("qwen2.5-coder")):
            for llama in (n for n in by_name if n.startswith("codellama")):
                (i, a), (j, b) = by_name[coder], by_name[llama]
                if a.model.params >= b.model.params and a.plan.method == b.plan.method:
                    assert i < j, (mem, coder, llama)
    at48 = _names(run("llm", 48, use_case="code"))
    assert at48.index("qwen2.5-coder-14b-instruct") < at48.index("codellama-13b-instruct")
    assert at48.index("qwen2.5-coder-7b-instruct") < at48.index("codellama-7b-instruct")


@pytest.mark.parametrize("use_case", [None, "chat", "instruction"])
def test_instruct_ranks_above_its_base_checkpoint(use_case) -> None:
    names = _names(run("llm", 80, gpus=8, use_case=use_case))
    assert names.index("llama-3.1-8b-instruct") < names.index("llama-3.1-8b")
    assert names.index("llama-3.1-70b-instruct") < names.index("llama-3.1-70b")
    base = next(r for r in run("llm", 80, use_case=use_case).recommendations if r.model.name == "llama-3.1-8b")
    assert any("pretrained base checkpoint" in reason for reason in base.reasons) and "base checkpoint" in base.summary


def _comparable(a, b) -> bool:
    """Same vendor line, same kind of checkpoint (general or specialist, base or instruct), similar size."""
    from automodel.advisor.scoring import general_fit

    vendor = {f.name: f.vendor for f in load_catalog().families}
    return (vendor[a.family] == vendor[b.family] and a.instruction_tuned == b.instruction_tuned
            and general_fit(a) == general_fit(b) and 0.85 < a.params / b.params < 1.18)


@pytest.mark.parametrize(("task", "mem"), [("llm", 24), ("llm", 80), ("vlm", 48), ("asr", 16)])
def test_a_newer_generation_ranks_above_an_older_one_of_its_size_for_every_use_case(task, mem) -> None:
    for use_case in (None, *load_catalog().use_cases(task)):
        if use_case == "safety":
            continue
        recs = run(task, mem, use_case=use_case).recommendations
        for i, older in enumerate(recs):
            for newer in recs[i + 1:]:  # ranked below `older`: must not be a newer generation of it
                if newer.plan.method == older.plan.method and _comparable(newer.model, older.model):
                    assert newer.model.released_month <= older.model.released_month, (use_case, older.model.name,
                                                                                       newer.model.name)
    if task == "llm":
        chat = _names(run("llm", mem, use_case="chat"))
        assert chat.index("qwen2.5-7b-instruct") < chat.index("qwen2-7b-instruct")  # Qwen2.5 above Qwen2


@pytest.mark.parametrize(
    ("newer", "older", "mem"),
    [("qwen3-8b", "qwen2-7b-instruct", 24), ("qwen2.5-7b-instruct", "qwen2-7b-instruct", 24),
     ("phi-4-mini-instruct", "phi-3-mini-4k-instruct", 24), ("phi-3-mini-4k-instruct", "phi-2", 24),
     ("phi-4", "phi-3-medium-4k-instruct", 80), ("qwen3-14b", "qwen2.5-14b-instruct", 80),
     ("llama-3.1-8b-instruct", "codellama-7b-instruct", 48)],
)
def test_newer_generation_ranks_ahead_at_comparable_size(newer, older, mem) -> None:
    names = _names(run("llm", mem))
    assert names.index(newer) < names.index(older)


def test_newer_generation_ranks_ahead_for_vision_and_speech() -> None:
    vlm = _names(run("vlm", 48))
    assert vlm.index("qwen2.5-vl-7b-instruct") < vlm.index("qwen2-vl-7b-instruct")
    assert vlm.index("qwen2.5-vl-3b-instruct") < vlm.index("qwen2-vl-2b-instruct")
    asr = _names(run("asr", 16))
    assert asr[0] in ("whisper-large-v3", "whisper-large-v3-turbo")
    assert asr.index("whisper-large-v3-turbo") < asr.index("whisper-medium") < asr.index("whisper-small")


def test_qlora_is_only_planned_on_one_gpu() -> None:
    # 8 x 16 GiB: the trainer runs QLoRA in one process, so a QLoRA pick never asks for FSDP2 over 8 GPUs.
    result = run("llm", 16, gpus=8, method="qlora")
    assert result.recommendations
    assert {r.plan.gpus for r in result.recommendations} == {1}
    # A 72B model needs more than one 16 GiB GPU even in 4 bits: excluded, not sharded.
    assert any(e.model == "qwen2.5-72b-instruct" for e in result.excluded)

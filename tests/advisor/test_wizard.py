"""The wizard: questions as data, follow-ups only when they apply, the same engine as `recommend`,
Ctrl-C leaves cleanly, and end to end through a real pseudo-terminal."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import get_args

import pytest

from automodel.advisor import wizard
from automodel.advisor.profile import Hardware, Requirements, StrategyPreference, Task
from automodel.trainer.config import load_config

GIB = 2**30
DETECTED = Hardware(gpu="A100-80GB", memory_bytes=int(79.14 * GIB), gpus_per_node=4, bf16_tflops=312.0,
                    source="nvidia-smi")


class Script:
    """An asker that answers from a dict and takes every other default, recording what was asked."""

    def __init__(self, **answers) -> None:
        self.answers = answers
        self.asked: list[str] = []
        self.defaults: dict[str, object] = {}

    def __call__(self, question: wizard.Question, ctx: wizard.Context):
        self.asked.append(question.key)
        default = question.default(ctx)
        self.defaults[question.key] = default
        if question.key in self.answers:
            return self.answers[question.key]
        if question.parse is not None:
            return question.parse(str(default))
        return default


def test_steps_come_in_order_and_every_question_has_a_step() -> None:
    order = [wizard.STEPS.index(q.step) for q in wizard.QUESTIONS]
    assert order == sorted(order) and set(order) == {0, 1, 2, 3}
    assert len({q.key for q in wizard.QUESTIONS}) == len(wizard.QUESTIONS)


def test_detected_hardware_skips_the_gpu_questions_and_sets_defaults() -> None:
    script = Script()
    ctx = wizard.interview(script, DETECTED)
    assert "use_detected" in script.asked and "gpu" not in script.asked and "gpus" not in script.asked
    profile = wizard.profile_from_answers(ctx)
    assert profile.hardware.gpus_per_node == 4 and profile.hardware.gpu == "A100-80GB"
    declined = Script(use_detected=False)
    wizard.interview(declined, DETECTED)
    assert declined.defaults["gpu"] == "A100-80GB" and declined.defaults["gpus"] == "4"


def test_follow_ups_only_when_they_apply() -> None:
    none = Script(modality="asr", gpu=None, method="full")
    ctx = wizard.interview(none, None)
    assert "use_detected" not in none.asked and "gpu_mem" in none.asked  # nothing detected, GPU typed by memory
    assert "safety" not in none.asked and "lora_rank" not in none.asked
    assert none.defaults["seq_len"] == "448"  # the ASR default
    profile = wizard.profile_from_answers(ctx)
    assert profile.hardware.memory_bytes == 24 * GIB and profile.strategy.method == "full"
    named = Script(gpu="L4", use_case="multilingual")
    ctx = wizard.interview(named, None)
    assert "gpu_mem" not in named.asked and "multilingual" not in named.asked
    profile = wizard.profile_from_answers(ctx)
    assert profile.requirements.multilingual and profile.hardware.gpu == "L4"


def test_use_case_choices_follow_the_modality() -> None:
    ctx = wizard.Context(detected=None, answers={"modality": "vlm"})
    question = next(q for q in wizard.QUESTIONS if q.key == "use_case")
    values = [v for _, v in question.choices(ctx)]
    assert values == [None, "vqa", "captioning", "document"]  # image use cases only: chat/code are the LLM's
    llm = [v for _, v in question.choices(wizard.Context(detected=None, answers={"modality": "llm"}))]
    assert {"chat", "code"} <= set(llm) and "vqa" not in llm


@pytest.mark.parametrize(("key", "field"), [("modality", Task.model_fields["modality"]),
                                            ("priority", Requirements.model_fields["priority"]),
                                            ("method", StrategyPreference.model_fields["method"]),
                                            ("grad_ckpt", StrategyPreference.model_fields["grad_ckpt"])])
def test_select_choices_are_exactly_the_profile_s_values(key, field) -> None:
    # The wizard spells its choices out with human titles; they must not drift from the schema's Literals.
    question = next(q for q in wizard.QUESTIONS if q.key == key)
    values = [v for _, v in question.choices(wizard.Context(detected=None))]
    assert sorted(values) == sorted(get_args(field.annotation))


def test_bad_text_answers_are_rejected_by_parse() -> None:
    gpus = next(q for q in wizard.QUESTIONS if q.key == "gpus")
    with pytest.raises(ValueError):
        gpus.parse("0")
    tokens = next(q for q in wizard.QUESTIONS if q.key == "dataset_tokens")
    with pytest.raises(ValueError):  # a ValueError re-asks; anything else would crash the wizard
        tokens.parse("lots")
    assert tokens.parse("250M") == 250_000_000 and tokens.parse("") is None
    tokens = next(q for q in wizard.QUESTIONS if q.key == "dataset_tokens")
    assert tokens.parse("") is None and tokens.parse("50M") == 50_000_000


def test_run_writes_the_picked_config_and_does_not_launch(tmp_path, monkeypatch) -> None:
    launched = []
    monkeypatch.setattr(wizard, "launch", lambda rec, path: launched.append(path) or 0)
    path = tmp_path / "pick.yaml"
    script = Script(gpu=None, gpu_mem=24 * GIB, path=str(path), launch=False)
    assert wizard.run(script, detected=None) == 0
    cfg = load_config(path)
    assert cfg.task == "llm" and not launched
    assert script.asked[-4:] == ["pick", "path", "dataset", "launch"]


def test_an_existing_config_is_not_replaced_without_force(tmp_path, monkeypatch) -> None:
    from automodel.catalog.errors import UserError

    monkeypatch.chdir(tmp_path)
    path = tmp_path / "mine.yaml"
    path.write_text("# edited by hand\n")
    question = wizard.OUTPUT_QUESTIONS[0]
    with pytest.raises(ValueError, match="--force"):  # typed interactively: re-asked
        question.parse(str(path))
    with pytest.raises(UserError) as err:  # given anyway: exit 2 naming the file and --force
        wizard.run(Script(gpu=None, gpu_mem=24 * GIB, path=str(path), launch=False), detected=None)
    assert str(path) in err.value.message and "--force" in (err.value.hint or "")
    assert path.read_text() == "# edited by hand\n"
    assert wizard.run(Script(gpu=None, gpu_mem=24 * GIB, path=str(path), launch=False), detected=None, force=True) == 0
    assert load_config(path).task == "llm"
    assert wizard._free_path("mine") == "mine-2.yaml"  # the offered default never names an existing file


def test_launch_runs_automodel_finetune(tmp_path, monkeypatch) -> None:
    calls = []

    class Done:
        returncode = 0

    monkeypatch.setattr(wizard.subprocess, "run", lambda cmd, check: calls.append(cmd) or Done())
    path = tmp_path / "go.yaml"
    assert wizard.run(Script(gpu="A10", path=str(path), launch=True), detected=None) == 0
    assert calls and calls[0][-4:] == ["finetune", "llm", "-c", str(path)]


def test_ctrl_c_exits_130_and_writes_nothing(tmp_path, capsys) -> None:
    def interrupt(question, ctx):
        if question.key == "priority":
            raise KeyboardInterrupt
        return Script()(question, ctx)

    assert wizard.run(interrupt, detected=None) == 130
    assert "cancelled" in capsys.readouterr().err and not list(tmp_path.iterdir())


def test_no_terminal_is_a_user_error_not_a_cancel(monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert wizard.main([]) == 2
    assert capsys.readouterr().err.startswith("error: advise: the advisor asks questions and stdin is not a terminal")
    assert wizard.main(["--bogus"]) == 2  # flags are not silently ignored either
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err


pexpect = pytest.importorskip("pexpect")
ADVISOR = Path(sys.executable).with_name("automodel-advisor")
ENTER, DOWN = "\r", "\x1b[B"


def spawn(cwd: Path):
    env = {**os.environ, "TERM": "xterm", "PROMPT_TOOLKIT_NO_CPR": "1", "COLUMNS": "160", "PATH": "/usr/bin:/bin"}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return pexpect.spawn(str(ADVISOR), cwd=str(cwd), env=env, encoding="utf-8", timeout=30, dimensions=(50, 160))


@pytest.mark.skipif(not ADVISOR.exists(), reason="console script not installed")
def test_end_to_end_in_a_pseudo_terminal(tmp_path) -> None:
    child = spawn(tmp_path)
    child.expect("What will the model do")
    child.send(DOWN + ENTER)  # text + images (VLM)
    child.expect("Use case")
    child.send(ENTER)
    if child.expect(["Use the detected GPUs", "Which GPU"]) == 0:  # a machine with nvidia-smi
        child.send("n")
        child.expect("Which GPU")
    child.send(ENTER)  # the default: the detected GPU, or (nothing detected) "type its memory"
    if child.expect(["Memory per GPU", "GPUs per node"]) == 0:
        child.send("\x15" + "48" + ENTER)  # Ctrl-U clears the default
        child.expect("GPUs per node")
    child.send("\x15" + "1" + ENTER)
    for prompt in ("Nodes", "What matters most", "several languages", "safety-critical",
                   "Commercial use", "Allow gated", "Tokens per training sequence", "Micro batch",
                   "Training tokens", "Training method", "LoRA rank", "Gradient checkpointing"):
        child.expect(prompt)
        child.send(ENTER)
    child.expect("Which one")
    child.send(ENTER)
    child.expect("peak reserved")
    child.expect("Write the training config to")
    child.send("\x15" + "configs/vlm.yaml" + ENTER)
    child.expect("Training data")
    child.send(ENTER)
    child.expect("launch with: automodel finetune vlm -c configs/vlm.yaml")
    child.expect("Launch it now")
    child.send("n")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    cfg = load_config(tmp_path / "configs" / "vlm.yaml")
    assert cfg.task == "vlm" and cfg.data.source == "REPLACE_ME/your-dataset"


@pytest.mark.skipif(not ADVISOR.exists(), reason="console script not installed")
def test_ctrl_c_in_a_pseudo_terminal(tmp_path) -> None:
    child = spawn(tmp_path)
    child.expect("What will the model do")
    child.sendcontrol("c")
    child.expect("cancelled")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 130 and not list(tmp_path.iterdir())


def test_dataset_answer_is_checked_before_the_config_is_written(tmp_path, monkeypatch) -> None:
    """A local file must exist and have the `messages` column the written (chat) config reads: otherwise
    the wizard stops naming the column and row, and writes nothing."""
    from automodel.catalog.errors import UserError

    monkeypatch.setattr(wizard, "launch", lambda rec, path: 0)
    good = tmp_path / "chat.jsonl"
    good.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n')
    path = tmp_path / "ok.yaml"
    assert wizard.run(Script(gpu="A10", path=str(path), dataset=str(good), launch=False), detected=None) == 0
    assert load_config(path).data.source == str(good)
    bad = tmp_path / "qa.jsonl"
    bad.write_text('{"question": "q", "answer": "a"}\n')
    path = tmp_path / "bad.yaml"
    with pytest.raises(UserError) as err:
        wizard.run(Script(gpu="A10", path=str(path), dataset=str(bad), launch=False), detected=None)
    assert err.value.field == "data.chat.messages_column" and "row 1 of" in err.value.message
    assert not path.exists()
    with pytest.raises(UserError, match="does not exist"):
        wizard.run(Script(gpu="A10", path=str(path), dataset=str(tmp_path / "missing.jsonl"), launch=False),
                   detected=None)

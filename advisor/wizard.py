"""The interactive advisor (`automodel-advisor`, `automodel advise`).

The four steps (task -> hardware -> requirements -> strategy) are data: a tuple of `Question`s, each
with a default computed from what is known so far (the detected GPUs first) and a `when` that keeps
follow-ups to the cases they apply to. One thin `ask()` talks to questionary; everything else is plain
code over answers, and the engine is the same `rank.recommend` that `automodel recommend` uses.
Ctrl-C (or Ctrl-D) at any prompt leaves cleanly with exit code 130 and nothing written.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

from automodel.advisor.profile import (
    DEFAULT_SEQ_LEN,
    USE_CASES_BY_MODALITY,
    Hardware,
    Profile,
    Requirements,
    StrategyPreference,
    Task,
)
from automodel.catalog.errors import UserError

if TYPE_CHECKING:
    from automodel.advisor.rank import Recommendation, Recommendations

Step = Literal["task", "hardware", "requirements", "strategy"]
STEPS: tuple[Step, ...] = ("task", "hardware", "requirements", "strategy")
NONE = "<none>"
TOP = 5  # recommendations shown and offered


@dataclass
class Context:
    """What the questions can see: the detected hardware and the answers so far."""

    detected: Hardware | None
    answers: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, key: str) -> Any:
        return self.answers.get(key)

    result: Recommendations | None = None  # set once the engine has answered
    pick: Recommendation | None = None  # set once the user has chosen

    @property
    def using_detected(self) -> bool:
        return self.detected is not None and bool(self.answers.get("use_detected"))


@dataclass(frozen=True)
class Question:
    key: str
    step: Step
    kind: Literal["select", "text", "confirm"]
    message: Callable[[Context], str]
    default: Callable[[Context], Any]
    choices: Callable[[Context], list[tuple[str, Any]]] | None = None
    when: Callable[[Context], bool] = lambda ctx: True
    parse: Callable[[str], Any] | None = None  # text answers: str -> value, ValueError/UserError = re-ask


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError("must be at least 1")
    return value


def _optional_tokens(text: str) -> int | None:
    from automodel.catalog.units import parse_count as parse_tokens  # ValueError: the wizard re-asks

    return parse_tokens(text) if text.strip() else None


def _gpu_mem(text: str) -> int:
    from automodel.advisor.hardware import parse_gpu_mem

    return parse_gpu_mem(text)


def _gpu_choices(ctx: Context) -> list[tuple[str, Any]]:
    from automodel.catalog.registry import load_catalog

    gpus = sorted(load_catalog().gpus, key=lambda g: (g.memory_gib, g.name))
    return [(f"{g.name} ({g.memory_gib:.0f} GiB)", g.name) for g in gpus] + [("other: type its memory", None)]


def _detected_text(ctx: Context) -> str:
    hw = ctx.detected
    assert hw is not None
    return f"{hw.gpus_per_node} x {hw.gpu or 'GPU'} ({hw.memory_gib:.1f} GiB each, via {hw.source})"


def _use_cases(modality: str) -> list[str]:
    """The use cases a modality is chosen for that some catalog model offers (others would rank nothing).

    A VLM is picked to look at images, so its question offers the image use cases only (vqa, captioning,
    document): text use cases such as chat or code are the LLM question's, even though VLM checkpoints are
    tagged with them too (`recommend --task vlm --use-case chat` still takes them)."""
    from automodel.catalog.registry import load_catalog

    offered = load_catalog().use_cases(modality)
    own = USE_CASES_BY_MODALITY[modality]
    if modality == "vlm":
        own = tuple(u for u in own if u not in USE_CASES_BY_MODALITY["llm"])
    return [u for u in own if u in offered]


QUESTIONS: tuple[Question, ...] = (
    # 1. task
    Question("modality", "task", "select", lambda c: "What will the model do?", lambda c: "llm",
             choices=lambda c: [("text (LLM)", "llm"), ("text + images (VLM)", "vlm"), ("speech to text (ASR)", "asr")]),
    Question("use_case", "task", "select", lambda c: "Use case?", lambda c: None,
             choices=lambda c: [("any", None)] + [(u, u) for u in _use_cases(c["modality"])]),
    # 2. hardware
    Question("use_detected", "hardware", "confirm", lambda c: f"Use the detected GPUs: {_detected_text(c)}?",
             lambda c: True, when=lambda c: c.detected is not None),
    Question("gpu", "hardware", "select", lambda c: "Which GPU?",
             lambda c: c.detected.gpu if c.detected and c.detected.gpu else None,
             choices=_gpu_choices, when=lambda c: not c.using_detected),
    Question("gpu_mem", "hardware", "text", lambda c: "Memory per GPU (GiB, e.g. 24)?",
             lambda c: f"{c.detected.memory_gib:.0f}" if c.detected else "24",
             when=lambda c: not c.using_detected and c["gpu"] is None, parse=_gpu_mem),
    Question("gpus", "hardware", "text", lambda c: "GPUs per node?",
             lambda c: str(c.detected.gpus_per_node) if c.detected else "1",
             when=lambda c: not c.using_detected, parse=_positive),
    Question("nodes", "hardware", "text", lambda c: "Nodes?", lambda c: "1", parse=_positive),
    # 3. requirements
    Question("priority", "requirements", "select", lambda c: "What matters most?", lambda c: "balanced",
             choices=lambda c: [("balanced", "balanced"), ("quality (bigger models)", "quality"),
                                ("latency (smaller, faster models)", "latency")]),
    Question("multilingual", "requirements", "confirm", lambda c: "Must it handle several languages?",
             lambda c: False, when=lambda c: c["use_case"] != "multilingual"),
    Question("safety", "requirements", "confirm", lambda c: "Is it safety-critical (families marked for safety)?",
             lambda c: False, when=lambda c: c["modality"] != "asr"),
    Question("commercial_only", "requirements", "confirm", lambda c: "Commercial use (only permissive licences)?",
             lambda c: False),
    Question("allow_gated", "requirements", "confirm", lambda c: "Allow gated models (need an accepted licence + HF token)?",
             lambda c: True),
    Question("seq_len", "requirements", "text", lambda c: "Tokens per training sequence?",
             lambda c: str(DEFAULT_SEQ_LEN[c["modality"]]), parse=_positive),
    Question("batch", "requirements", "text", lambda c: "Micro batch (sequences per GPU per step)?", lambda c: "1",
             parse=_positive),
    Question("dataset_tokens", "requirements", "text",
             lambda c: "Training tokens for a time estimate (e.g. 50M; empty to skip)?", lambda c: "",
             parse=_optional_tokens),
    # 4. strategy
    Question("method", "strategy", "select", lambda c: "Training method?", lambda c: "auto",
             choices=lambda c: [("auto (cheapest that fits)", "auto"), ("full fine-tuning", "full"),
                                ("LoRA", "lora"), ("QLoRA (CUDA + bitsandbytes)", "qlora")]),
    Question("lora_rank", "strategy", "text", lambda c: "LoRA rank?", lambda c: "16",
             when=lambda c: c["method"] != "full", parse=_positive),
    Question("grad_ckpt", "strategy", "select", lambda c: "Gradient checkpointing?", lambda c: "auto",
             choices=lambda c: [("auto (only when needed)", "auto"), ("on", "on"), ("off", "off")]),
)


def _pick_title(rec: Recommendation) -> str:
    from automodel.advisor.explain import gib
    from automodel.advisor.render import strategy_text

    used = f"{gib(rec.estimate.peak_reserved)}/{gib(rec.gpu_mem_bytes)} GiB"
    return f"{rec.rank}. {rec.model.name} ({rec.model.display_params}) - {strategy_text(rec)}, {used}"


# After the ranking: which pick, where its config goes, which data it names, whether to launch it.
PICK = Question("pick", "strategy", "select", lambda c: "Which one?", lambda c: 1,
                choices=lambda c: [(_pick_title(r), r.rank) for r in c.result.top(TOP)])  # type: ignore[union-attr]
LAUNCH = Question("launch", "strategy", "confirm", lambda c: "Launch it now?", lambda c: False)
def _free_path(name: str) -> str:
    """`name.yaml`, or `name-2.yaml`, ... : the first that does not exist (the default never overwrites)."""
    from pathlib import Path

    path, n = Path(f"{name}.yaml"), 1
    while path.exists():
        n += 1
        path = Path(f"{name}-{n}.yaml")
    return str(path)


def _new_file(text: str) -> str:
    """A config path that does not exist yet (ValueError re-asks; `--force` lifts the check)."""
    from automodel.advisor.configgen import check_writable

    try:
        check_writable(text, force=False, field="path")
    except UserError as err:
        raise ValueError(f"{err.message}; give another path, or rerun with --force to replace it") from None
    return text


OUTPUT_QUESTIONS: tuple[Question, ...] = (
    Question("path", "strategy", "text", lambda c: "Write the training config to?",
             lambda c: _free_path(c.pick.model.name), parse=_new_file),  # type: ignore[union-attr]
    Question("dataset", "strategy", "text",
             lambda c: "Training data (local .jsonl with a `messages` column, or HF dataset; empty = placeholder)?",
             lambda c: "", parse=str.strip),
)


def ask(question: Question, ctx: Context) -> Any:
    """The one place that talks to questionary. Ctrl-C raises KeyboardInterrupt (unsafe_ask)."""
    import questionary

    message, default = question.message(ctx), question.default(ctx)
    if question.kind == "confirm":
        return questionary.confirm(message, default=bool(default)).unsafe_ask()
    if question.kind == "select":
        assert question.choices is not None
        # questionary replaces a None value by the title, so None travels as a sentinel
        pairs = [(title, NONE if value is None else value) for title, value in question.choices(ctx)]
        values = [value for _, value in pairs]
        default = NONE if default is None else default
        choices = [questionary.Choice(title, value=value) for title, value in pairs]
        answer = questionary.select(message, choices=choices, default=default if default in values else None).unsafe_ask()
        return None if answer == NONE else answer
    parse = question.parse or (lambda s: s)

    def validate(text: str) -> bool | str:
        try:
            parse(text)
        except (ValueError, UserError) as exc:
            return exc.message if isinstance(exc, UserError) else str(exc) or "not valid"
        return True

    return parse(questionary.text(message, default=str(default), validate=validate).unsafe_ask())


def interview(asker: Callable[[Question, Context], Any], detected: Hardware | None) -> Context:
    """Ask every question that applies, step by step, in order."""
    ctx = Context(detected=detected)
    for step in STEPS:
        for question in QUESTIONS:
            if question.step == step and question.when(ctx):
                ctx.answers[question.key] = asker(question, ctx)
    return ctx


def profile_from_answers(ctx: Context) -> Profile:
    a = ctx.answers
    if ctx.using_detected:
        assert ctx.detected is not None
        hardware = ctx.detected.model_copy(update={"nodes": a["nodes"]})
    elif a["gpu"] is not None:
        from automodel.advisor.hardware import resolve_hardware

        hardware = resolve_hardware(gpu=a["gpu"], gpus=a["gpus"], nodes=a["nodes"])
    else:
        hardware = Hardware(memory_bytes=a["gpu_mem"], gpus_per_node=a["gpus"], nodes=a["nodes"])
    return Profile(
        task=Task(modality=a["modality"], use_case=a["use_case"]),
        hardware=hardware,
        requirements=Requirements(
            priority=a["priority"],
            commercial_only=a["commercial_only"],
            allow_gated=a["allow_gated"],
            seq_len=a["seq_len"],
            batch=a["batch"],
            dataset_tokens=a["dataset_tokens"],
            # skipped follow-ups keep the schema's defaults; a multilingual use case implies the filter
            **{key: a[key] for key in ("multilingual", "safety") if key in a},
            **({"multilingual": True} if a["use_case"] == "multilingual" else {}),
        ),
        strategy=StrategyPreference(
            method=a["method"], grad_ckpt=a["grad_ckpt"], **({"lora_rank": a["lora_rank"]} if "lora_rank" in a else {})
        ),
    )


def launch(rec: Recommendation, path: str) -> int:
    """Run the printed launch command as a child process and return its exit code."""
    import shlex

    from automodel.advisor.render import launch_command

    exe = shutil.which("automodel")
    head = [exe] if exe else [sys.executable, "-m", "automodel.advisor.cli"]
    return subprocess.run([*head, *shlex.split(launch_command(rec, path))[1:]], check=False).returncode


def run(asker: Callable[[Question, Context], Any] = ask, detected: Hardware | None | Literal["detect"] = "detect",
        force: bool = False) -> int:
    """The whole wizard: questions, ranking, a pick, its breakdown, the config, the launch offer. An existing
    config file is replaced only with `force` (`--force`)."""
    from rich.console import Console

    from automodel.advisor.configgen import check_dataset, write_config
    from automodel.advisor.hardware import detect
    from automodel.advisor.rank import recommend
    from automodel.advisor.render import (
        NARROW,
        breakdown_table,
        launch_command,
        print_no_fit,
        reasons_below,
        recommendations_table,
    )

    if asker is ask and not sys.stdin.isatty():  # questionary would read EOF and look like a cancel
        raise UserError("the advisor asks questions and stdin is not a terminal", field="advise",
                        hint="run it in a terminal; in scripts use `automodel recommend --task ... --gpu-mem ...`")
    console = Console()
    try:
        ctx = interview(asker, detect() if detected == "detect" else detected)
        profile = profile_from_answers(ctx)
        result = recommend(profile)
        if not result.recommendations:
            print_no_fit(console, result)
            return 0
        console.print(recommendations_table(result, TOP, console.width))
        if console.width < NARROW:
            for line in reasons_below(result, TOP):
                console.print(line, highlight=False, markup=False)
        ctx.result = result
        rec = ctx.pick = result.recommendations[asker(PICK, ctx) - 1]
        console.print(breakdown_table(rec.estimate, rec.gpu_mem_bytes))
        for reason in rec.reasons:
            console.print(f"- {reason}")
        for question in OUTPUT_QUESTIONS:
            if force and question.parse is _new_file:
                question = replace(question, parse=None)
            ctx.answers[question.key] = asker(question, ctx)
        check_dataset(ctx["dataset"] or None, rec)  # a local file without the columns: named, nothing written
        path = str(write_config(rec, ctx["path"], dataset=ctx["dataset"] or None, force=force))
        command = launch_command(rec, path)
        console.print(f"wrote {path}\nlaunch with: {command}", soft_wrap=True)
        if rec.nodes > 1:  # every node runs its own copy; nothing to launch from here
            console.print("run that command on every node, with its own --node-rank")
            return 0
        if asker(LAUNCH, ctx):
            return launch(rec, path)
        return 0
    except (KeyboardInterrupt, EOFError):
        print("\nadvisor cancelled; nothing launched.", file=sys.stderr)
        return 130


def main(argv: list[str] | None = None) -> int:
    """`automodel-advisor`: the wizard on its own (the same as `automodel advise`)."""
    from automodel.catalog.errors import ArgumentParser, run_cli

    parser = ArgumentParser(prog="automodel-advisor", description="Interactive advisor: asks about the task, "
                            "hardware and requirements, ranks models, writes the config and offers to launch it. "
                            "For scripts use `automodel recommend`.")
    parser.add_argument("--force", action="store_true", help="let the wizard replace an existing config file")

    def body() -> int:
        args = parser.parse_args(sys.argv[1:] if argv is None else argv)
        return run(force=args.force)

    return run_cli(body)


if __name__ == "__main__":
    raise SystemExit(main())

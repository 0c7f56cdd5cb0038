"""The bad-input corpus: every way a user can get a command wrong ends in exit 2 (130 for Ctrl-C), one
message on stderr naming the field, file or line, and never a traceback.

One table, run in-process through the `automodel` router (a few cases in a subprocess, where only the
real entry point shows the behaviour). Each case gets a fresh directory holding a valid tiny config
(`cfg.yaml`, model + tokenizer + data from tests/conftest's tiny assets) that it may break.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from automodel.advisor.cli import main as automodel

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"


@dataclass(frozen=True)
class Case:
    id: str
    argv: list[str]  # "{cfg}" and "{dir}" are replaced by the case's config and directory
    named: tuple[str, ...]  # each must appear in stderr: the field, file, flag or line
    files: dict[str, str | bytes] = field(default_factory=dict)  # written under the case directory first
    edit: Callable[[dict], None] | None = None  # changes the YAML of cfg.yaml
    env: dict[str, str] = field(default_factory=dict)
    code: int = 2
    subprocess: bool = False


def _set(path: str, value) -> Callable[[dict], None]:
    def edit(cfg: dict) -> None:
        node = cfg
        *parents, last = path.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    return edit


def _drop(path: str) -> Callable[[dict], None]:
    def edit(cfg: dict) -> None:
        node = cfg
        *parents, last = path.split(".")
        for key in parents:
            node = node[key]
        del node[last]
    return edit


V = ["validate", "-c", "{cfg}"]
F = ["finetune", "llm", "-c", "{cfg}"]
ROWS = "".join(json.dumps({"question": "copy", "input": "a b", "answer": "a b"}) + "\n" for _ in range(16))

CASES = [
    # config keys, types and values
    Case("unknown-key", [*V, "peft.rnak=8"], ("peft.rnak", "peft.rank")),
    Case("unknown-section", [*V, "trainer.steps=3"], ("trainer",)),
    Case("int-not-a-number", [*V, "peft.rank=abc"], ("peft.rank",)),
    Case("int-negative", [*V, "peft.rank=-1"], ("peft.rank",)),
    Case("float-negative-lr", [*V, "optimizer.lr=-1"], ("optimizer.lr",)),
    Case("literal-method", [*V, "peft.method=lorra"], ("peft.method",)),
    Case("literal-format", [*V, "data.format=xml"], ("data.format",)),
    Case("literal-init", [*V, "model.init=maybe"], ("model.init",)),
    Case("literal-strategy", [*V, "distributed.strategy=ddp"], ("distributed.strategy",)),
    Case("literal-task", [*V, "task=nlp"], ("task",)),
    Case("seq-len-zero", [*V, "data.max_seq_len=0"], ("data.max_seq_len",)),
    Case("max-steps-zero", [*V, "schedule.max_steps=0"], ("schedule.max_steps",)),
    Case("seed-float", [*V, "seed=1.5"], ("seed",)),
    Case("batch-not-divisible", [*V, "schedule.global_batch_size=7"], ("schedule.global_batch_size",)),
    Case("warmup-beyond-steps", [*V, "lr_schedule.warmup_steps=1000"], ("lr_schedule.warmup_steps",)),
    Case("export-adapter-full-ft", [*V, "peft.method=none", "checkpoint.export=adapter"], ("checkpoint.export",)),
    Case("target-module-typo", [*V, "peft.target_modules=[q_prj]"], ("peft.target_modules", "q_prj")),
    Case("list-for-int", [*V, "peft.rank=[1,2]"], ("peft.rank",)),
    Case("section-as-scalar", [*V], ("peft",), edit=_set("peft", 3)),
    Case("yaml-key-typo", [*V], ("schedule.max_stpes",), edit=_set("schedule.max_stpes", 3)),
    Case("yaml-wrong-type", [*V], ("data.max_seq_len",), edit=_set("data.max_seq_len", "long")),
    Case("both-steps-and-epochs", [*V], ("schedule",), edit=_set("schedule.epochs", 2)),
    Case("missing-required-model", [*V], ("model",), edit=_drop("model.name")),
    Case("env-var-unset", [*V, "output_dir=${AUTOMODEL_TEST_UNSET_VAR}/x"], ("AUTOMODEL_TEST_UNSET_VAR",)),
    Case("override-no-value", [*V, "--peft.rank"], ("--peft.rank",)),
    Case("override-bad-token", [*V, "peft..rank=3"], ("peft..rank",)),
    Case("model-unknown-name", [*V, "model.name=no-such-model-xyz"], ("model.name",)),
    Case("model-dir-without-config", [*V, "model.name={dir}/empty"], ("model.name", "config.json"),
         files={"empty/README": "no config here"}),
    Case("resume-missing-dir", [*V, "checkpoint.resume={dir}/nowhere"], ("checkpoint.resume",)),
    Case("placeholder-source", [*V, "data.source=REPLACE_ME"], ("data.source", "REPLACE_ME")),
    Case("placeholder-source-dry-run", [*F, "--dry-run", "data.source=REPLACE_ME"], ("data.source",)),
    Case("data-file-missing", [*V, "data.source={dir}/nope.jsonl"], ("data.source", "nope.jsonl")),
    Case("data-file-missing-dry-run", [*F, "--dry-run", "data.source={dir}/nope.jsonl"], ("data.source",)),
    Case("validation-file-missing", [*V, "data.validation.source={dir}/val.jsonl"], ("data.validation.source",)),
    # config files
    Case("config-missing", ["validate", "-c", "{dir}/none.yaml"], ("-c", "none.yaml")),
    Case("config-is-directory", ["validate", "-c", "{dir}"], ("-c",)),
    Case("config-not-yaml", ["validate", "-c", "{dir}/bad.yaml"], ("bad.yaml", "line 3"),
         files={"bad.yaml": "model:\n  name: [unclosed\n"}),
    Case("config-a-list", ["validate", "-c", "{dir}/list.yaml"], ("list.yaml",), files={"list.yaml": "- a\n- b\n"}),
    Case("config-not-utf8", ["validate", "-c", "{dir}/latin1.yaml"], ("latin1.yaml", "UTF-8"),
         files={"latin1.yaml": "output_dir: caf\xe9\n".encode("latin-1")}),
    Case("config-binary", ["validate", "-c", "{dir}/bin.yaml"], ("bin.yaml",), files={"bin.yaml": b"\x00\xff\xfe\x00"}),
    # every command's flags
    Case("no-command-flag", ["--frobnicate"], ("--frobnicate",)),
    Case("unknown-command", ["frobnicate"], ("frobnicate",)),
    Case("finetune-no-task", ["finetune", "-c", "{cfg}"], ("task",)),
    Case("finetune-bad-task", ["finetune", "nlp", "-c", "{cfg}"], ("task", "nlp")),
    Case("finetune-no-config", ["finetune", "llm"], ("-c",)),
    Case("finetune-task-mismatch", ["finetune", "asr", "-c", "{cfg}", "--dry-run"], ("task",)),
    Case("nproc-zero", [*F, "--nproc-per-node", "0"], ("--nproc-per-node",)),
    Case("nproc-word", [*F, "--nproc-per-node", "two"], ("--nproc-per-node", "two")),
    Case("nnodes-no-master", [*F, "--nnodes", "2"], ("--master-addr",)),
    Case("node-rank-out-of-range", [*F, "--nnodes", "2", "--node-rank", "5", "--master-addr", "h"], ("--node-rank",)),
    Case("master-port-too-big", [*F, "--master-port", "70000"], ("--master-port",)),
    Case("validate-world-size", [*V, "--nproc-per-node", "3"], ("schedule.global_batch_size",)),
    Case("config-extra-args", ["config", "schema", "extra"], ("extra",)),
    Case("config-bad-action", ["config", "dump"], ("action",)),
    Case("config-bad-format", ["config", "schema", "--format", "yaml"], ("--format",)),
    Case("recommend-negative-mem", ["recommend", "--task", "llm", "--gpu-mem", "-1"], ("--gpu-mem",)),
    Case("recommend-bad-task", ["recommend", "--task", "tts"], ("--task",)),
    Case("recommend-bad-priority", ["recommend", "--task", "llm", "--priority", "cheap"], ("--priority",)),
    Case("estimate-no-model", ["estimate"], ("MODEL",)),
    Case("estimate-unknown-model", ["estimate", "llama-9.9-1b"], ("MODEL",)),
    Case("estimate-bad-method", ["estimate", "llama-3.2-1b", "--method", "dora"], ("--method",)),
    Case("estimate-seq-len-zero", ["estimate", "llama-3.2-1b", "--seq-len", "0"], ("--seq-len",)),
    Case("estimate-batch-word", ["estimate", "llama-3.2-1b", "--batch-size", "x"], ("--batch-size",)),
    Case("estimate-missing-config-file", ["estimate", "{dir}/nope/config.json"], ("MODEL", "nope")),
    Case("catalog-bad-task", ["catalog", "list", "--task", "tts"], ("--task",)),
    Case("catalog-show-unknown", ["catalog", "show", "no-such-model-xyz"], ("no-such-model-xyz",)),
    Case("gpus-bad-flag", ["gpus", "--vendor-x"], ("--vendor-x",)),
    # data files (the run stops while reading them, before any model is built)
    Case("data-broken-json-line", [*F, "data.source={dir}/broken.jsonl"], ("data.source", "broken.jsonl", "line 2"),
         files={"broken.jsonl": ROWS[:200].splitlines()[0] + "\n{not json\n"}),
    Case("data-empty", [*F, "data.source={dir}/empty.jsonl"], ("data.source", "empty.jsonl"),
         files={"empty.jsonl": ""}),
    Case("data-missing-column", [*F, "data.source={dir}/cols.jsonl"], ("data.instruction", "row 1 of", "answer"),
         files={"cols.jsonl": json.dumps({"question": "q", "input": "i"}) + "\n"}),
    Case("data-misnamed-template-column", [*F, "data.instruction.prompt_template=Q: {questio}"],
         ("data.instruction.prompt_template", "questio")),
    Case("data-not-utf8", [*F, "data.source={dir}/latin1.jsonl"], ("data.source", "latin1.jsonl", "UTF-8"),
         files={"latin1.jsonl": (json.dumps({"question": "x", "input": "y", "answer": "z"}) + "\n"
                                  + '{"question": "caf\xe9"}\n').encode("latin-1")}),
    Case("data-unsupported-suffix", [*F, "data.source={dir}/rows.txt"], ("data.source", "rows.txt"),
         files={"rows.txt": ROWS}),
    Case("data-json-not-objects", [*F, "data.source={dir}/list.json"], ("data.source", "list.json"),
         files={"list.json": "[1, 2, 3]"}),
    Case("data-csv-missing-column", [*F, "data.source={dir}/rows.csv"], ("row 1 of", "answer"),
         files={"rows.csv": "question,input\ncopy,a b\n"}),
    Case("data-too-few-rows", [*F, "data.source={dir}/two.jsonl"], ("schedule.global_batch_size",),
         files={"two.jsonl": ROWS.splitlines()[0] + "\n" + ROWS.splitlines()[0] + "\n"}),
    # the vlm and asr tiny examples, with a row whose image or clip is not there
    Case("vlm-image-missing", ["finetune", "vlm", "-c", str(EXAMPLES / "vlm/tiny_offline.yaml"), "output_dir={dir}/out",
                               f"model.name={EXAMPLES / 'vlm/tiny/model'}", "data.source={dir}/v.jsonl",
                               f"data.validation.source={EXAMPLES / 'vlm/tiny/data/val.jsonl'}"],
         ("data.source", "v.jsonl", "row 1 of", "imgs/nope.png"),
         files={"v.jsonl": json.dumps({"messages": [
             {"role": "user", "content": [{"type": "image", "image": "imgs/nope.png"}, {"type": "text", "text": "What?"}]},
             {"role": "assistant", "content": [{"type": "text", "text": "a red circle"}]}]}) + "\n"}),
    Case("asr-clip-missing", ["finetune", "asr", "-c", str(EXAMPLES / "asr/tiny_offline.yaml"), "output_dir={dir}/out",
                              f"model.name={EXAMPLES / 'asr/tiny/whisper'}", "data.source={dir}/a.jsonl",
                              f"data.validation.source={EXAMPLES / 'asr/tiny/data/val.jsonl'}"],
         ("a.jsonl", "clips/nope.flac", "row 1"),
         files={"a.jsonl": json.dumps({"audio": "clips/nope.flac", "text": "five six"}) + "\n"}),
    # output paths
    Case("output-dir-is-a-file", [*F, "output_dir={dir}/afile"], ("output_dir", "afile"), files={"afile": "x"}),
    Case("output-dir-under-a-file", [*F, "output_dir={dir}/afile/run"], ("output_dir", "afile"),
         files={"afile": "x"}),
    Case("output-dir-in-proc", [*F, "output_dir=/proc/automodel-test/run"], ("output_dir", "/proc")),
    Case("output-dir-validate-is-a-file", [*V, "output_dir={dir}/afile"], ("output_dir", "afile"),
         files={"afile": "x"}),
    # environment
    Case("hub-offline-unknown-model", ["estimate", "someorg/not-in-catalog"], ("HF_HUB_OFFLINE",),
         env={"HF_HUB_OFFLINE": "1"}, subprocess=True),  # huggingface_hub reads it once per process
    Case("hub-unreachable", ["estimate", "someorg/not-in-catalog"], ("HF_HUB_OFFLINE=1", "local"),
         env={"HF_ENDPOINT": "http://127.0.0.1:9"}, subprocess=True),
    Case("hub-unreachable-finetune", [*F, "model.name=meta-llama/Llama-3.2-1B", "model.init=pretrained"],
         ("model.name", "HF_HUB_OFFLINE=1"), env={"HF_ENDPOINT": "http://127.0.0.1:9"}, subprocess=True),
    Case("output-dir-read-only-sysfs", [*F, "output_dir=/sys/automodel-test/run"], ("output_dir", "/sys")),
    Case("not-utf8-config-real-entry-point", ["validate", "-c", "{dir}/latin1.yaml"], ("latin1.yaml",),
         files={"latin1.yaml": "output_dir: caf\xe9\n".encode("latin-1")}, subprocess=True),
]


def _prepare(case: Case, tiny_assets: Path, root: Path) -> Path:
    root.mkdir()
    cfg = {
        "task": "llm",
        "model": {"name": str(tiny_assets / "model"), "init": "random"},
        "peft": {"method": "lora", "rank": 4, "alpha": 8},
        "data": {"source": str(tiny_assets / "data/train.jsonl"), "format": "instruction", "max_seq_len": 48,
                 "instruction": {"prompt_template": "Question: {question}\nInput: {input}\nAnswer:",
                                 "answer_column": "answer"}},
        "schedule": {"global_batch_size": 8, "micro_batch_size": 4, "max_steps": 2},
        "checkpoint": {"export": "none"},
        "logging": {"progress_bar": False},
        "output_dir": str(root / "out"),
    }
    if case.edit is not None:
        case.edit(cfg)
    (root / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    for name, content in case.files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    return root


def test_the_corpus_is_large_and_distinct() -> None:
    assert len(CASES) >= 60
    assert len({case.id for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input(case: Case, tiny_assets: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                   capsys: pytest.CaptureFixture[str]) -> None:
    root = _prepare(case, tiny_assets, tmp_path / "case")
    argv = [arg.replace("{cfg}", str(root / "cfg.yaml")).replace("{dir}", str(root)) for arg in case.argv]
    monkeypatch.chdir(root)
    if case.subprocess:
        # the suite's environment minus offline mode (bench/memory_accuracy.py sets it when collected)
        inherited = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
        env = {**inherited, "OMP_NUM_THREADS": "1", "HF_HOME": str(root / "hf"), **case.env}
        done = subprocess.run([sys.executable, "-m", "automodel.advisor.cli", *argv], env=env, capture_output=True,
                              text=True, timeout=300)
        code, out, err = done.returncode, done.stdout, done.stderr
    else:
        for name, value in case.env.items():
            monkeypatch.setenv(name, value)
        code = automodel(argv)
        out, err = capsys.readouterr()
    assert code == case.code, f"exit {code}\nstdout: {out[-1500:]}\nstderr: {err[-3000:]}"
    assert "Traceback" not in err and "Traceback" not in out
    assert err.startswith("error: "), err
    for name in case.named:
        assert name in err, f"{name!r} not named in: {err}"
    if not case.id.startswith("output-dir-is-a-file"):
        assert not (root / "out").exists()  # a failed run leaves no output_dir it created


def test_ctrl_c_exits_130_and_names_the_checkpoint_to_resume_from(
        tiny_assets: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from automodel.trainer import checkpoint

    root = _prepare(Case("ctrl-c", [], ()), tiny_assets, tmp_path / "case")
    save = checkpoint.save

    def interrupted_at_step_2(output_dir, step, **kwargs):
        if step == 2:
            raise KeyboardInterrupt
        return save(output_dir, step, **kwargs)

    monkeypatch.setattr(checkpoint, "save", interrupted_at_step_2)
    argv = ["finetune", "llm", "-c", str(root / "cfg.yaml"), "schedule.checkpoint_every=1", "schedule.max_steps=3"]
    assert automodel(argv) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.rstrip().endswith("interrupted")
    assert f"resume from {root / 'out/checkpoints/step_00000001'} (step 1)" in err

"""What this machine offers the engine, and what each task x method needs from it.

`automodel doctor` prints these facts; `finetune` runs `missing_for` on them before anything heavy and
stops with the first missing piece named. Probing (`probe`) is the only impure part: it reads package
metadata, imports only packages that load fast and whose native libraries are what breaks (torch,
Pillow, soundfile, torchvision), and never imports transformers, peft or bitsandbytes (seconds each,
and bitsandbytes may try the network). `readiness` and `missing_for` are pure functions of the facts.
"""

from __future__ import annotations

import errno
import importlib
import importlib.metadata
import importlib.util
import os
import platform
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from automodel.catalog.errors import UserError
from automodel.catalog.memory.host import node_ram_bytes
from automodel.trainer.tasks import TASKS

METHODS = ("full", "lora", "qlora")
# (distribution name, import name, import it to check that it loads)
PACKAGES: tuple[tuple[str, str, bool], ...] = (
    ("torch", "torch", True),
    ("transformers", "transformers", False),
    ("peft", "peft", False),
    ("accelerate", "accelerate", False),
    ("bitsandbytes", "bitsandbytes", False),
    ("flash-attn", "flash_attn", False),
    ("Pillow", "PIL", True),
    ("soundfile", "soundfile", True),
    ("torchvision", "torchvision", True),
)
# What a task needs beyond torch + transformers (decoding its inputs); the method's needs come from METHOD_NEEDS.
TASK_NEEDS: dict[str, tuple[str, ...]] = {"llm": (), "vlm": ("Pillow",), "asr": ("soundfile",)}
METHOD_NEEDS: dict[str, tuple[str, ...]] = {"full": (), "lora": ("peft",), "qlora": ("peft", "bitsandbytes")}


@dataclass(frozen=True)
class Package:
    """One dependency: its version (None: not installed) and, when importing it failed, why."""

    name: str
    version: str | None
    error: str | None = None

    @property
    def usable(self) -> bool:
        return self.version is not None and self.error is None

    def describe(self) -> str:
        if self.version is None:
            return "not installed"
        return f"{self.version} (fails to load: {self.error})" if self.error else self.version


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    memory_bytes: int
    bf16: bool


@dataclass(frozen=True)
class Environment:
    """The facts `doctor` reports (never a token's value)."""

    python: str
    packages: dict[str, Package]
    torch_build: str  # "CUDA 12.4", "ROCm 6.2" or "CPU"
    gpus: tuple[Gpu, ...]
    nccl: bool
    hf_token_set: bool
    hf_cache: str
    output_dir: str
    free_disk_bytes: int | None
    host_ram_bytes: int | None
    adapters: dict[str, bool] = field(default_factory=dict)  # task -> its adapter module is installed

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["readiness"] = [asdict(r) for r in readiness(self)]
        return data


@dataclass(frozen=True)
class Readiness:
    task: str
    method: str
    ready: bool
    device: str  # where it would run: "1 GPU", "CPU (testing only)", or "" when not ready
    missing: tuple[str, ...]


def missing_for(env: Environment, task: str, method: str) -> list[str]:
    """What this machine lacks for `task` x `method`, each as 'piece: how to get it' (empty: ready)."""
    missing = []
    torch = env.packages.get("torch")
    if torch is None or not torch.usable:
        missing.append(f"torch ({'not installed' if torch is None else torch.describe()}): pip install torch")
    if not env.adapters.get(task, False):
        missing.append(f"the {task} task adapter (automodel/trainer/tasks/{task}.py) is not in this install")
    for name in ("transformers", *TASK_NEEDS[task], *METHOD_NEEDS[method]):
        package = env.packages.get(name)
        if package is None or not package.usable:
            state = "not installed" if package is None else package.describe()
            missing.append(f"{name} ({state}): pip install {name}")
    if method == "qlora" and not env.gpus and not missing:
        problem = _engine_refuses_cpu_qlora()
        if problem:
            missing.append(problem)
    return missing


def _engine_refuses_cpu_qlora() -> str | None:
    """What the engine's own QLoRA check (peft.check_runtime) says about a process without CUDA, so the
    doctor's verdict is the run's verdict; None when the engine runs QLoRA on the CPU."""
    import contextlib
    import io

    from automodel.trainer.config import PeftConfig
    from automodel.trainer.peft import check_runtime

    try:
        with contextlib.redirect_stderr(io.StringIO()):  # a "for testing" note, if any, is the run's to print
            check_runtime(PeftConfig(method="qlora"), world_size=1, cuda=False)
    except UserError as err:
        return err.message
    return None


def readiness(env: Environment) -> list[Readiness]:
    """Every task x method: ready (and where it would run) or what is missing."""
    rows = []
    for task in TASKS:
        for method in METHODS:
            missing = tuple(missing_for(env, task, method))
            if missing:
                device = ""
            elif env.gpus:
                device = f"{len(env.gpus)} GPU{'s' if len(env.gpus) > 1 else ''}"
            else:
                device = "CPU (for testing only: slow)"
            rows.append(Readiness(task, method, not missing, device, missing))
    return rows


# --- probing (impure) ---------------------------------------------------------------------------------


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return (text[0] if text else type(err).__name__)[:160]


def probe_package(dist: str, module: str, load: bool) -> Package:
    try:
        version = importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        version = None
    if version is None and importlib.util.find_spec(module) is not None:
        version = "unknown version"
    if version is None or not load:
        return Package(dist, version)
    try:
        importlib.import_module(module)
    except Exception as err:  # a broken native library is exactly what the doctor reports
        return Package(dist, version, f"{type(err).__name__}: {_first_line(err)}")
    return Package(dist, version)


def _torch_facts(torch_ok: bool, gpu_details: bool) -> tuple[str, tuple[Gpu, ...], bool]:
    if not torch_ok:
        return "not available", (), False
    import torch

    build = (f"CUDA {torch.version.cuda}" if torch.version.cuda else
             f"ROCm {torch.version.hip}" if getattr(torch.version, "hip", None) else "CPU")
    gpus: list[Gpu] = []
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            if not gpu_details:
                gpus.append(Gpu(index, "", 0, False))
                continue
            props = torch.cuda.get_device_properties(index)
            bf16 = (torch.cuda.get_device_capability(index) >= (8, 0) if torch.version.cuda
                    else bool(torch.cuda.is_bf16_supported()))
            gpus.append(Gpu(index, props.name, int(props.total_memory), bf16))
    nccl = bool(torch.distributed.is_available() and torch.distributed.is_nccl_available())
    return build, tuple(gpus), nccl


def _free_disk(path: Path) -> int | None:
    """Free bytes on the filesystem that would hold `path` (its nearest existing ancestor)."""
    try:
        return shutil.disk_usage(_nearest_existing(path.expanduser())).free
    except OSError:
        return None


def _hf_facts() -> tuple[bool, str]:
    from huggingface_hub import constants

    token_set = bool(os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
                     or Path(constants.HF_TOKEN_PATH).is_file())
    return token_set, str(constants.HF_HUB_CACHE)


def probe(output_dir: str | Path = ".", *, gpu_details: bool = True) -> Environment:
    """The facts of this machine. `gpu_details=False` counts the GPUs without querying each (no CUDA
    context in a launcher that is about to start workers)."""
    packages = {dist: probe_package(dist, module, load) for dist, module, load in PACKAGES}
    build, gpus, nccl = _torch_facts(packages["torch"].usable, gpu_details)
    token_set, cache = _hf_facts()
    adapters = {task: importlib.util.find_spec(f"automodel.trainer.tasks.{task}") is not None for task in TASKS}
    return Environment(
        python=platform.python_version(), packages=packages, torch_build=build, gpus=gpus, nccl=nccl,
        hf_token_set=token_set, hf_cache=cache, output_dir=str(output_dir),
        free_disk_bytes=_free_disk(Path(output_dir)), host_ram_bytes=node_ram_bytes(), adapters=adapters,
    )


# --- the run's output directory ---------------------------------------------------------------------------

OUTPUT_DIR_HINT = "choose a directory you can write to (it is created if missing), e.g. output_dir=runs/my-run"


def _nearest_existing(path: Path) -> Path:
    probe = path.absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return probe


def check_output_dir(output_dir: str | Path, *, writable: bool = True) -> None:
    """`output_dir` can hold a run: not a file, not under a file, and (`writable`) writable, tried by creating
    and removing a temporary directory, which also catches read-only mounts and /proc, where permission
    bits say nothing. A UserError naming `output_dir` otherwise. Writes nothing that stays."""
    import tempfile

    path = Path(output_dir).expanduser()
    if path.exists() and not path.is_dir():
        raise UserError(f"{path} is a file, not a directory", field="output_dir", hint=OUTPUT_DIR_HINT)
    where = _nearest_existing(path)
    if not where.is_dir():
        raise UserError(f"{path} is under {where}, which is a file", field="output_dir", hint=OUTPUT_DIR_HINT)
    if not writable:
        return
    try:
        Path(tempfile.mkdtemp(prefix=".automodel-write-test-", dir=where)).rmdir()
    except OSError as err:
        state = "is read-only" if err.errno in (errno.EROFS, errno.EACCES, errno.EPERM) else "cannot hold new files"
        raise UserError(f"cannot create {path}: {where} {state} ({err.strerror})", field="output_dir",
                        hint=OUTPUT_DIR_HINT) from None


def output_dir_error(output_dir: str | Path, err: OSError) -> UserError:
    """The UserError for an OSError met while writing into `output_dir` (a full disk names the fix)."""
    if err.errno == errno.ENOSPC:
        return UserError(f"no space left on the device holding {output_dir}", field="output_dir",
                         hint="free disk space or point output_dir at a larger disk, then rerun the same command")
    target = f" ({err.filename})" if err.filename else ""
    return UserError(f"cannot write to {output_dir}{target}: {err.strerror or err}", field="output_dir",
                     hint=OUTPUT_DIR_HINT)


def remove_if_unused(output_dir: Path, metrics_file: str) -> bool:
    """After a failed run that created `output_dir`: remove it when it holds nothing the user needs (only
    config.yaml, the saved random base and an empty metrics file). True when removed."""
    if not output_dir.is_dir():
        return False
    for entry in output_dir.iterdir():
        if entry.name in ("config.yaml", "base", ".tmp-base"):
            continue
        if entry.name == metrics_file and entry.is_file() and entry.stat().st_size == 0:
            continue
        return False
    shutil.rmtree(output_dir, ignore_errors=True)
    return True

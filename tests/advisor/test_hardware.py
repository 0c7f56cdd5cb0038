"""GPU detection through a mocked nvidia-smi, CUDA_VISIBLE_DEVICES, and flags that always win."""

from __future__ import annotations

import subprocess
import sys

import pytest

from automodel.advisor import hardware
from automodel.advisor.profile import Hardware
from automodel.catalog.errors import UserError

SMI = """0, GPU-aaaa1111, NVIDIA A100-SXM4-80GB, 81920
1, GPU-bbbb2222, NVIDIA A100-SXM4-80GB, 81920
2, GPU-cccc3333, NVIDIA A100-SXM4-40GB, 40960
"""


def fake_run(stdout: str, returncode: int = 0):
    calls = []

    def run(cmd, **kwargs):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, returncode, stdout=stdout, stderr="")

    run.calls = calls  # type: ignore[attr-defined]
    return run


@pytest.fixture
def smi_present(monkeypatch):
    monkeypatch.setattr(hardware.shutil, "which", lambda name: "/usr/bin/nvidia-smi")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


def test_parse_smi_skips_garbage() -> None:
    gpus = hardware.parse_smi(SMI + "3, GPU-dddd, Weird GPU, [N/A]\nnot a line\n")
    assert [g.index for g in gpus] == [0, 1, 2]
    assert gpus[0].memory_bytes == 81920 * 2**20


def test_detect_uses_smallest_gpu_and_counts_all(smi_present) -> None:
    run = fake_run(SMI)
    hw = hardware.detect(run=run)
    assert hw is not None and hw.gpus_per_node == 3 and hw.memory_bytes == 40960 * 2**20
    assert hw.source == "nvidia-smi" and hw.detected
    assert run.calls[0][0] == "nvidia-smi" and "--format=csv,noheader,nounits" in run.calls[0]


@pytest.mark.parametrize(
    ("env", "count", "memory_mib"),
    [("0,1", 2, 81920), ("2", 1, 40960), ("GPU-bbbb", 1, 81920), ("1,-1,2", 1, 81920)],
)
def test_detect_honours_cuda_visible_devices(smi_present, monkeypatch, env, count, memory_mib) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", env)
    hw = hardware.detect(run=fake_run(SMI))
    assert hw is not None and hw.gpus_per_node == count and hw.memory_bytes == memory_mib * 2**20


def test_detect_none_when_nothing_visible(smi_present, monkeypatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert hardware.detect(run=fake_run(SMI)) is None
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert hardware.detect(run=fake_run("", returncode=9)) is None


def test_no_smi_does_not_import_torch(monkeypatch) -> None:
    monkeypatch.setattr(hardware.shutil, "which", lambda name: None)
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    assert hardware.detect(allow_torch=False) is None
    assert "torch" not in sys.modules


def test_flags_win_over_detection() -> None:
    detected = Hardware(memory_bytes=16 * 2**30, gpus_per_node=4, source="nvidia-smi")
    hw = hardware.resolve_hardware(gpus=2, nodes=3, detect_fn=lambda: detected)
    assert (hw.gpus_per_node, hw.nodes, hw.memory_bytes, hw.source) == (2, 3, 16 * 2**30, "nvidia-smi")


def test_nothing_given_nothing_detected_is_a_user_error() -> None:
    with pytest.raises(UserError) as err:
        hardware.resolve_hardware(detect_fn=lambda: None)
    assert err.value.field == "--gpu" and "--gpu-mem" in (err.value.hint or "")


def test_detected_gpu_is_matched_to_the_catalog(smi_present) -> None:
    line = "0, GPU-eeee, NVIDIA H100 80GB HBM3, 81559\n"
    hw = hardware.detect(run=fake_run(line))
    assert hw is not None and hw.gpu == "H100-SXM" and hw.bf16_tflops == pytest.approx(989.4)
    unknown = hardware.detect(run=fake_run("0, GPU-ffff, Mystery Accelerator, 12000\n"))
    assert unknown is not None and unknown.gpu is None and unknown.bf16_tflops is None


@pytest.mark.parametrize("text", ["24", "24G", "24GB", "24GiB", "24 gib", " 24gb "])
def test_gpu_mem_forms(text) -> None:
    assert hardware.parse_gpu_mem(text) == 24 * 2**30


@pytest.mark.parametrize("text", ["", "0", "24 parsecs", "lots", "-8"])
def test_gpu_mem_rejects(text) -> None:
    with pytest.raises(UserError) as err:
        hardware.parse_gpu_mem(text)
    assert err.value.field == "--gpu-mem"


def test_gpu_flag_uses_catalog_and_mem_overrides() -> None:
    hw = hardware.resolve_hardware(gpu="4090", gpus=2)
    assert hw.gpu == "RTX-4090" and hw.gpus_per_node == 2 and round(hw.memory_gib, 2) == 23.64
    assert hardware.resolve_hardware(gpu="A100-80GB", gpu_mem="40").memory_bytes == 40 * 2**30
    with pytest.raises(UserError) as err:
        hardware.resolve_hardware(gpu="banana")
    assert err.value.field == "--gpu" and "--gpu-mem" in (err.value.hint or "")


@pytest.mark.parametrize(("name", "says"), [("a100", "could be any of A100-40GB, A100-80GB"),
                                            ("H100-SMX", "did you mean 'H100-SXM'")])
def test_gpu_flag_passes_on_the_catalog_s_suggestions(name, says) -> None:
    with pytest.raises(UserError) as err:
        hardware.resolve_hardware(gpu=name)
    assert err.value.field == "--gpu" and says in err.value.message and "--gpu-mem" in (err.value.hint or "")

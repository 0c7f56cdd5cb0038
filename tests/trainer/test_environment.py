"""`automodel doctor`'s facts and verdicts: readiness is a pure function of the probed facts, agrees with
the engine's own QLoRA check, and the probe reports broken packages instead of crashing."""

from __future__ import annotations

import dataclasses
import json
import sys

import pytest

from automodel.trainer.environment import (
    Environment,
    Gpu,
    Package,
    missing_for,
    probe,
    probe_package,
    readiness,
)

ALL = {name: Package(name, "1.0") for name in
       ("torch", "transformers", "peft", "accelerate", "bitsandbytes", "Pillow", "soundfile")}


def _env(**changes) -> Environment:
    base = Environment(python="3.11.7", packages=dict(ALL), torch_build="CPU", gpus=(), nccl=False,
                       hf_token_set=False, hf_cache="/cache", output_dir="out", free_disk_bytes=10 << 30,
                       host_ram_bytes=24 << 30, adapters={"llm": True, "vlm": True, "asr": True})
    return dataclasses.replace(base, **changes)


def _verdicts(env: Environment) -> dict[tuple[str, str], tuple[bool, str, tuple[str, ...]]]:
    return {(r.task, r.method): (r.ready, r.device, r.missing) for r in readiness(env)}


def test_cpu_machine_trains_llm_for_testing_qlora_included() -> None:
    import importlib.util

    verdicts = _verdicts(_env())
    assert verdicts["llm", "lora"][:2] == (True, "CPU (for testing only: slow)")
    assert verdicts["llm", "full"][0] is True
    ready, device, missing = verdicts["llm", "qlora"]  # the engine's own check decides: bitsandbytes' CPU kernels
    if importlib.util.find_spec("bitsandbytes") is not None:
        assert (ready, device) == (True, "CPU (for testing only: slow)")
    else:
        assert not ready and any("bitsandbytes" in m for m in missing)


def test_gpus_and_missing_pieces_are_named() -> None:
    gpus = (Gpu(0, "H100", 80 << 30, True), Gpu(1, "H100", 80 << 30, True))
    assert _verdicts(_env(gpus=gpus))["llm", "qlora"][:2] == (True, "2 GPUs")
    packages = dict(ALL)
    packages["soundfile"] = Package("soundfile", "0.13", "OSError: sndfile library not found")
    del packages["peft"]
    env = _env(packages=packages, adapters={"llm": True, "vlm": False, "asr": True})
    assert missing_for(env, "llm", "full") == []
    assert missing_for(env, "llm", "lora") == ["peft (not installed): pip install peft"]
    assert any("soundfile (0.13 (fails to load: OSError" in m for m in missing_for(env, "asr", "full"))
    assert any("vlm task adapter" in m for m in missing_for(env, "vlm", "full"))


def test_doctor_agrees_with_the_engines_qlora_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """The run's own check (peft.check_runtime) and the doctor give the same verdict on a CPU machine."""
    from automodel.catalog.errors import UserError
    from automodel.trainer.config import PeftConfig
    from automodel.trainer.peft import check_runtime

    try:
        check_runtime(PeftConfig(method="qlora"), world_size=1, cuda=False)
        engine_runs = True
    except UserError:
        engine_runs = False
    assert _verdicts(_env())["llm", "qlora"][0] is engine_runs


def test_probe_reports_a_broken_package_and_never_crashes(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    broken = tmp_path / "brokenpkg"
    broken.mkdir()
    (broken / "__init__.py").write_text("raise OSError('libfoo.so: cannot open shared object file')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    package = probe_package("brokenpkg", "brokenpkg", True)
    assert package.version == "unknown version" and not package.usable
    assert package.error == "OSError: libfoo.so: cannot open shared object file"
    assert probe_package("no-such-dist", "no_such_module_xyz", True) == Package("no-such-dist", None)
    sys.modules.pop("brokenpkg", None)


def test_probe_of_this_machine(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_secretvalue123")
    env = probe(tmp_path / "not" / "yet")
    assert env.packages["torch"].usable and env.free_disk_bytes and env.host_ram_bytes
    data = json.loads(json.dumps(env.to_json()))
    assert {(r["task"], r["method"]) for r in data["readiness"]} == {
        (t, m) for t in ("llm", "vlm", "asr") for m in ("full", "lora", "qlora")}
    assert data["hf_token_set"] is True and "hf_secretvalue123" not in json.dumps(data)


def test_output_dir_problems_are_named(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno
    import tempfile

    from automodel.catalog.errors import UserError
    from automodel.trainer.environment import check_output_dir

    (tmp_path / "afile").write_text("x")
    for path, words in [(tmp_path / "afile", "is a file"), (tmp_path / "afile/run", "which is a file"),
                        ("/proc/automodel-test/run", "/proc")]:
        with pytest.raises(UserError) as err:
            check_output_dir(path)
        assert err.value.field == "output_dir" and words in err.value.message
    check_output_dir(tmp_path / "new/run")  # creatable: fine, and nothing is left behind
    assert not (tmp_path / "new").exists() and list(tmp_path.iterdir()) == [tmp_path / "afile"]
    check_output_dir("/proc/automodel-test/run", writable=False)  # validate does not try writing

    def read_only(*args, **kwargs):  # root ignores permission bits: a read-only mount is simulated
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkdtemp", read_only)
    (tmp_path / "resume").mkdir()
    with pytest.raises(UserError, match="read-only") as err:
        check_output_dir(tmp_path / "resume")  # resuming in an existing directory
    assert err.value.field == "output_dir"

"""trainer/tasks/__init__.py: one adapter per task behind the TaskAdapter Protocol, and adapter_for's errors."""

from __future__ import annotations

import importlib

import pytest

from automodel.catalog.errors import UserError
from automodel.trainer import tasks


@pytest.mark.parametrize("task", tasks.TASKS)
def test_every_task_has_an_adapter_with_every_hook(task: str) -> None:
    adapter = tasks.adapter_for(task)
    hooks = [name for name in tasks.TaskAdapter.__dict__ if not name.startswith("_")]
    assert hooks and all(callable(getattr(adapter, hook, None)) for hook in hooks), task


def test_unknown_task_and_a_broken_install_are_user_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(UserError, match="unknown task 'tts'") as err:
        tasks.adapter_for("tts")
    assert err.value.field == "task"
    real = importlib.import_module

    def missing_vlm(name: str, *args: object) -> object:
        if name == "automodel.trainer.tasks.vlm":
            raise ModuleNotFoundError(name=name)
        return real(name, *args)

    monkeypatch.setattr(tasks.importlib, "import_module", missing_vlm)
    with pytest.raises(UserError, match="vlm task adapter is not in this install") as err:
        tasks.adapter_for("vlm")
    assert "reinstall" in (err.value.hint or "")

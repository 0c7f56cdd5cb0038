"""The catalog's memory estimate: closed-form arithmetic, torch-free (catalog/memory/analytic.py).

The other engine, the fake-tensor simulation of the trainer's own step, lives with the engine it
traces (trainer/simulate.py); `automodel estimate --simulate` reaches it through `simulated()` below,
which imports it only when asked, so the catalog never depends on the trainer.
"""

from __future__ import annotations

from automodel.catalog.architecture import dims_from_config
from automodel.catalog.errors import UserError
from automodel.catalog.memory.analytic import estimate_analytic
from automodel.catalog.memory.host import with_host
from automodel.catalog.memory.plan import MemoryEstimate, Plan


def estimate(config: dict[str, object], plan: Plan, *, params: int | None = None) -> MemoryEstimate:
    """Per-GPU memory of `plan` on the model `config` describes (analytic; with the host RAM per process)."""
    return estimate_analytic(config, plan, params=params)


def simulated(config: dict[str, object], plan: Plan) -> MemoryEstimate:
    """The trainer's step on fake tensors (torch, transformers and peft are imported only here)."""
    import importlib

    try:
        module = importlib.import_module("automodel.trainer.simulate")
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("automodel"):
            raise UserError("the simulator is not available in this build", field="--simulate",
                            hint="drop --simulate to use the analytic estimate") from exc
        raise UserError(f"--simulate needs {exc.name}, which is not installed", field="--simulate",
                        hint="pip install torch transformers peft") from exc
    return with_host(module.estimate_simulated(config, plan), dims_from_config(config), plan)

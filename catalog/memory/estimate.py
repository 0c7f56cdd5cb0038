"""The catalog's memory estimate: closed-form arithmetic, torch-free (catalog/memory/analytic.py).

The other engine, the fake-tensor simulation of the trainer's own step, lives with the engine it
traces (trainer/simulate.py); `automodel estimate --simulate` reaches it through `simulated()` below,
which imports it only when asked, so the catalog never depends on the trainer.
"""

from __future__ import annotations

import dataclasses

from automodel.catalog.architecture import dims_from_config
from automodel.catalog.errors import UserError
from automodel.catalog.memory.analytic import estimate_analytic
from automodel.catalog.memory.host import host_assumption, host_memory
from automodel.catalog.memory.plan import MemoryEstimate, Plan


def estimate(config: dict[str, object], plan: Plan, *, params: int | None = None) -> MemoryEstimate:
    """Per-GPU memory of `plan` on the model `config` describes (analytic; with the host RAM per process)."""
    return estimate_analytic(config, plan, params=params)


def with_host(result: MemoryEstimate, config: dict[str, object], plan: Plan) -> MemoryEstimate:
    """`result` with the host RAM per process of a training plan (catalog/memory/host.py) and its assumption."""
    if plan.mode != "train":
        return result
    host = host_memory(dims_from_config(config), plan, total=result.params, trainable=result.trainable_params)
    return dataclasses.replace(result, host_peak=host.peak, host=tuple(host.breakdown().items()),
                               assumptions=(*result.assumptions, host_assumption(host, plan)))


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
    return with_host(module.estimate_simulated(config, plan), config, plan)

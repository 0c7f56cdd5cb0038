"""One entry point for a memory estimate, whichever engine answers it.

`analytic` (catalog/memory/analytic.py) is closed-form arithmetic and torch-free; `simulate`
(catalog/memory/simulate.py) builds the model on fake tensors and runs a step under torch's memory
tracker, so it is imported only when asked for.
"""

from __future__ import annotations

from typing import Literal

from automodel.catalog.errors import UserError
from automodel.catalog.memory.analytic import estimate_analytic
from automodel.catalog.memory.plan import MemoryEstimate, Plan

Engine = Literal["analytic", "simulate"]


def estimate(
    config: dict[str, object],
    plan: Plan,
    *,
    engine: Engine = "analytic",
    params: int | None = None,
) -> MemoryEstimate:
    """Per-GPU memory of `plan` on the model `config` describes, from the chosen engine."""
    if engine == "analytic":
        return estimate_analytic(config, plan, params=params)
    if engine == "simulate":
        try:
            from automodel.catalog.memory.simulate import estimate_simulated  # torch: only when asked
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith("automodel"):
                raise UserError("the simulator is not available in this build", field="--simulate",
                                hint="drop --simulate to use the analytic estimate") from exc
            raise UserError(f"--simulate needs {exc.name}, which is not installed", field="--simulate",
                            hint="pip install torch transformers peft") from exc
        return estimate_simulated(config, plan)
    raise UserError(f"unknown estimator engine {engine!r}", field="engine", hint="analytic or simulate")

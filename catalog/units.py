"""Memory sizes as users type them (`24`, `24G`, `24GB`, `24GiB`, `80 gb`, `0.5TiB`) and counts with
decimal suffixes (`8B` parameters, `250M` tokens).

Torch-free; shared by `automodel estimate --gpu-mem` and the advisor's hardware flags. A bare number
and the `G`/`GB` suffixes are read as GiB, the way GPU vendors label memory (an "80GB" A100 has 80 GiB).
"""

from __future__ import annotations

import math
import re

from automodel.catalog.errors import UserError

GIB = 1024**3
_UNITS = {"": GIB, "g": GIB, "gb": GIB, "gib": GIB, "m": 1024**2, "mb": 1024**2, "mib": 1024**2,
          "t": 1024**4, "tb": 1024**4, "tib": 1024**4}
_PATTERN = re.compile(r"^\s*(-?(?:\d+(?:\.\d+)?|\.\d+))\s*([a-zA-Z]*)\s*$")
# No GPU comes near 1 TiB (the largest in catalog/data/gpus.yaml has 192 GiB): a bigger per-GPU size is a
# unit slip (`24TB` for 24 GB) or a whole node's memory, and would silently make everything "fit".
MAX_PER_GPU = 1024**4


def parse_memory(text: str | float, *, field: str = "--gpu-mem", limit: int | None = MAX_PER_GPU) -> int:
    """Bytes for one GPU's memory; a UserError naming `field` for anything else, a size <= 0 or one
    beyond MAX_PER_GPU."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        value, unit = float(text), ""
    else:
        match = _PATTERN.match(str(text))
        if not match or match.group(2).lower() not in _UNITS:
            raise UserError(f"cannot read {text!r} as a memory size", field=field,
                            hint="give GiB as a number or with a unit: 24, 24G, 24GB, 24GiB, 512MiB")
        value, unit = float(match.group(1)), match.group(2).lower()
    if value <= 0:
        raise UserError(f"memory size must be positive, got {text!r}", field=field, hint="e.g. 24GB")
    size = int(value * _UNITS[unit])
    if limit is not None and size > limit:
        raise UserError(f"{text!r} is {size / GIB:,.0f} GiB per GPU, more than any GPU has", field=field,
                        hint="give the memory of one GPU (e.g. 80GB); the number of GPUs is --gpus")
    return size


_COUNT = re.compile(r"^\s*(\d+(?:\.\d*)?(?:e\d+)?|\.\d+)\s*([kmbt]?)\s*$", re.IGNORECASE)
_COUNT_SCALE = {"": 1, "k": 10**3, "m": 10**6, "b": 10**9, "t": 10**12}


def parse_count(text: str) -> int:
    """`8B`, `500M`, `1.5b`, `8e9`, `2000000` -> a whole count >= 1 (k/m/b/t are powers of 1000).
    ValueError with a readable message otherwise; callers name their flag."""
    match = _COUNT.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a count (e.g. 2000000, 250M, 1.5B, 8e9)")
    value = float(match.group(1)) * _COUNT_SCALE[match.group(2).lower()]
    if not math.isfinite(value) or value > 10**18:  # `1e400` is inf; beyond 1e18 is no real count
        raise ValueError(f"{text!r} is too large (at most 1e18)")
    if value < 1:
        raise ValueError(f"{text!r} is below 1")
    return int(value)


def size_class_limit(text: str) -> int:
    """`--max-params` as people read model sizes: the exclusive upper bound of the size class `text` names.

    A size with a unit is a class at the precision typed, as vendors name sizes by their leading digits:
    `8B` keeps every count below 9B (Llama-3.1-8B at 8.03B, Qwen3-8B at 8.19B), `7B` below 8B (Qwen2.5-7B at
    7.62B), `1.5B` below 1.6B. A plain count (`8000000000`, `8e9`) is exact. ValueError as `parse_count`."""
    exact = parse_count(text)
    match = _COUNT.match(text)
    assert match is not None  # parse_count accepted it
    number, unit = match.group(1), match.group(2).lower()
    if not unit or "e" in number.lower():
        return exact + 1
    decimals = len(number.split(".", 1)[1]) if "." in number else 0
    return round((float(number) + 10.0**-decimals) * _COUNT_SCALE[unit])


def gib(n_bytes: float) -> float:
    """Bytes as GiB (for rendering)."""
    return n_bytes / GIB

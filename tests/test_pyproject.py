"""pyproject.toml declares exactly what the code imports: every runtime dependency is imported by
advisor/, catalog/ or trainer/, and every third-party import there is declared (or arrives with a declared
package, or is an optional extra imported only where its feature runs)."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
IMPORT_NAME = {"pyyaml": "yaml", "huggingface_hub": "huggingface_hub", "pillow": "PIL"}  # distribution -> module
# Imported, not declared: installed by a declared package (pydantic_core by pydantic, pyarrow by datasets),
# or optional: bitsandbytes is imported only when QLoRA runs, which says how to install it.
TRANSITIVE = {"pydantic_core": "pydantic", "pyarrow": "datasets"}
OPTIONAL = {"bitsandbytes"}


def _declared() -> dict[str, str]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    names = [re.split(r"[<>=!~\[ ;]", d, maxsplit=1)[0].lower() for d in deps]
    return {IMPORT_NAME.get(n, n.replace("-", "_")): n for n in names}


def _imported() -> set[str]:
    found: set[str] = set()
    for room in ("advisor", "catalog", "trainer"):
        for path in (ROOT / room).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    found.update(alias.name.split(".")[0] for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    found.add(node.module.split(".")[0])
    return {m for m in found if m not in sys.stdlib_module_names and m != "automodel"}


def test_every_declared_dependency_is_imported() -> None:
    unused = set(_declared()) - _imported()
    assert not unused, f"declared in pyproject.toml but imported nowhere: {sorted(unused)}"


def test_every_third_party_import_is_declared() -> None:
    declared = _declared()
    missing = {m for m in _imported() - set(declared) - OPTIONAL if TRANSITIVE.get(m) not in declared}
    assert not missing, f"imported but not declared in pyproject.toml: {sorted(missing)}"

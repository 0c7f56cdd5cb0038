"""Loading the catalog and resolving what a user typed into a model: the one place every command goes
through to turn `llama-3.2-1b`, `Qwen/Qwen2.5-7B-Instruct`, `./my-model/` or a Hub id into a config.

Torch-free: parameter counts for models outside the catalog are computed lazily (catalog.params is
imported only when `.params` is read on such a model), and huggingface_hub only when a Hub id outside
the catalog has to be fetched.
"""

from __future__ import annotations

import copy
import difflib
import functools
import json
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import ValidationError

from automodel.catalog import hub
from automodel.catalog.errors import UserError
from automodel.catalog.schema import FamilySpec, GPUSpec, GPUTable, ModelSpec

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the C loader is ~10x faster where libyaml exists


@dataclass(frozen=True)
class Catalog:
    """Every family, model and GPU, validated. Use `load_catalog()` to get the cached instance."""

    families: tuple[FamilySpec, ...]
    gpus: tuple[GPUSpec, ...]
    models: tuple[ModelSpec, ...] = field(init=False)

    def __post_init__(self) -> None:
        models = tuple(m for fam in self.families for m in fam.models)
        object.__setattr__(self, "models", models)
        _check_unique([m.name.lower() for m in models], "model name")
        _check_unique([m.hf_id.lower() for m in models], "model hf_id")
        _check_unique([n.lower() for g in self.gpus for n in (g.name, *g.aliases)], "GPU name/alias")

    def use_cases(self, modality: str) -> tuple[str, ...]:
        """Use cases at least one model of this modality is tagged with, sorted."""
        return tuple(sorted({u for m in self.models if m.modality == modality for u in m.use_cases}))

    def check_use_case(self, modality: str, use_case: str) -> None:
        """A UserError naming --use-case when no model of the modality offers it (filters would match nothing)."""
        if use_case not in self.use_cases(modality):
            raise UserError(f"no {modality} model in the catalog is made for {use_case}", field="--use-case",
                            hint=f"{modality} models cover: {', '.join(self.use_cases(modality))}; "
                            "or leave --use-case out")

    def family(self, name: str) -> FamilySpec:
        for fam in self.families:
            if fam.name.lower() == name.lower():
                return fam
        raise UserError(
            f"unknown family {name!r}{_did_you_mean(name, [f.name for f in self.families])}",
            field="--family",
            hint=f"one of: {', '.join(f.name for f in self.families)}",
        )


def _check_unique(values: list[str], what: str) -> None:
    dupes = sorted({v for v in values if values.count(v) > 1})
    if dupes:
        raise UserError(f"duplicate {what} in the catalog data: {', '.join(dupes)}", field="catalog/data")


def _format_validation(err: ValidationError, source: str) -> str:
    """One line per problem: `file: models.3.params: Input should be greater than 0`."""
    lines = []
    for problem in err.errors():
        path = ".".join(str(p) for p in problem["loc"]) or "(top level)"
        lines.append(f"{source}: {path}: {problem['msg']}")
    return "\n".join(lines)


def parse_yaml(text: str, source: str, schema: type[FamilySpec] | type[GPUTable]) -> Any:
    """Parse and validate one catalog file; errors name the file and the YAML path of the bad field."""
    try:
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 - CSafeLoader/SafeLoader only
    except yaml.YAMLError as exc:
        raise UserError(f"{source} is not valid YAML: {exc}", field=source) from exc
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        raise UserError(
            "invalid catalog data\n" + _format_validation(exc, source),
            field=source,
            hint="fix the field named above (schema: automodel/catalog/schema.py)",
        ) from exc


def load_catalog_from(data_dir: Path | Any) -> Catalog:
    """Load every models/*.yaml and gpus.yaml under `data_dir` (a Path or importlib Traversable)."""
    models_dir = data_dir / "models"
    files = sorted((f for f in models_dir.iterdir() if f.name.endswith(".yaml")), key=lambda f: f.name)
    families = tuple(parse_yaml(f.read_text(encoding="utf-8"), f"models/{f.name}", FamilySpec) for f in files)
    gpus_file = data_dir / "gpus.yaml"
    table = parse_yaml(gpus_file.read_text(encoding="utf-8"), "gpus.yaml", GPUTable)
    return Catalog(families=families, gpus=table.gpus)


@functools.cache
def load_catalog() -> Catalog:
    """The catalog shipped with the package (validated once per process)."""
    return load_catalog_from(resources.files("automodel.catalog") / "data")


def _did_you_mean(name: str, candidates: list[str], canonical: dict[str, str] | None = None) -> str:
    """`; did you mean 'a', 'b'?` for up to three close candidates (mapped through `canonical`, so an
    alias suggests the entry's real name), or an empty string."""
    lowered = {c.lower(): c for c in candidates}
    key = name.lower()
    close = difflib.get_close_matches(key, list(lowered), n=5, cutoff=0.5)
    # Substring hits catch "llama-8b"-style abbreviations difflib scores low.
    close += [c for c in lowered if key and key in c and c not in close]
    names = list(dict.fromkeys((canonical or {}).get(lowered[c], lowered[c]) for c in close))[:3]
    return f"; did you mean {', '.join(repr(n) for n in names)}?" if names else ""


def find_model(name: str) -> ModelSpec:
    """A catalog model by short name or HF id, case-insensitive."""
    model = _catalog_match(name)
    if model is not None:
        return model
    catalog = load_catalog()
    candidates = [m.name for m in catalog.models] + [m.hf_id for m in catalog.models]
    raise UserError(
        f"unknown model {name!r}{_did_you_mean(name, candidates)}",
        field="MODEL",
        hint="see `automodel catalog list`, or pass a Hub id (org/name) or a path to a config.json",
    )


def find_gpu(name: str) -> GPUSpec:
    """A GPU by name or alias, case-insensitive; spaces and underscores count as dashes."""
    catalog = load_catalog()
    key = name.strip().lower().replace(" ", "-").replace("_", "-")
    for gpu in catalog.gpus:
        if key in (n.lower() for n in (gpu.name, *gpu.aliases)):
            return gpu
    # `a100`, `v100`, `rtx`: a stem of several entries. Picking one would silently plan for the wrong memory.
    stem = [g for g in catalog.gpus if g.name.lower().startswith(key + "-")] if key else []
    if len(stem) == 1:
        return stem[0]
    if stem:
        raise UserError(f"{name!r} could be any of {', '.join(g.name for g in stem)}", field="--gpu",
                        hint=f"name the model, e.g. --gpu {stem[0].name}, or give --gpu-mem GB")
    canonical = {n: g.name for g in catalog.gpus for n in (g.name, *g.aliases)}
    raise UserError(
        f"unknown GPU {name!r}{_did_you_mean(key, list(canonical), canonical)}",
        field="--gpu",
        hint=f"one of: {', '.join(g.name for g in catalog.gpus)} (see `automodel gpus`)",
    )


@dataclass(frozen=True)
class ResolvedModel:
    """A model as every command sees it: a name, its config dict and, for catalog models, its entry."""

    name: str
    hf_id: str | None
    config: dict[str, Any]
    spec: ModelSpec | None
    source: Literal["catalog", "path", "hub"]

    @functools.cached_property
    def params(self) -> int:
        if self.spec is not None:
            return self.spec.params
        from automodel.catalog.params import exact_param_count  # torch: only for models outside the catalog

        return exact_param_count(self.config)

    @property
    def params_method(self) -> str:
        if self.spec is not None:
            return self.spec.params_method
        from automodel.catalog.params import params_method_for  # torch, as `.params` needs for such models

        return params_method_for(self.config)

    @property
    def context_length(self) -> int | None:
        """Tokens per sequence the model was trained for: the catalog's figure, else the config's position
        limit (Whisper: decoder tokens, `max_target_positions`); None when the config states none."""
        if self.spec is not None and self.spec.context_length:
            return self.spec.context_length
        text = self.config.get("text_config")
        text = text if isinstance(text, dict) else self.config
        key = "max_target_positions" if self.config.get("model_type") == "whisper" else "max_position_embeddings"
        value = text.get(key)
        return value if isinstance(value, int) else None


def _catalog_match(name: str) -> ModelSpec | None:
    key = name.strip().lower()
    for model in load_catalog().models:
        if key in (model.name.lower(), model.hf_id.lower()):
            return model
    return None


def _read_config_file(path: Path) -> dict[str, Any]:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(
            f"cannot read {path} as JSON: {exc}", field="MODEL", hint="pass a valid config.json"
        ) from exc
    if not isinstance(config, dict) or not isinstance(config.get("model_type"), str):
        raise UserError(
            f"{path} has no `model_type`; it is not a transformers config.json",
            field="MODEL",
            hint="pass the config.json of a transformers model",
        )
    return config


def _resolve_path(path: Path) -> ResolvedModel:
    if path.is_dir():
        config_file = path / "config.json"
        if not config_file.is_file():
            raise UserError(
                f"{path} has no config.json", field="MODEL", hint="pass a model directory or its config.json"
            )
        name = path.resolve().name
    else:
        config_file = path
        name = path.resolve().parent.name if path.name == "config.json" else path.stem
    return ResolvedModel(
        name=name, hf_id=None, config=_read_config_file(config_file), spec=None, source="path"
    )


def _resolve_hub(repo_id: str) -> ResolvedModel:
    names = [m.name for m in load_catalog().models] + [m.hf_id for m in load_catalog().models]
    if hub.offline():
        raise UserError(
            f"{repo_id!r} is not in the catalog and HF_HUB_OFFLINE is set, so its config.json cannot be fetched"
            f"{_did_you_mean(repo_id, names)}",
            field="MODEL",
            hint="unset HF_HUB_OFFLINE, or pass a local config.json / model directory",
        )
    from huggingface_hub import hf_hub_download  # lazy: only for Hub ids outside the catalog
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    problem = hub.unreachable(repo_id)  # one quick try instead of the client's five retries
    if problem is not None:
        try:
            path = hf_hub_download(repo_id=repo_id, filename="config.json", local_files_only=True)
        except LocalEntryNotFoundError:
            raise UserError(f"cannot reach the Hugging Face Hub to fetch {repo_id}'s config.json ({problem}), "
                            "and no copy is cached", field="MODEL", hint=hub.OFFLINE_HINT) from None
        return ResolvedModel(name=repo_id.split("/")[-1], hf_id=repo_id, config=_read_config_file(Path(path)),
                             spec=None, source="hub")
    try:
        # Only config.json: never weights. HF_TOKEN is picked up by huggingface_hub itself.
        path = hf_hub_download(repo_id=repo_id, filename="config.json")
    except GatedRepoError as exc:
        raise UserError(
            f"{repo_id} is a gated repository: accept its licence at https://huggingface.co/{repo_id} and set HF_TOKEN",
            field="MODEL",
            hint=f"open https://huggingface.co/{repo_id}, accept the terms, then export HF_TOKEN=<your token>",
        ) from exc
    except RepositoryNotFoundError as exc:
        raise UserError(
            f"no model {repo_id!r} on the Hugging Face Hub (or it is private){_did_you_mean(repo_id, names)}",
            field="MODEL",
            hint="check the spelling; for a private repo set HF_TOKEN",
        ) from exc
    except LocalEntryNotFoundError as exc:  # no network and no cached copy; it subclasses EntryNotFoundError
        raise UserError(
            f"could not fetch config.json of {repo_id} from the Hub (no connection, no cached copy)",
            field="MODEL",
            hint="check the network, or pass a local config.json / model directory",
        ) from exc
    except EntryNotFoundError as exc:
        raise UserError(
            f"{repo_id} has no config.json", field="MODEL", hint="pass a transformers model"
        ) from exc
    except (HfHubHTTPError, OSError) as exc:
        raise UserError(
            f"could not fetch config.json of {repo_id} from the Hub: {exc}",
            field="MODEL",
            hint="check the network, or pass a local config.json / model directory",
        ) from exc
    config = _read_config_file(Path(path))
    return ResolvedModel(name=repo_id.split("/")[-1], hf_id=repo_id, config=config, spec=None, source="hub")


def resolve(name_or_path: str | os.PathLike[str]) -> ResolvedModel:
    """What the user means by MODEL: a catalog name or HF id (case-insensitive), a config.json or model
    directory on disk, or another Hub id (its config.json is fetched, nothing else)."""
    text = os.fspath(name_or_path).strip()
    if not text:
        raise UserError("empty model name", field="MODEL", hint="see `automodel catalog list`")
    spec = _catalog_match(text)
    if spec is not None:
        # A copy: callers may edit their config (overrides, tiny test variants) without touching the catalog.
        config = copy.deepcopy(spec.config)
        return ResolvedModel(name=spec.name, hf_id=spec.hf_id, config=config, spec=spec, source="catalog")
    path = Path(text).expanduser()
    if path.exists():
        return _resolve_path(path)
    looks_like_path = text.endswith(".json") or text.startswith((".", "/", "~")) or text.count("/") > 1
    if looks_like_path:
        raise UserError(f"no such file or directory: {text}", field="MODEL", hint="check the path")
    if "/" in text:
        return _resolve_hub(text)
    find_model(text)  # raises the did-you-mean error
    raise AssertionError("unreachable")  # pragma: no cover

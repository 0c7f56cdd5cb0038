"""`automodel catalog list|show` and `automodel gpus`: what models and GPUs the advisor knows.

Thin: argparse in, a pure function over the catalog (`select_models`, `model_card`, `gpu_rows`), then a
rich table or one JSON document on stdout. Torch-free for catalog models; `show` on a config.json or Hub
id outside the catalog imports torch lazily (through `ResolvedModel.params`) to count its parameters
exactly.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from automodel.catalog.errors import UserError
from automodel.catalog.registry import ResolvedModel, load_catalog, resolve
from automodel.catalog.schema import USE_CASES, ModelSpec, format_params
from automodel.catalog.units import size_class_limit


def parse_params(text: str) -> int:
    """`8B`, `500M`, `1.5b`, `8e9`, `8000000000` -> the exclusive upper bound of that size class
    (`catalog.units.size_class_limit`: 8B keeps everything below 9B)."""
    try:
        return size_class_limit(text)
    except ValueError as exc:
        raise UserError(str(exc), field="--max-params", hint="e.g. 8B, 500M, 1.5b, 8e9") from None


def _families_matching(name: str) -> set[str]:
    catalog = load_catalog()
    key = name.strip().lower()
    exact = {f.name for f in catalog.families if key in (f.name.lower(), f.title.lower())}
    if exact:
        return exact
    # `--family qwen` or `--family llama`: every family whose id starts with it.
    prefixed = {f.name for f in catalog.families if f.name.lower().startswith(key)}
    return prefixed or {catalog.family(name).name}  # catalog.family raises with did-you-mean


def select_models(
    task: str | None = None,
    family: str | None = None,
    use_case: str | None = None,
    max_params: int | None = None,
) -> list[ModelSpec]:
    """Catalog models passing every given filter, smallest first; `max_params` is an exclusive bound
    (`parse_params`)."""
    if task is not None and use_case is not None:
        load_catalog().check_use_case(task, use_case)  # would list nothing, and say nothing about why
    families = _families_matching(family) if family else None
    return sorted(
        (
            m
            for m in load_catalog().models
            if (task is None or m.modality == task)
            and (families is None or m.family in families)
            and (use_case is None or use_case in m.use_cases)
            and (max_params is None or m.params < max_params)
        ),
        key=lambda m: (m.params, m.name),
    )


def model_row(m: ModelSpec) -> dict[str, Any]:
    return {
        "name": m.name,
        "hf_id": m.hf_id,
        "family": m.family,
        "modality": m.modality,
        "params": m.params,
        "active_params": m.active_params,
        "params_method": m.params_method,
        "context_length": m.context_length,
        "license": m.license,
        "commercial_use": m.commercial_use,
        "gated": m.gated,
        "use_cases": list(m.use_cases),
    }


def _text_part(config: dict[str, Any]) -> dict[str, Any]:
    text = config.get("text_config")
    return text if isinstance(text, dict) else config


def tied_embeddings(config: dict[str, Any]) -> bool | None:
    """Whether the output head shares the token embedding; None for CTC models (no LM head to tie)."""
    model_type = config.get("model_type")
    if model_type in {"wav2vec2", "hubert", "wavlm"}:
        return None
    for where in (config, _text_part(config)):
        if "tie_word_embeddings" in where:
            return bool(where["tie_word_embeddings"])
    from automodel.catalog.architecture import TIED_BY_DEFAULT  # the estimator's table, one copy

    return model_type in TIED_BY_DEFAULT or _text_part(config).get("model_type") in TIED_BY_DEFAULT


def architecture_summary(config: dict[str, Any]) -> dict[str, Any]:
    """Layers, widths, heads, vocabulary, tying, experts and towers, read from a (defaults-filled) config."""
    text = _text_part(config)
    whisper = config.get("model_type") == "whisper"
    heads = text.get("decoder_attention_heads" if whisper else "num_attention_heads")
    hidden = text.get("d_model" if whisper else "hidden_size")
    vision = config.get("vision_config") if isinstance(config.get("vision_config"), dict) else None
    summary: dict[str, Any] = {
        "model_type": config.get("model_type"),
        "architecture": (config.get("architectures") or [None])[0],
        "layers": text.get("decoder_layers" if whisper else "num_hidden_layers"),
        "hidden_size": hidden,
        "attention_heads": heads,
        "kv_heads": text.get("num_key_value_heads", heads),
        "head_dim": text.get("head_dim") or (hidden // heads if hidden and heads else None),
        "intermediate_size": text.get("decoder_ffn_dim" if whisper else "intermediate_size")
        or text.get("ff_intermediate_size"),  # Phi-3-small's name
        "vocab_size": text.get("vocab_size"),
        "max_position_embeddings": text.get("max_target_positions" if whisper else "max_position_embeddings"),
        "tied_embeddings": tied_embeddings(config),
        "experts": text.get("num_experts") or text.get("num_local_experts"),
        "experts_per_token": text.get("num_experts_per_tok"),
        "encoder_layers": text.get("encoder_layers") if whisper else None,
        "vision_layers": (vision.get("depth") or vision.get("num_hidden_layers")) if vision else None,
        "vision_hidden_size": (vision.get("embed_dim") or vision.get("hidden_size")) if vision else None,
    }
    return summary


_STANDARD_KEYS = (
    "num_hidden_layers",
    "hidden_size",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "intermediate_size",
    "vocab_size",
    "max_position_embeddings",
    "tie_word_embeddings",
)


def _filled(hf_config: Any) -> dict[str, Any]:
    """A transformers config as a dict with its defaults and the standard key names (GPT-2's `n_layer`
    is read as `num_hidden_layers` through the config's attribute map)."""
    data = hf_config.to_dict()
    for key in _STANDARD_KEYS:
        if key not in data and getattr(hf_config, key, None) is not None:
            data[key] = getattr(hf_config, key)
    for part in ("text_config", "vision_config"):
        sub = getattr(hf_config, part, None)
        if sub is not None and hasattr(sub, "to_dict"):
            data[part] = _filled(sub)
    return data


def model_card(resolved: ResolvedModel) -> dict[str, Any]:
    """Everything `catalog show` reports about a resolved model."""
    spec = resolved.spec
    config = resolved.config
    if spec is None:
        # Outside the catalog: let transformers fill the defaults the file leaves out (torch is loaded
        # anyway for the exact count), so the summary shows the dimensions the model really has.
        from automodel.catalog.params import hf_config_from_dict

        if config.get("model_type") != "phi3small":
            config = _filled(hf_config_from_dict(config))
    arch = architecture_summary(config)
    return {
        "name": resolved.name,
        "hf_id": resolved.hf_id,
        "resolved_from": resolved.source,
        "family": spec.family if spec else None,
        "modality": spec.modality if spec else None,
        "params": resolved.params,
        "active_params": spec.active_params if spec else None,
        "params_method": resolved.params_method,
        "context_length": spec.context_length if spec else arch["max_position_embeddings"],
        "architecture": arch,
        "license": spec.license if spec else None,
        "commercial_use": spec.commercial_use if spec else None,
        "gated": spec.gated if spec else None,
        "use_cases": list(spec.use_cases) if spec else [],
        "lora_targets": list(spec.lora_targets) if spec else [],
        "source": list(spec.source) if spec else [],
        "notes": spec.notes if spec else "",
    }


def gpu_rows() -> list[dict[str, Any]]:
    return [{**g.model_dump(mode="json"), "memory_bytes": g.memory_bytes} for g in load_catalog().gpus]


def _yes_no(value: bool | None) -> str:
    return "-" if value is None else ("yes" if value else "no")


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2))


def _run_list(args: argparse.Namespace) -> int:
    max_params = parse_params(args.max_params) if args.max_params else None
    models = select_models(args.task, args.family, args.use_case, max_params)
    if args.json:
        _print_json([model_row(m) for m in models])
        return 0
    from rich import box
    from rich.console import Console
    from rich.table import Table

    console = Console()
    wide = console.width >= 150  # hf_id and use cases only where they fit; `--json` always has them
    table = Table(
        title=f"{len(models)} models (exact parameter counts; `catalog show MODEL` for details)",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
    )
    columns = ["name", "hf_id", "task", "params", "ctx", "license", "comm.", "gated", "use cases"]
    columns = columns if wide else [c for c in columns if c not in ("hf_id", "use cases")]
    for column in columns:
        table.add_column(column, justify="right" if column in ("params", "ctx") else "left", no_wrap=True)
    for m in models:
        active = f" ({format_params(m.active_params)} active)" if m.active_params and wide else ""
        cells = {
            "name": m.name,
            "hf_id": m.hf_id,
            "task": m.modality,
            "params": format_params(m.params) + active,
            "ctx": f"{m.context_length:,}" if m.context_length else "-",
            "license": m.license.split(" ")[0],
            "comm.": _yes_no(m.commercial_use),
            "gated": _yes_no(m.gated),
            "use cases": ", ".join(m.use_cases),
        }
        table.add_row(*(cells[c] for c in columns))
    console.print(table)
    return 0


def _run_show(args: argparse.Namespace) -> int:
    card = model_card(resolve(args.model))
    if args.json:
        _print_json(card)
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"{card['name']}" + (f"  ({card['hf_id']})" if card["hf_id"] else ""), show_header=False
    )
    table.add_column("field", style="bold")
    table.add_column("value")
    params = f"{card['params']:,} ({format_params(card['params'])}, {card['params_method']})"
    if card["active_params"]:
        params += f"; {card['active_params']:,} active per token"
    rows: list[tuple[str, Any]] = [("resolved from", card["resolved_from"]), ("family", card["family"])]
    rows += [("task", card["modality"]), ("parameters", params), ("context", card["context_length"])]
    rows += [(k.replace("_", " "), v) for k, v in card["architecture"].items() if v is not None]
    rows += [("license", card["license"]), ("commercial use", _yes_no(card["commercial_use"]))]
    rows += [("gated", _yes_no(card["gated"])), ("use cases", ", ".join(card["use_cases"]))]
    rows += [("LoRA targets", ", ".join(card["lora_targets"])), ("notes", card["notes"])]
    rows += [("source", "\n".join(card["source"]))]
    for key, value in rows:
        if value not in (None, "", "-"):
            table.add_row(key, str(value))
    Console().print(table)
    return 0


def gpus_table(rows: list[dict[str, Any]], width: int) -> Any:
    """The GPU table; aliases only where they fit (120+ columns), never squeezed one per line."""
    from rich import box
    from rich.table import Table

    table = Table(
        title="GPUs (memory as torch reports it; dense tensor TFLOP/s)",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
        highlight=False,
    )
    columns = ["name", "memory", "bf16", "bf16 TF/s", "fp16 TF/s", "bandwidth", "aliases"]
    columns = columns if width >= 120 else columns[:-1]
    for column in columns:
        table.add_column(column, justify="left" if column in ("name", "aliases") else "right",
                         no_wrap=column != "aliases")
    for g in rows:
        cells = [
            g["name"],
            f"{g['memory_gib']:.2f} GiB ({g['marketed_gb']} GB)",
            _yes_no(g["bf16"]),
            f"{g['bf16_tflops']:g}" if g["bf16_tflops"] else "-",
            f"{g['fp16_tflops']:g}",
            f"{g['bandwidth_gbs']:g} GB/s",
            ", ".join(g["aliases"]),
        ]
        table.add_row(*cells[: len(columns)])
    return table


def _run_gpus(args: argparse.Namespace) -> int:
    rows = gpu_rows()
    if args.json:
        _print_json(rows)
        return 0
    from rich.console import Console

    console = Console()
    console.print(gpus_table(rows, console.width))
    if console.width < 120:
        console.print("aliases: `automodel gpus --json`, or a terminal of 120+ columns", style="dim")
    return 0


LIST_EXAMPLES = """examples:
  automodel catalog list
  automodel catalog list --task vlm
  automodel catalog list --family qwen3 --max-params 8B
  automodel catalog list --use-case code --max-params 1.5b --json
"""
SHOW_EXAMPLES = """examples:
  automodel catalog show llama-3.2-1b
  automodel catalog show Qwen/Qwen2.5-7B-Instruct --json
  automodel catalog show ./my-model/config.json      (exact count of any transformers config)
  automodel catalog show mistralai/Mistral-7B-v0.1   (fetches only config.json from the Hub)
"""
GPUS_EXAMPLES = """examples:
  automodel gpus
  automodel gpus --json
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    raw = argparse.RawDescriptionHelpFormatter
    catalog = subparsers.add_parser(
        "catalog",
        help="list the models the advisor knows, or show one",
        description="The model catalog: exact parameter counts, licences, use cases and architectures.",
        epilog=LIST_EXAMPLES + SHOW_EXAMPLES,
        formatter_class=raw,
    )
    sub = catalog.add_subparsers(dest="catalog_command", metavar="{list,show}", required=True)

    p_list = sub.add_parser(
        "list",
        help="list catalog models",
        description="List catalog models, smallest first.",
        epilog=LIST_EXAMPLES,
        formatter_class=raw,
    )
    p_list.add_argument(
        "--task", choices=("llm", "vlm", "asr"), help="only text (llm), vision (vlm) or speech (asr)"
    )
    p_list.add_argument(
        "--family", metavar="NAME", help="family id or its prefix, e.g. qwen3, llama, gemma-2"
    )
    p_list.add_argument("--use-case", choices=USE_CASES, help="only models made for this use case")
    p_list.add_argument("--max-params", metavar="N",
                        help="at most this size class, read as sizes are named: 8B keeps everything below 9B "
                        "(Llama-3.1-8B at 8.03B, Qwen3-8B at 8.19B), 1.5B below 1.6B; a plain count (8e9) is exact")
    p_list.add_argument("--json", action="store_true", help="print a JSON array on stdout instead of a table")
    p_list.set_defaults(func=_run_list)

    p_show = sub.add_parser(
        "show",
        help="show one model",
        epilog=SHOW_EXAMPLES,
        formatter_class=raw,
        description="Show a model's architecture, exact parameter count, licence, gating and use cases. "
        "MODEL is a catalog name, an HF id, a config.json, a model directory, or any Hub id (online).",
    )
    p_show.add_argument(
        "model", metavar="MODEL", help="catalog name, HF id, config.json path or model directory"
    )
    p_show.add_argument(
        "--json", action="store_true", help="print one JSON object on stdout instead of a table"
    )
    p_show.set_defaults(func=_run_show)

    p_gpus = subparsers.add_parser(
        "gpus",
        help="list the GPUs the advisor knows",
        description="GPUs with their usable memory (as torch reports it), bf16 support, dense TFLOP/s and "
        "bandwidth. Names and aliases here are what --gpu accepts.",
        epilog=GPUS_EXAMPLES,
        formatter_class=raw,
    )
    p_gpus.add_argument("--json", action="store_true", help="print a JSON array on stdout instead of a table")
    p_gpus.set_defaults(func=_run_gpus)

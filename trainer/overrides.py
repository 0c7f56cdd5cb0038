"""From YAML data and command-line overrides to validated-config input, with `${ENV}` interpolation.

Precedence: schema defaults < YAML file < `key.sub=value` overrides (later ones win). Override values are
typed by the schema: a field that takes text keeps the text as written, every other field parses the
value as YAML (`peft.rank=8` -> 8, `peft.target_modules=[q_proj,v_proj]` -> a list). `${NAME}` and
`${NAME,default}` are replaced from the environment in every string (`$${` writes a literal `${`).
Unknown keys fail with the dotted path and a did-you-mean over the schema's field paths; pydantic's
errors become one line per problem naming the dotted path. Nothing here imports code by name.

Works on any pydantic model class, so `trainer.config` can import it without a cycle.
"""

from __future__ import annotations

import copy
import difflib
import re
import types
import typing
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal, Union

import yaml
from pydantic import BaseModel, ValidationError

from automodel.catalog.errors import UserError

SECRET_WORDS = ("TOKEN", "KEY", "SECRET", "PASSWORD")
_INTERPOLATION = re.compile(r"\$(\$?)\{([A-Za-z_][A-Za-z0-9_]*)(?:,([^}]*))?\}")
_KEY = re.compile(r"^[A-Za-z_][\w\-]*(\.[A-Za-z_][\w\-]*)*$")
REDACTED = "***"


def is_secret_name(name: str) -> bool:
    """Environment variable names that look like they hold a credential."""
    upper = name.upper()
    return any(word in upper for word in SECRET_WORDS)


def redact_text(text: str, environ: Mapping[str, str]) -> str:
    """Replace the value of every secret-looking environment variable that occurs in `text`."""
    for name, value in environ.items():
        if is_secret_name(name) and len(value) >= 4 and value in text:
            text = text.replace(value, REDACTED)
    return text


# ---------------------------------------------------------------- schema walking

def _unwrap(annotation: Any) -> list[Any]:
    """The member types of an annotation (Optional/Union/Annotated flattened)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        return [t for arg in typing.get_args(annotation) for t in _unwrap(arg)]
    return [annotation]


def section_of(annotation: Any) -> type[BaseModel] | None:
    """The config section (pydantic model) a field holds, or None for a leaf."""
    for member in _unwrap(annotation):
        if isinstance(member, type) and issubclass(member, BaseModel):
            return member
    return None


def _takes_text(annotation: Any) -> bool:
    """True for str fields (and Literals of str): their override values are kept verbatim."""
    for member in _unwrap(annotation):
        if member is str:
            return True
        if typing.get_origin(member) is Literal and all(isinstance(a, str) for a in typing.get_args(member)):
            return not any(typing.get_origin(m) is tuple for m in _unwrap(annotation))
    return False


def schema_paths(model: type[BaseModel], prefix: str = "") -> Iterator[str]:
    """Every dotted field path of the schema (sections and leaves)."""
    for name, info in model.model_fields.items():
        path = f"{prefix}{name}"
        yield path
        sub = section_of(info.annotation)
        if sub is not None:
            yield from schema_paths(sub, f"{path}.")


def _field_at(model: type[BaseModel], path: str) -> Any:
    """The annotation at a dotted path, or raise UserError with a did-you-mean."""
    current: type[BaseModel] | None = model
    annotation: Any = None
    for i, part in enumerate(path.split(".")):
        if current is None or part not in current.model_fields:
            raise unknown_key(model, ".".join(path.split(".")[: i + 1]))
        annotation = current.model_fields[part].annotation
        current = section_of(annotation)
    return annotation


def _suggest(model: type[BaseModel], path: str) -> str | None:
    """The closest schema path: a sibling in the same section, else any path, else the same leaf elsewhere."""
    paths = list(schema_paths(model))
    prefix, _, leaf = path.rpartition(".")
    siblings = [p.rpartition(".")[2] for p in paths if p.rpartition(".")[0] == prefix]
    close = difflib.get_close_matches(leaf, siblings, n=1, cutoff=0.6)
    if close:
        return f"{prefix}.{close[0]}" if prefix else close[0]
    leaves = difflib.get_close_matches(leaf, [p.rpartition(".")[2] for p in paths], n=1, cutoff=0.8)
    return next((p for p in paths if leaves and p.rpartition(".")[2] == leaves[0]), None)


def unknown_key(model: type[BaseModel], path: str) -> UserError:
    close = _suggest(model, path)
    hint = f"did you mean `{close}`?" if close else "run `automodel config schema` to list the fields"
    return UserError("unknown config key", field=path, hint=hint)


def check_keys(model: type[BaseModel], data: Mapping[str, Any], section: type[BaseModel] | None = None,
               prefix: str = "") -> None:
    """Reject keys the schema does not have, naming the dotted path (before pydantic sees the data)."""
    section = section or model
    for key, value in data.items():
        path = f"{prefix}{key}"
        if not isinstance(key, str) or key not in section.model_fields:
            raise unknown_key(model, path)
        sub = section_of(section.model_fields[key].annotation)
        if sub is not None and isinstance(value, Mapping):
            check_keys(model, value, sub, f"{path}.")


# ---------------------------------------------------------------- overrides

def split_overrides(tokens: Sequence[str]) -> list[tuple[str, str]]:
    """`a.b=v`, `--a.b=v` and `--a.b v` tokens -> [(path, raw value)]; dashes in keys become underscores."""
    pairs: list[tuple[str, str]] = []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        flag = token.startswith("--")
        body = token[2:] if flag else token
        if "=" in body:
            key, value = body.split("=", 1)
        elif flag and i + 1 < len(tokens) and not tokens[i + 1].startswith("--"):
            key, value = body, tokens[i + 1]
            i += 1
        else:
            raise UserError(f"cannot read override `{token}`", field=token,
                            hint="write key.sub=value, --key.sub=value or --key.sub value (e.g. peft.rank=8)")
        key = key.replace("-", "_")
        if not _KEY.match(key):
            raise UserError(f"`{key}` is not a dotted config key", field=token, hint="e.g. optimizer.lr=1e-4")
        pairs.append((key, value))
        i += 1
    return pairs


def typed_value(model: type[BaseModel], path: str, raw: str) -> Any:
    """Type one override value by the schema: text stays text, everything else is read as YAML."""
    annotation = _field_at(model, path)
    if _takes_text(annotation):
        allows_none = type(None) in _unwrap(annotation)
        return None if allows_none and raw in ("null", "~", "none", "None") else raw
    # `${...}` would read as YAML flow syntax: park each one behind a plain token while parsing
    parked = [m.group(0) for m in _INTERPOLATION.finditer(raw)]
    text = raw
    for i, ref in enumerate(parked):
        text = text.replace(ref, f"__automodel_env_{i}__", 1)
    try:
        value = yaml.safe_load(text) if text != "" else None
    except yaml.YAMLError as exc:
        # a ReaderError (control characters) has no `problem`; its first line says what is wrong
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UserError(f"cannot read `{raw}` as a value: {problem}", field=path) from None
    return _unpark(value, parked)


def _unpark(value: Any, parked: list[str]) -> Any:
    if isinstance(value, str):
        for i, ref in enumerate(parked):
            value = value.replace(f"__automodel_env_{i}__", ref)
        return value
    if isinstance(value, list):
        return [_unpark(v, parked) for v in value]
    if isinstance(value, dict):
        return {k: _unpark(v, parked) for k, v in value.items()}
    return value


def set_path(data: dict[str, Any], path: str, value: Any) -> None:
    """Set a dotted path in nested dicts (numeric steps index existing lists), creating sections on the way."""
    parts = path.split(".")
    node: Any = data
    for part in parts[:-1]:
        if isinstance(node, list):
            node = node[int(part)]
            continue
        child = node.get(part)
        if not isinstance(child, (dict, list)):
            child = {}
            node[part] = child
        node = child
    if isinstance(node, list):
        node[int(parts[-1])] = value
    else:
        node[parts[-1]] = value


# ---------------------------------------------------------------- interpolation

def _interpolate_str(text: str, path: str, environ: Mapping[str, str]) -> tuple[str, bool]:
    """Resolve `${NAME}` / `${NAME,default}`; also say whether a secret-looking variable was used."""
    secret = False

    def replace(match: re.Match[str]) -> str:
        nonlocal secret
        escaped, name, default = match.groups()
        if escaped:
            return match.group(0)[1:]
        if name in environ:
            value = environ[name]
        elif default is not None:
            value = default
        else:
            raise UserError(f"environment variable {name} is not set", field=path,
                            hint=f"export {name}=... or give a default: ${{{name},value}}")
        secret = secret or is_secret_name(name)
        return value

    return _INTERPOLATION.sub(replace, text), secret


def interpolate(data: Any, environ: Mapping[str, str], path: str = "",
                secret_templates: dict[str, str] | None = None) -> Any:
    """Interpolate every string in nested data; record `path -> template` where a secret was used."""
    if isinstance(data, dict):
        return {k: interpolate(v, environ, f"{path}.{k}" if path else str(k), secret_templates)
                for k, v in data.items()}
    if isinstance(data, list):
        return [interpolate(v, environ, f"{path}.{i}", secret_templates) for i, v in enumerate(data)]
    if isinstance(data, str) and "${" in data:
        value, secret = _interpolate_str(data, path, environ)
        if secret and secret_templates is not None:
            secret_templates[path] = data
        return value
    return data


# ---------------------------------------------------------------- errors and the whole pipeline

def _dotted(loc: Sequence[Any]) -> str:
    return ".".join(str(part) for part in loc)


def _union_tag(part: Any) -> bool:
    """pydantic names the branch of a union it tried in the error path (`literal['all-linear']`,
    `tuple[str, ...]`); YAML paths never contain brackets."""
    return isinstance(part, str) and "[" in part


def _without_union_noise(errors: list[Any]) -> list[Any]:
    """A value no union branch accepts fails once per branch; a literal branch (`all-linear`) says less
    than the structured one, so it is dropped when another branch failed at the same field."""
    def field(err: Any) -> tuple[Any, ...]:  # the path up to the first union branch tag
        loc = err["loc"]
        return tuple(loc[: next((i for i, p in enumerate(loc) if _union_tag(p)), len(loc))])

    tagged = [e for e in errors if any(_union_tag(p) for p in e["loc"])]
    structured = {field(e) for e in tagged if e["type"] != "literal_error"}
    return [
        {**err, "loc": tuple(p for p in err["loc"] if not _union_tag(p))}
        for err in errors
        if not (err in tagged and err["type"] == "literal_error" and field(err) in structured)
    ]


def validation_error(exc: ValidationError) -> UserError:
    """Pydantic's errors as one UserError: one line per problem, each naming its dotted YAML path."""
    lines = []
    errors = _without_union_noise(exc.errors())
    for err in errors:
        ctx = err.get("ctx") or {}
        if err["type"] == "config_rule":
            path = _dotted([*err["loc"], ctx["path"]])
            message = ctx["message"]
        else:
            path = _dotted(err["loc"]) or "(top level)"
            message = err["msg"].removeprefix("Value error, ")
            if err["type"] not in ("missing",) and not isinstance(err.get("input"), (dict, list)):
                message += f" (got {err.get('input')!r})"
        lines.append((path, message))
    if len(lines) == 1:  # a cross-field rule's message already says what to change
        rule_only = errors[0]["type"] == "config_rule"
        return UserError(lines[0][1], field=lines[0][0],
                         hint=None if rule_only else "see `automodel config schema` for every field")
    body = "\n".join(f"  {path}: {message}" for path, message in lines)
    return UserError(f"{len(lines)} problems in the config:\n{body}",
                     hint="see `automodel config schema` for every field")


def build_config_data(model: type[BaseModel], data: Mapping[str, Any], overrides: Sequence[str],
                      environ: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """YAML data + overrides -> interpolated data ready for `model.model_validate`, and the secret templates."""
    merged: dict[str, Any] = copy.deepcopy(dict(data))
    check_keys(model, merged)
    for path, raw in split_overrides(overrides):
        set_path(merged, path, typed_value(model, path, raw))
    check_keys(model, merged)
    secret_templates: dict[str, str] = {}
    return interpolate(merged, environ, secret_templates=secret_templates), secret_templates


def validate(model: type[BaseModel], data: Mapping[str, Any]) -> BaseModel:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc) from None

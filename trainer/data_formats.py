"""The data column mappings of a training config: how one dataset row becomes a prompt and an answer.

`InstructionFormat`, `CompletionFormat`, `ChatFormat` and `ImageTextFormat` (task vlm) are the
`data.instruction|completion|chat|image_text` sections of `TrainConfig` (trainer/config.py); the task
adapters call their `prompt`/`answer`/`completion` methods on each row. Column paths (`answers.text.0`)
step into nested dicts and lists, and into JSON strings (`ground_truth.gt_parse`). Also home of the
`Section` base and `rule` error every config section uses (torch-free).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from automodel.catalog.errors import UserError

# A column path: a column name, then `.key` or `.0` steps into nested dicts/lists (e.g. `answers.text.0`).
_COLUMN_PATH = re.compile(r"^[A-Za-z_][\w\-]*(\.[\w\-]+)*$")
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")


def rule(path: str, message: str) -> PydanticCustomError:
    """A validation failure that carries the path (relative to the model that raised it)."""
    return PydanticCustomError("config_rule", "{path}: {message}", {"path": path, "message": message})


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def column_value(row: Mapping[str, object], path: str) -> object:
    """Follow a column path (`answers.text.0`) into one dataset row."""
    value: object = row
    for step in path.split("."):
        if isinstance(value, str) and value[:1] in "{[":  # a JSON string column (CORD-v2's ground_truth)
            value = _parse_json(value, path)
        if isinstance(value, Mapping) and step in value:
            value = value[step]
        elif isinstance(value, Sequence) and not isinstance(value, str) and step.lstrip("-").isdigit():
            value = value[int(step)]
        else:
            raise UserError(f"column path `{path}` has no `{step}` in this row", field="data",
                            hint=f"the row's columns are {sorted(row)}")
    return value


def _parse_json(text: str, path: str) -> object:
    import json

    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise UserError(f"column path `{path}` steps into a string that is not JSON ({err.msg})", field="data") from None


def _check_column(value: str) -> str:
    if not _COLUMN_PATH.match(value):
        raise ValueError(f"`{value}` is not a column path (a column name, then `.key` or `.0` steps)")
    return value


ColumnPath = Annotated[str, AfterValidator(_check_column)]


def _check_placeholders(template: str) -> str:
    for name in _PLACEHOLDER.findall(template):
        if not _COLUMN_PATH.match(name):
            raise ValueError(f"placeholder `{{{name}}}` is not a column path (no format specs or expressions)")
    return template


def _pick(row: Mapping[str, object], column: str, index_column: str | None) -> str:
    value = column_value(row, column)
    if index_column is not None:
        index = column_value(row, index_column)
        if not isinstance(value, Sequence) or isinstance(value, str):
            raise UserError(f"`{column}` is not a list, so `{index_column}` cannot index it", field="data")
        value = value[int(index)]  # type: ignore[call-overload]
    return str(value)


class _Templated(Section):
    """A mapping whose `prompt_template` names columns in `{braces}` (checked once, filled per row)."""

    prompt_template: str

    @field_validator("prompt_template")
    @classmethod
    def _placeholders_are_columns(cls, value: str) -> str:
        return _check_placeholders(value)

    def prompt(self, row: Mapping[str, object]) -> str:
        return _PLACEHOLDER.sub(lambda m: str(column_value(row, m.group(1))), self.prompt_template)


class InstructionFormat(_Templated):
    """Prompt from a template over columns, answer from one column."""

    prompt_template: str = Field(
        description="Prompt text with `{column}` placeholders (column paths such as `{answers.text.0}` allowed), "
        "e.g. `Context: {context}\\nQuestion: {question}\\nAnswer: `.",
    )
    answer_column: ColumnPath = Field(description="Column path holding the answer, e.g. `answers.text.0` for SQuAD.")
    answer_index_column: ColumnPath | None = Field(
        None, description="When set, `answer_column` is a list and this column holds the index of the answer in it."
    )

    def answer(self, row: Mapping[str, object]) -> str:
        return _pick(row, self.answer_column, self.answer_index_column)


class CompletionFormat(Section):
    """Either one `text_column` (loss on all of it) or a prompt and a completion column."""

    text_column: ColumnPath | None = Field(None, description="Column with the whole training text (no prompt/answer split).")
    prompt_column: ColumnPath | None = Field(None, description="Column path with the prompt.")
    completion_column: ColumnPath | None = Field(None, description="Column path with the completion (or a list of them).")
    completion_index_column: ColumnPath | None = Field(
        None, description="When set, `completion_column` is a list and this column holds the index to train on "
        "(HellaSwag: `endings` indexed by `label`).",
    )
    separator: str = Field("", description="Text put between prompt and completion (e.g. a space).")

    @model_validator(mode="after")
    def _not_both_layouts(self) -> CompletionFormat:
        if self.text_column is not None and (self.prompt_column or self.completion_column):
            raise rule("text_column", "give either text_column or prompt_column + completion_column, not both")
        return self

    @model_validator(mode="after")
    def _a_whole_layout(self) -> CompletionFormat:
        if self.text_column is None and not (self.prompt_column and self.completion_column):
            raise rule("prompt_column", "give prompt_column and completion_column (or text_column alone)")
        return self

    @model_validator(mode="after")
    def _index_needs_list(self) -> CompletionFormat:
        if self.completion_index_column is not None and self.completion_column is None:
            raise rule("completion_index_column", "needs completion_column (the list it indexes)")
        return self

    def prompt(self, row: Mapping[str, object]) -> str:
        """The un-trained part ('' for text_column)."""
        return "" if self.prompt_column is None else str(column_value(row, self.prompt_column)) + self.separator

    def completion(self, row: Mapping[str, object]) -> str:
        if self.text_column is not None:
            return str(column_value(row, self.text_column))
        assert self.completion_column is not None  # guaranteed by _a_whole_layout
        return _pick(row, self.completion_column, self.completion_index_column)


class ChatFormat(Section):
    """A list of {role, content} messages, rendered with the tokenizer's chat template."""

    messages_column: ColumnPath = Field("messages", description="Column with the list of {role, content} messages.")
    images_column: ColumnPath = Field(
        "images", description="task vlm, TRL form: column with the row's images (paths relative to the data file, "
        "bytes or images), taken in order by `{\"type\": \"image\"}` content items that carry no image of their own.",
    )

class AudioFormat(Section):
    """Speech rows (task asr): an audio column (a path, HF Audio bytes/path, or samples) and a transcript."""

    audio_column: ColumnPath = Field("audio", description="Column with the audio: a file path relative to the data "
                                     "file, an HF `Audio` value (read undecoded: bytes or path), or "
                                     "{array, sampling_rate}.")
    text_column: ColumnPath = Field("text", description="Column with the transcript (the translation for "
                                    "data.asr_task=translate).")
    sampling_rate: int | None = Field(
        None, ge=1, description="Rate in Hz of raw sample arrays that do not state theirs; files and HF Audio "
        "values carry their own rate and are resampled to the model's.",
    )


class ImageTextFormat(_Templated):
    """task vlm, column rows: image(s) from one column, a prompt template over columns, the answer from one column."""

    image_column: ColumnPath = Field(
        description="Column with the image: a path relative to the data file, bytes, an HF Image, or a list of them."
    )
    prompt_template: str = Field(
        "Describe the image.", description="The user's text after the image, with `{column}` placeholders, e.g. "
        "`{question}` for VQA data.",
    )
    answer_column: ColumnPath = Field(
        description="Column path with the assistant's answer; a dict or list is written as compact JSON, and a path "
        "may step into a JSON string (CORD-v2: `ground_truth.gt_parse`).",
    )
    system_prompt: str | None = Field(None, description="An optional system message before the user turn.")

    def answer(self, row: Mapping[str, object]) -> str:
        import json

        value = column_value(row, self.answer_column)
        if isinstance(value, Mapping | list):
            return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
        return str(value)


def check_row(spec: Section, row: Mapping[str, object], where: str, section: str) -> None:
    """Do the column lookups `spec` does on one row (no tokenizer): a missing column raises a UserError naming
    the config field (`section` is `data.instruction`, ...) and the row (`where`: trainer/data.row_label). `validate` and the wizard run it on
    a local file's first rows, so a misnamed column stops them, not the run minutes later."""
    lookups: list[tuple[str, object]]
    if isinstance(spec, ChatFormat):
        lookups = [("messages_column", lambda: column_value(row, spec.messages_column))]
    elif isinstance(spec, InstructionFormat):
        lookups = [("prompt_template", lambda: spec.prompt(row)), ("answer_column", lambda: spec.answer(row))]
    elif isinstance(spec, CompletionFormat):
        lookups = [("prompt_column", lambda: spec.prompt(row)), ("completion_column", lambda: spec.completion(row))]
    elif isinstance(spec, AudioFormat):
        lookups = [("audio_column", lambda: column_value(row, spec.audio_column)),
                   ("text_column", lambda: column_value(row, spec.text_column))]
    else:
        return
    for name, lookup in lookups:
        try:
            lookup()  # type: ignore[operator]
        except UserError as err:
            raise UserError(f"{where}: {err.message}", field=f"{section}.{name}", hint=err.hint) from None
        except (IndexError, ValueError, TypeError) as err:
            raise UserError(f"{where}: {err}", field=f"{section}.{name}") from None

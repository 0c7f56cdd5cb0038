"""The `data` section of the training config (torch-free): where the rows come from, which columns a
format reads (the mappings themselves are trainer/data_formats.py), the per-task data limits (vlm: images
and pixels; asr: language, task, clip seconds), packing, answer-only loss and the validation split.
Every rule is one validator naming the YAML path it checks (trainer/config.py says how)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from automodel.trainer.data import is_local_source
from automodel.trainer.data_formats import (
    AudioFormat,
    ChatFormat,
    CompletionFormat,
    ImageTextFormat,
    InstructionFormat,
    Section,
    rule,
)

# What `recommend --write-config` writes where the user's data goes (shaped like an HF dataset name, so the
# config validates as written); validate and finetune refuse any source that contains PLACEHOLDER.
PLACEHOLDER = "REPLACE_ME"
PLACEHOLDER_DATASET = f"{PLACEHOLDER}/your-dataset"


class ValidationData(Section):
    """Held-out data for the periodic validation loss."""

    source: str | None = Field(
        None, description="Local file or HF dataset name; default: the training `data.source` (then set `split`)."
    )
    split: str | None = Field(None, description="HF dataset split, e.g. `validation`; not used with a local file.")
    num_samples: int | None = Field(None, ge=1, description="Use at most this many validation samples.")
    exact_match: bool = Field(
        False, description="task vlm: also generate each validation answer greedily and report `val_exact_match`, "
        "the fraction equal to the reference (one forward per generated token: costly on long answers).",
    )

    @model_validator(mode="after")
    def _split_for_local(self) -> ValidationData:
        if self.source is not None and is_local_source(self.source) and self.split is not None:
            raise rule("split", "a local file is a single split; remove split")
        return self


class DataConfig(Section):
    source: str = Field(description="Local .jsonl/.json/.parquet/.csv file, or an HF dataset name (e.g. `rajpurkar/squad`).")
    split: str | None = Field(None, description="HF dataset split (the engine uses `train` when unset); not used with "
                              "a local file.")
    subset: str | None = Field(None, description="HF dataset configuration name, if the dataset has several.")
    format: Literal["instruction", "completion", "chat", "audio", "image_text"] = Field(
        description="instruction: prompt template + answer column; completion: prompt/completion (or text) columns; "
        "chat: messages rendered with the tokenizer's chat template (task vlm: multimodal messages); audio: speech "
        "clips + transcripts (task asr); image_text (task vlm): an image column, a prompt template and an answer "
        "column.",
    )
    instruction: InstructionFormat | None = Field(None, description="Column mapping for format=instruction.")
    completion: CompletionFormat | None = Field(None, description="Column mapping for format=completion.")
    chat: ChatFormat | None = Field(None, description="Column mapping for format=chat (default: a `messages` column).")
    audio: AudioFormat | None = Field(
        None, description="Column mapping for format=audio (default: `audio` and `text` columns)."
    )
    language: str | None = Field(
        None, description="Whisper: language of the audio as a name or code (`english`, `en`), put in the decoder "
        "prefix; none: no language token. CTC models ignore it.",
    )
    asr_task: Literal["transcribe", "translate"] = Field(
        "transcribe", description="Whisper: transcribe (text in the spoken language) or translate (English text); "
        "CTC models only transcribe.",
    )
    min_seconds: float = Field(0.0, ge=0, description="Drop clips shorter than this many seconds (counted and printed).")
    max_seconds: float | None = Field(
        None, gt=0, description="Drop clips longer than this many seconds; Whisper also drops clips longer than its "
        "30 s window (the feature extractor's chunk_length).",
    )
    image_text: ImageTextFormat | None = Field(None, description="Column mapping for format=image_text (task vlm).")
    max_seq_len: int = Field(2048, ge=8, description="Tokens per sequence; longer samples are truncated (asr: "
                             "transcripts of more label tokens than this or the decoder's positions are dropped; vlm: "
                             "samples are dropped and counted, never cut through their image tokens).")
    max_images: int | None = Field(None, ge=1, description="task vlm: at most this many images per sample; samples "
                                   "with more are dropped and counted. none: no limit.")
    max_pixels: int | None = Field(None, ge=1, description="task vlm, processors that resize by pixel count "
                                   "(Qwen2-VL, Qwen2.5-VL): resize larger images down to about this many pixels; "
                                   "none: the processor's own setting.")
    min_pixels: int | None = Field(None, ge=1, description="task vlm, as max_pixels: resize smaller images up to "
                                   "about this many pixels; none: the processor's own setting.")
    packing: bool = Field(False, description="Concatenate samples into full max_seq_len rows (no padding waste).")
    answer_only_loss: bool = Field(
        True, description="Train only on answer/completion/assistant tokens (the prompt is masked out of the loss)."
    )
    validation: ValidationData | None = Field(None, description="Held-out data for the validation loss; none: skip.")
    num_samples: int | None = Field(None, ge=1, description="Use at most this many training samples.")

    @property
    def is_local(self) -> bool:
        return is_local_source(self.source)

    @model_validator(mode="after")
    def _mapping_for_format(self) -> DataConfig:
        if self.format in ("instruction", "completion", "image_text") and getattr(self, self.format) is None:
            raise rule(self.format, f"data.format is {self.format}: give the data.{self.format} column mapping")
        return self

    @model_validator(mode="after")
    def _no_foreign_mapping(self) -> DataConfig:
        for other in ("instruction", "completion", "chat", "audio", "image_text"):
            if other != self.format and getattr(self, other) is not None:
                raise rule(other, f"data.format is {self.format}; remove data.{other} or set data.format={other}")
        return self

    @model_validator(mode="after")
    def _split_for_local(self) -> DataConfig:
        if self.is_local and (self.split is not None or self.subset is not None):
            raise rule("split" if self.split is not None else "subset",
                       "a local file is one split with no subsets; remove it")
        return self

    @model_validator(mode="after")
    def _answer_only_needs_prompt(self) -> DataConfig:
        if self.answer_only_loss and self.completion is not None and self.completion.text_column is not None:
            raise rule("answer_only_loss", "completion.text_column has no prompt to mask; set data.answer_only_loss=false")
        return self

    @model_validator(mode="after")
    def _pixel_range(self) -> DataConfig:
        if self.min_pixels is not None and self.max_pixels is not None and self.min_pixels > self.max_pixels:
            raise rule("min_pixels", f"{self.min_pixels} is more than data.max_pixels {self.max_pixels}")
        return self

    @model_validator(mode="after")
    def _validation_differs(self) -> DataConfig:
        v = self.validation
        if v is not None and (v.source or self.source) == self.source and (v.split or "train") == (self.split or "train"):
            raise rule("validation", "validation would read the training data; give validation.split or .source")
        return self

    @model_validator(mode="after")
    def _seconds_in_order(self) -> DataConfig:
        if self.max_seconds is not None and self.max_seconds <= self.min_seconds:
            raise rule("max_seconds", f"{self.max_seconds} is not above data.min_seconds {self.min_seconds}")
        return self

    def format_spec(self) -> InstructionFormat | CompletionFormat | ChatFormat | AudioFormat | ImageTextFormat:
        """The column mapping of the chosen format (chat and audio fall back to their defaults)."""
        spec = getattr(self, self.format)
        if spec is None:
            return AudioFormat() if self.format == "audio" else ChatFormat()
        return spec

    def check_columns(self, rows: int = 3) -> None:
        """The first `rows` rows of a local `source` have the columns `format` reads (a UserError naming the
        field and the row otherwise). A Hub dataset is not opened here (that may download)."""
        from automodel.trainer.data import is_local_source, read_rows, row_label
        from automodel.trainer.data_formats import check_row

        if not is_local_source(self.source):
            return
        for index, row in enumerate(read_rows(self.source, split=None, field="data.source", limit=rows)):
            check_row(self.format_spec(), row, row_label(index, self.source), f"data.{self.format}")

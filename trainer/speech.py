"""Speech samples for the asr task: the processor of a Whisper or CTC model, and rows -> checked samples.

Two model kinds, told apart by the model's config: `whisper` (encoder-decoder, AutoModelForSpeechSeq2Seq)
and `ctc` (Wav2Vec2, HuBERT, WavLM ... with a CTC head, AutoModelForCTC).

- Whisper labels: the decoder prefix `<|startoftranscript|> [<|lang|>] <|transcribe|>|<|translate|>
  <|notimestamps|>` from `data.language` and `data.asr_task` (no forced decoder ids: the prefix is part
  of every training row and of every generation's start), then the transcript's tokens and
  `<|endoftext|>`. The decoder input is that sequence without its last token; the targets are the
  transcript and `<|endoftext|>` (the prefix tokens are given, never predicted). A row whose decoder input
  would exceed the decoder's positions (448 for every Whisper) or `data.max_seq_len` is dropped and counted.
- CTC labels: the transcript in the vocabulary's letter case, one id per character (`|` between words).
  A row with more labels than the encoder has frames cannot be aligned; it is dropped and counted.

Clips outside [data.min_seconds, data.max_seconds] (and, for Whisper, longer than its window) are dropped
and counted. `sample_length` is the encoder frames the clip's audio covers (about 50 a second for both
kinds), which the engine buckets batches by and counts as throughput.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from automodel.catalog.errors import UserError
from automodel.trainer.audio import AudioRef, audio_ref
from automodel.trainer.config import DataConfig
from automodel.trainer.data import IGNORE_INDEX, log, read_split, row_label
from automodel.trainer.data_formats import AudioFormat, column_value

FRAMES_PER_SECOND = 50  # Whisper: 100 mel frames/s halved by its conv; Wav2Vec2: 16 kHz / stride 320


@dataclass
class SpeechProcessor:
    """A model's HF processor plus what the adapter needs from its config. `save_pretrained` saves the
    processor, so the export writes it beside the adapter or the merged model."""

    processor: Any
    kind: Literal["whisper", "ctc"]
    rate: int  # the feature extractor's sampling rate
    max_positions: int  # Whisper: decoder positions; CTC: unused (0)
    vocab_size: int  # the model's output size

    @property
    def tokenizer(self) -> Any:
        return self.processor.tokenizer

    @property
    def window_seconds(self) -> float | None:
        """Whisper pads or cuts every clip to this window (30 s); CTC models take any length."""
        chunk = getattr(self.processor.feature_extractor, "chunk_length", None)
        return float(chunk) if self.kind == "whisper" and chunk else None

    def save_pretrained(self, path: str) -> None:
        self.processor.save_pretrained(path)


@dataclass(frozen=True)
class SpeechSample:
    """One clip and its targets. Whisper: `decoder_input_ids` and `labels` aligned (same length, prefix
    targets ignored); CTC: `labels` are the character ids and `decoder_input_ids` is empty."""

    audio: AudioRef
    text: str
    labels: tuple[int, ...]
    frames: int
    decoder_input_ids: tuple[int, ...] = ()
    prefix_len: int = 0


def model_kind(config: dict[str, Any]) -> Literal["whisper", "ctc"]:
    """`whisper` or `ctc` from a config dict; any other model is a UserError naming model.name."""
    from transformers import AutoModelForCTC
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    model_type = str(config.get("model_type", ""))
    if model_type == "whisper":
        return "whisper"
    architectures = [str(a) for a in config.get("architectures") or []]
    if any(a.endswith("ForCTC") for a in architectures) or (
        model_type in CONFIG_MAPPING and CONFIG_MAPPING[model_type] in AutoModelForCTC._model_mapping
    ):
        return "ctc"
    raise UserError(f"task asr trains Whisper or CTC speech models; {model_type or 'this model'} is neither",
                    field="model.name", hint="use e.g. openai/whisper-small or facebook/wav2vec2-base-960h")


def make_processor(processor: Any, config: dict[str, Any]) -> SpeechProcessor:
    kind = model_kind(config)
    extractor = getattr(processor, "feature_extractor", None)
    if extractor is None or getattr(processor, "tokenizer", None) is None:
        raise UserError("the model's processor has no feature extractor and tokenizer", field="model.name",
                        hint="give a model directory with preprocessor and tokenizer files (save a processor there)")
    positions = int(config.get("max_target_positions") or 448) if kind == "whisper" else 0
    return SpeechProcessor(processor, kind, int(extractor.sampling_rate), positions, int(config["vocab_size"]))


def build_samples(data: DataConfig, sp: SpeechProcessor, *, validation: bool) -> list[SpeechSample]:
    """Read, check and label the rows of one split; dropped rows are counted and printed (rank 0)."""
    source, rows = read_split(data, validation=validation)
    local = Path(source).expanduser()
    base_dir = local.parent if local.is_file() else None
    spec = data.format_spec()
    assert isinstance(spec, AudioFormat)
    prefix = whisper_prefix(sp, data) if sp.kind == "whisper" else []
    samples, dropped = [], Counter[str]()
    for index, row in enumerate(rows):
        where = row_label(index, source)
        audio = _column(row, spec.audio_column, where, "data.audio.audio_column")
        text = _column(row, spec.text_column, where, "data.audio.text_column")
        if not isinstance(text, str) or not text.strip():
            raise UserError(f"{where}: the transcript `{spec.text_column}` is empty", field="data.audio.text_column",
                            hint="remove the row or give its transcript")
        ref = audio_ref(audio, base_dir=base_dir, where=where, field="data.audio.audio_column",
                        sampling_rate=spec.sampling_rate)
        reason = _duration_rule(ref.seconds, data, sp)
        if reason is None:
            sample = (_whisper_sample(ref, text, prefix, sp, data.max_seq_len) if sp.kind == "whisper"
                      else _ctc_sample(ref, text, sp))
            reason = sample if isinstance(sample, str) else None
        if reason is not None:
            dropped[reason] += 1
            continue
        samples.append(sample)
    if dropped:
        detail = ", ".join(f"{n} {why}" for why, n in dropped.items())
        log(f"{source}: dropped {sum(dropped.values())} of {len(rows)} rows ({detail})")
    if not samples:
        raise UserError(f"no row of {source} is left to train on ({dict(dropped)})", field="data.max_seconds",
                        hint="widen data.min_seconds/max_seconds, or check the transcripts' length")
    return samples


def _column(row: Any, path: str, where: str, field: str) -> Any:
    try:
        return column_value(row, path)
    except UserError as err:
        raise UserError(f"{where}: {err.message}", field=field, hint=err.hint) from None


def _duration_rule(seconds: float, data: DataConfig, sp: SpeechProcessor) -> str | None:
    if seconds < data.min_seconds:
        return f"shorter than data.min_seconds {data.min_seconds}"
    if data.max_seconds is not None and seconds > data.max_seconds:
        return f"longer than data.max_seconds {data.max_seconds}"
    window = sp.window_seconds
    if window is not None and seconds > window:
        return f"longer than Whisper's {window:g} s window"
    return None


def whisper_prefix(sp: SpeechProcessor, data: DataConfig) -> list[int]:
    """`<|startoftranscript|> [<|lang|>] <|task|> <|notimestamps|>` ids; a language the tokenizer has no
    token for is a UserError naming data.language."""
    from transformers.models.whisper.tokenization_whisper import TO_LANGUAGE_CODE

    tokens = ["<|startoftranscript|>"]
    if data.language is not None:
        name = data.language.lower()
        code = TO_LANGUAGE_CODE.get(name, name)
        if code not in TO_LANGUAGE_CODE.values():
            raise UserError(f"Whisper has no language {data.language!r}", field="data.language",
                            hint="a language name or code Whisper knows, e.g. english or en, de, fr")
        tokens.append(f"<|{code}|>")
    tokens += [f"<|{data.asr_task}|>", "<|notimestamps|>"]
    ids = sp.tokenizer.convert_tokens_to_ids(tokens)
    missing = [t for t, i in zip(tokens, ids, strict=True) if i is None or i == sp.tokenizer.unk_token_id]
    if missing:
        raise UserError(f"the tokenizer has no {', '.join(missing)} token", field="data.language",
                        hint="use a Whisper tokenizer with its special tokens (or another data.language)")
    return list(ids)


def _whisper_sample(ref: AudioRef, text: str, prefix: list[int], sp: SpeechProcessor,
                    max_seq_len: int) -> SpeechSample | str:
    tok = sp.tokenizer
    ids = prefix + tok(text.strip(), add_special_tokens=False).input_ids + [tok.eos_token_id]
    cap = min(sp.max_positions, max_seq_len)
    if len(ids) - 1 > cap:
        return f"with transcripts over {cap} decoder tokens"
    labels = [IGNORE_INDEX] * (len(prefix) - 1) + ids[len(prefix):]
    return SpeechSample(ref, text, tuple(labels), _frames(ref, sp), tuple(ids[:-1]), len(prefix))


def _ctc_sample(ref: AudioRef, text: str, sp: SpeechProcessor) -> SpeechSample | str:
    ids = sp.tokenizer(ctc_text(text, sp.tokenizer)).input_ids
    if max(ids) >= sp.vocab_size:
        raise UserError(f"the tokenizer's vocabulary ({len(sp.tokenizer)}) is larger than the model's CTC head "
                        f"({sp.vocab_size})", field="model.name", hint="use the processor the model was built for")
    frames = _frames(ref, sp)
    if len(ids) > frames:
        return "with more characters than audio frames"
    return SpeechSample(ref, text, tuple(ids), frames)


def ctc_text(text: str, tokenizer: Any) -> str:
    """The transcript in the letter case the character vocabulary uses (LibriSpeech models: upper)."""
    letters = [t for t in tokenizer.get_vocab() if len(t) == 1 and t.isalpha()]
    text = " ".join(text.split())
    if letters and all(t.isupper() for t in letters):
        return text.upper()
    if letters and all(t.islower() for t in letters):
        return text.lower()
    return text


def _frames(ref: AudioRef, sp: SpeechProcessor) -> int:
    seconds = min(ref.seconds, sp.window_seconds or ref.seconds)
    return max(1, int(seconds * FRAMES_PER_SECOND))

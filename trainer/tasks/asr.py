"""The ASR task adapter: Whisper (encoder-decoder) and CTC speech models (Wav2Vec2, HuBERT) on one engine.

Implements `automodel.trainer.tasks.TaskAdapter`. Samples and labels: trainer/speech.py; audio decoding
and resampling: trainer/audio.py; WER/CER: trainer/wer.py.

Loss normalisation: `forward_loss` returns a sum over target tokens and `count_targets` their number,
and the engine divides the global sum by the global count. For Whisper that is token cross-entropy.
For CTC each clip's loss is a negative log-likelihood of its whole label sequence; summing clips and
dividing by the total number of labels gives the loss per target character over the global batch, which
is what `ctc_loss(reduction="mean")` computes for one batch of equal-length labels, and which (unlike a
mean of per-clip means) does not depend on how the global batch is split into micro batches or ranks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from automodel.catalog.errors import UserError
from automodel.trainer.config import DataConfig
from automodel.trainer.data import IGNORE_INDEX
from automodel.trainer.speech import SpeechProcessor, SpeechSample, make_processor, model_kind
from automodel.trainer.speech import build_samples as build_speech_samples

if TYPE_CHECKING:
    import torch
    from torch import nn

EVAL_BATCH = 8  # clips per validation forward/generation


def load_processor(source: str, *, trust_remote_code: bool = False) -> SpeechProcessor:
    """The model's AutoProcessor (feature extractor + tokenizer) and config facts (offline-safe)."""
    from transformers import AutoConfig, AutoProcessor

    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code).to_dict()
        processor = AutoProcessor.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError) as err:
        raise UserError(f"cannot load a processor for {source!r}: {err}".splitlines()[0], field="model.name",
                        hint="give a local model directory with processor files, or go online once to cache the "
                        "model") from None
    return make_processor(processor, config)


def build_samples(data: DataConfig, processor: SpeechProcessor, *, validation: bool, seed: int) -> list[SpeechSample]:
    """Checked clips with their labels (the order is the file's; the engine shuffles and buckets)."""
    return build_speech_samples(data, processor, validation=validation)


def sample_length(sample: SpeechSample) -> int:
    return sample.frames


def collate(samples: list[SpeechSample], processor: SpeechProcessor) -> dict[str, torch.Tensor]:
    """Decode and resample the clips, extract features, pad labels. Whisper: `input_features` (log-mel,
    padded to its window), `decoder_input_ids`, `labels`; CTC: `input_values` (+ `attention_mask` when the
    feature extractor makes one), `audio_lengths` (samples, for the CTC input lengths), `labels`."""
    import torch

    from automodel.trainer.audio import load

    arrays = [load(s.audio, processor.rate) for s in samples]
    extractor = processor.processor.feature_extractor
    width = max(len(s.labels) for s in samples)
    labels = torch.full((len(samples), width), IGNORE_INDEX, dtype=torch.long)
    for row, sample in enumerate(samples):
        labels[row, : len(sample.labels)] = torch.tensor(sample.labels)
    if processor.kind == "whisper":
        features = extractor(arrays, sampling_rate=processor.rate, return_tensors="pt").input_features
        decoder = torch.full((len(samples), width), processor.tokenizer.eos_token_id, dtype=torch.long)
        for row, sample in enumerate(samples):
            decoder[row, : len(sample.decoder_input_ids)] = torch.tensor(sample.decoder_input_ids)
        return {"input_features": features, "decoder_input_ids": decoder, "labels": labels}
    features = extractor(arrays, sampling_rate=processor.rate, padding="longest", return_tensors="pt",
                         return_attention_mask=True)
    batch = {"input_values": features.input_values, "labels": labels,
             "audio_lengths": torch.tensor([len(a) for a in arrays], dtype=torch.long)}
    if getattr(extractor, "return_attention_mask", False):  # models trained without one are fed none
        batch["attention_mask"] = features.attention_mask
    return batch


class SpeechModel:
    """`from_pretrained` dispatches on the checkpoint's config: AutoModelForSpeechSeq2Seq for Whisper,
    AutoModelForCTC for CTC models (the recipe loads every task's weights through `model_class()`)."""

    @staticmethod
    def from_pretrained(source: str, **kwargs: Any) -> nn.Module:
        from transformers import AutoConfig, AutoModelForCTC, AutoModelForSpeechSeq2Seq

        config = AutoConfig.from_pretrained(source, trust_remote_code=kwargs.get("trust_remote_code", False))
        kind = model_kind(config.to_dict())
        cls = AutoModelForSpeechSeq2Seq if kind == "whisper" else AutoModelForCTC
        return cls.from_pretrained(source, **kwargs)


def model_class() -> Any:
    return SpeechModel


def prepare_model(model: nn.Module, cfg: Any) -> None:
    """CTC: freeze the convolutional feature encoder (model.freeze_feature_encoder) and turn LayerDrop off:
    each rank would skip different layers, so FSDP2's per-layer collectives would not match (a hang) and
    N processes would not train like one. Whisper: no forced decoder ids (the prefix is in the data)."""
    config = model.config
    if config.model_type == "whisper":
        config.forced_decoder_ids = None
        generation = getattr(model, "generation_config", None)
        if generation is not None:
            generation.forced_decoder_ids = None
        return
    if hasattr(config, "layerdrop"):
        config.layerdrop = 0.0
    if cfg.model.freeze_feature_encoder and callable(getattr(model, "freeze_feature_encoder", None)):
        model.freeze_feature_encoder()


def count_targets(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Target tokens (Whisper) or target characters (CTC): the labels that are not padding."""
    return (batch["labels"] != IGNORE_INDEX).sum()


def forward_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Summed fp32 loss over the batch's targets (see the module docstring for CTC)."""
    import torch.nn.functional as F

    labels = batch["labels"]
    if "input_features" in batch:  # Whisper: labels are aligned with decoder_input_ids (no shift)
        logits = model(input_features=batch["input_features"], decoder_input_ids=batch["decoder_input_ids"],
                       use_cache=False).logits
        keep = labels != IGNORE_INDEX
        return F.cross_entropy(logits[keep].float(), labels[keep], reduction="sum")
    log_probs, lengths = _ctc_log_probs(model, batch)
    keep = labels != IGNORE_INDEX
    return F.ctc_loss(log_probs.transpose(0, 1), labels[keep], lengths, keep.sum(-1),
                      blank=_blank(model), reduction="sum", zero_infinity=True)


def _ctc_log_probs(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 log-probabilities (batch, frames, vocab) and each clip's valid frames."""
    from automodel.trainer.modeling import base_model

    inputs = {"input_values": batch["input_values"]}
    if "attention_mask" in batch:
        inputs["attention_mask"] = batch["attention_mask"]
    logits = model(**inputs).logits
    lengths = base_model(model)._get_feat_extract_output_lengths(batch["audio_lengths"]).long()
    return logits.float().log_softmax(-1), lengths.clamp(max=logits.shape[1])


def _blank(model: nn.Module) -> int:
    from automodel.trainer.modeling import base_model

    return int(base_model(model).config.pad_token_id or 0)


def evaluate_extra(model: nn.Module, processor: SpeechProcessor, samples: Sequence[SpeechSample], d: Any,
                   autocast: Any) -> dict[str, float]:
    """`val_wer` and `val_cer` over the validation clips: Whisper generates greedily from its prefix, CTC
    decodes greedily (best path, repeats merged, blanks dropped). Like the engine's `evaluate`, every rank
    runs the same number of forwards (FSDP2's all-gathers are collective): a rank without a chunk in a
    round repeats the last one and discards it, and every rank of a round decodes the same number of
    steps (the most any chunk of the round needs, known to all ranks) but keeps only as many tokens as its
    own chunk allows, so the hypotheses, hence WER, do not depend on the number of processes."""
    import torch

    from automodel.trainer import distributed
    from automodel.trainer.wer import error_counts, rates

    order = sorted(range(len(samples)), key=lambda i: samples[i].frames)
    chunks = [order[i : i + EVAL_BATCH] for i in range(0, len(order), EVAL_BATCH)]
    refs: list[str] = []
    hyps: list[str] = []
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for r, ids, counts in distributed.eval_rounds(chunks, d):
            chunk = [samples[i] for i in ids]
            batch = {k: v.to(d.device) for k, v in collate(chunk, processor).items()}
            with autocast:
                if processor.kind == "whisper":
                    # every rank decodes the round's most steps (collectives), each keeps its own chunk's
                    in_round = max(_decode_steps([samples[i] for i in c], processor)
                                   for c in chunks[r * d.world : (r + 1) * d.world])
                    texts = _generate(model, batch, chunk, processor, in_round, keep=_decode_steps(chunk, processor),
                                      stop_early=d.world == 1)
                else:
                    texts = _ctc_decode(model, batch, processor)
            if counts:
                refs += [s.text for s in chunk]
                hyps += texts
    model.train(was_training)
    totals = torch.tensor(error_counts(refs, hyps).as_list(), dtype=torch.float64, device=d.device)
    distributed.all_reduce_sum(totals, d)
    return rates(totals.tolist())


def _decode_steps(samples: Sequence[SpeechSample], processor: SpeechProcessor) -> int:
    """New tokens to generate for a chunk: room for 1.5x its longest reference (and `<|endoftext|>`), within
    the decoder's positions."""
    longest = max(len(s.decoder_input_ids) - s.prefix_len + 1 for s in samples)
    room = processor.max_positions - max(s.prefix_len for s in samples)
    return max(1, min(room, longest + longest // 2 + 2))


def _generate(model: nn.Module, batch: dict[str, torch.Tensor], chunk: Sequence[SpeechSample],
              processor: SpeechProcessor, steps: int, *, keep: int, stop_early: bool) -> list[str]:
    """Greedy decoding with the KV cache from each clip's prefix: `steps` forwards (or fewer once every clip
    has ended, with `stop_early`), of which the first `keep` tokens count, so a hypothesis does not depend on
    what the other ranks decode. Every call goes through the root model (so FSDP2 gathers its root
    parameters); the encoder runs once, on the first call."""
    import torch
    from transformers.modeling_outputs import BaseModelOutput

    eos = processor.tokenizer.eos_token_id
    prefix = torch.tensor([s.decoder_input_ids[: s.prefix_len] for s in chunk], device=batch["labels"].device)
    out = model(input_features=batch["input_features"], decoder_input_ids=prefix, use_cache=True)
    encoded = BaseModelOutput(last_hidden_state=out.encoder_last_hidden_state)
    tokens = out.logits[:, -1].argmax(-1)
    generated, done = [tokens], tokens == eos
    for _ in range(steps - 1):
        if stop_early and bool(done.all()):
            break
        out = model(encoder_outputs=encoded, decoder_input_ids=tokens[:, None], cache=out.cache, use_cache=True)
        tokens = out.logits[:, -1].argmax(-1)
        generated.append(tokens)
        done |= tokens == eos
    texts = []
    for row in torch.stack(generated, dim=1)[:, :keep].tolist():
        row = row[: row.index(eos)] if eos in row else row
        texts.append(processor.tokenizer.decode(row, skip_special_tokens=True))
    return texts


def _ctc_decode(model: nn.Module, batch: dict[str, torch.Tensor], processor: SpeechProcessor) -> list[str]:
    log_probs, lengths = _ctc_log_probs(model, batch)
    best = log_probs.argmax(-1)
    return [processor.tokenizer.decode(best[row, : int(n)].tolist()) for row, n in enumerate(lengths)]

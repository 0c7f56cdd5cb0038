"""Make the tiny offline ASR examples' models: a tiny Whisper and a tiny Wav2Vec2 CTC, config + processor.

No weights (the examples use `model.init: random`); the processors are built from scratch:
- whisper/: a byte-level BPE tokenizer trained on the digit words, with Whisper's special tokens
  (`<|startoftranscript|>`, every language token in Whisper's order, `<|transcribe|>`, `<|notimestamps|>`,
  ...), and a WhisperFeatureExtractor with 40 mel bins over a 2 s window (the clips are under 2 s), so
  the encoder sees 100 positions instead of 1500;
- ctc/: a character vocabulary (a-z, apostrophe, `|` between words) for Wav2Vec2CTCTokenizer and a
  Wav2Vec2FeatureExtractor at 16 kHz.
Both models are 2 layers of width 64, initialised wider than usual (0.1), without dropout, LayerDrop or SpecAugment (so one process and two
match step for step). Rerun to regenerate (the clips come from make_clips.py):

    python examples/asr/tiny/make_assets.py [--out examples/asr/tiny]

The tests build their own copies with these functions.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
CTC_SPECIAL = ("<pad>", "<s>", "</s>", "<unk>", "|")
CHUNK_SECONDS = 2
MEL_BINS = 40


def whisper_processor(words: tuple[str, ...] = WORDS) -> Any:
    """A WhisperProcessor with a tiny BPE vocabulary: `<|endoftext|>` is id 0, then the BPE tokens, then
    Whisper's specials in the order `WhisperTokenizer.prefix_tokens` expects (languages right after
    `<|startoftranscript|>`)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import WhisperFeatureExtractor, WhisperProcessor, WhisperTokenizer
    from transformers.models.whisper.tokenization_whisper import LANGUAGES

    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator([" ".join(words)] * 8 + list(words), trainer=trainer)
    model = json.loads(bpe.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split()) for m in model["merges"]]
    tokenizer = WhisperTokenizer(vocab=model["vocab"], merges=merges)
    specials = (["<|startoftranscript|>"] + [f"<|{code}|>" for code in LANGUAGES]
                + ["<|translate|>", "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", "<|nospeech|>",
                   "<|notimestamps|>"])
    tokenizer.add_special_tokens({"additional_special_tokens": specials})
    tokenizer.pad_token = "<|endoftext|>"
    extractor = WhisperFeatureExtractor(feature_size=MEL_BINS, chunk_length=CHUNK_SECONDS)
    return WhisperProcessor(feature_extractor=extractor, tokenizer=tokenizer)


def whisper_config(processor: Any, *, hidden: int = 64, layers: int = 2, heads: int = 4) -> dict[str, Any]:
    tok = processor.tokenizer
    eot, sot = tok.convert_tokens_to_ids(["<|endoftext|>", "<|startoftranscript|>"])
    return {
        "architectures": ["WhisperForConditionalGeneration"], "model_type": "whisper",
        "vocab_size": len(tok), "num_mel_bins": MEL_BINS, "d_model": hidden,
        "encoder_layers": layers, "decoder_layers": layers,
        "encoder_attention_heads": heads, "decoder_attention_heads": heads,
        "encoder_ffn_dim": hidden * 2, "decoder_ffn_dim": hidden * 2,
        # the encoder's two convolutions halve the feature frames: 2 s -> 200 frames -> 100 positions
        "max_source_positions": processor.feature_extractor.nb_max_frames // 2, "max_target_positions": 64,
        "dropout": 0.0, "attention_dropout": 0.0, "activation_dropout": 0.0,
        "pad_token_id": eot, "bos_token_id": eot, "eos_token_id": eot, "decoder_start_token_id": sot,
        "suppress_tokens": [], "begin_suppress_tokens": [], "tie_word_embeddings": True,
        # wider than the usual 0.02: from a random init the tiny model then learns to listen, not only to
        # predict the digit words' frequencies, within the example's 300 steps (val WER 0.83 -> 0.10 measured)
        "init_std": 0.1, "dtype": "float32",
    }


def ctc_processor(letters: str = "abcdefghijklmnopqrstuvwxyz'") -> Any:
    """A Wav2Vec2Processor with a character vocabulary (`<pad>` is the CTC blank, `|` the word delimiter)."""
    from transformers import Wav2Vec2CTCTokenizer, Wav2Vec2FeatureExtractor, Wav2Vec2Processor

    vocab = {token: i for i, token in enumerate(list(CTC_SPECIAL) + list(letters))}
    with tempfile.TemporaryDirectory() as tmp:
        vocab_file = Path(tmp) / "vocab.json"
        vocab_file.write_text(json.dumps(vocab))
        tokenizer = Wav2Vec2CTCTokenizer(str(vocab_file), word_delimiter_token="|")
    extractor = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0,
                                         do_normalize=True, return_attention_mask=True)
    return Wav2Vec2Processor(feature_extractor=extractor, tokenizer=tokenizer)


def ctc_config(processor: Any, *, hidden: int = 64, layers: int = 2, heads: int = 4) -> dict[str, Any]:
    return {
        "architectures": ["Wav2Vec2ForCTC"], "model_type": "wav2vec2",
        "vocab_size": len(processor.tokenizer), "pad_token_id": processor.tokenizer.pad_token_id,
        "hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": heads,
        "intermediate_size": hidden * 2,
        # the standard seven convolutions (stride 320: 50 frames a second), only narrower
        "conv_dim": [32] * 7, "conv_kernel": [10, 3, 3, 3, 3, 2, 2], "conv_stride": [5, 2, 2, 2, 2, 2, 2],
        "feat_extract_norm": "group", "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 4,
        "hidden_dropout": 0.0, "activation_dropout": 0.0, "attention_dropout": 0.0, "feat_proj_dropout": 0.0,
        "final_dropout": 0.0, "layerdrop": 0.0, "mask_time_prob": 0.0, "mask_feature_prob": 0.0,
        "ctc_loss_reduction": "mean", "ctc_zero_infinity": True, "dtype": "float32",
        # wider than the usual 0.02: from a random init, CTC then leaves its all-blank plateau within ~50 steps
        "initializer_range": 0.1,
    }


def write_model(out: Path, processor: Any, config: dict[str, Any]) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    processor.save_pretrained(str(out))
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return out


def write_assets(out: Path) -> None:
    whisper = whisper_processor()
    write_model(out / "whisper", whisper, whisper_config(whisper))
    ctc = ctc_processor()
    write_model(out / "ctc", ctc, ctc_config(ctc))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    args = parser.parse_args()
    write_assets(args.out)
    print(f"wrote tiny ASR models to {args.out}")


if __name__ == "__main__":
    main()

"""Make the tiny offline example's assets: a tiny Llama config, a byte-level BPE tokenizer and a dataset.

The task is learnable by a tiny model in a few hundred CPU steps, so the loss visibly falls: each row
asks to copy, reverse or sort a short list of letters. Everything is generated from a fixed seed and
committed, so `examples/llm/tiny_offline.yaml` trains without a network. Rerun to regenerate:

    python examples/llm/tiny/make_assets.py [--out examples/llm/tiny]

The functions are also used by the tests to build their own tiny models, tokenizers and data.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

LETTERS = "abcdefghijkl"
OPS = ("copy", "reverse", "sort")
SPECIAL = ("<pad>", "<s>", "</s>", "<unk>")
# A minimal chat template so the `chat` data format works with this tokenizer too.
CHAT_TEMPLATE = (
    "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant: {% endif %}"
)


def make_rows(n: int, seed: int) -> list[dict[str, str]]:
    """`n` rows of {"question", "input", "answer"}; deterministic for a seed."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        op = rng.choice(OPS)
        letters = [rng.choice(LETTERS) for _ in range(rng.randint(3, 7))]
        out = {"copy": letters, "reverse": letters[::-1], "sort": sorted(letters)}[op]
        rows.append({"question": op, "input": " ".join(letters), "answer": " ".join(out)})
    return rows


def make_tokenizer(texts: list[str], vocab_size: int = 320):
    """A byte-level BPE tokenizer trained on `texts`, wrapped as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_llama_config(vocab_size: int, hidden: int = 64, layers: int = 2, heads: int = 4) -> dict:
    """A Llama config small enough to train on a CPU in seconds (ids match the tokenizer's specials)."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": vocab_size,
        "hidden_size": hidden,
        "intermediate_size": hidden * 2,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": max(1, heads // 2),
        "max_position_embeddings": 256,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
        "initializer_range": 0.1,  # large enough that a frozen random head can express confident logits
        "tie_word_embeddings": False,
        "pad_token_id": SPECIAL.index("<pad>"),
        "bos_token_id": SPECIAL.index("<s>"),
        "eos_token_id": SPECIAL.index("</s>"),
        "dtype": "float32",
    }


def corpus(rows: list[dict[str, str]]) -> list[str]:
    """Texts the tokenizer is trained on: the rows plus the words the prompt templates and chat use."""
    extra = ["Question: Input: Answer: Context: user: assistant: system:", "\n### Instruction ###\n"]
    return extra + [f"Question: {r['question']}\nInput: {r['input']}\nAnswer: {r['answer']}" for r in rows]


def write_assets(out: Path, *, n_train: int = 2000, n_val: int = 128, seed: int = 0, hidden: int = 128,
                 layers: int = 2) -> None:
    """Write model/ (config.json + tokenizer, no weights: `model.init: random`) and data/{train,val}.jsonl."""
    (out / "model").mkdir(parents=True, exist_ok=True)
    (out / "data").mkdir(parents=True, exist_ok=True)
    train, val = make_rows(n_train, seed), make_rows(n_val, seed + 1)
    tok = make_tokenizer(corpus(train))
    tok.save_pretrained(out / "model")
    config = tiny_llama_config(len(tok), hidden=hidden, layers=layers)
    (out / "model" / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    for name, rows in (("train.jsonl", train), ("val.jsonl", val)):
        with open(out / "data" / name, "w") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    args = parser.parse_args()
    write_assets(args.out)
    print(f"wrote tiny assets to {args.out}")


if __name__ == "__main__":
    main()

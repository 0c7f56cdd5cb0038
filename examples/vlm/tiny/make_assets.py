"""Make the tiny offline VLM example's assets: a tiny Gemma-3-style config, its processor, synthetic images.

The task is learnable by a tiny random-init VLM in about a minute on two CPU cores: each image shows one
to three shapes (circle, square, triangle) of one colour (red, green, blue) on a light background, and the
answer names them ("two red circles"). Everything comes from a fixed seed and is committed, so
`examples/vlm/tiny_offline.yaml` trains without a network. Rerun to regenerate:

    python examples/vlm/tiny/make_assets.py [--out examples/vlm/tiny]

The functions are also used by the tests, which build tiny Gemma-3-style and Qwen2-VL-style models,
processors and data from them (`tiny_processor`, `tiny_config`, `write_rows`).
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path
from typing import Any

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 220)}
SHAPES = ("circle", "square", "triangle")
COUNTS = ("one", "two", "three")
QUESTION = "Describe the image."
IMAGE_SIZE = 48  # pixels; the tiny Gemma-3 vision tower sees 6 x 6 patches of 8, pooled to 3 x 3 tokens
SPECIAL = ("<pad>", "<bos>", "<eos>", "<unk>")
GEMMA_TOKENS = {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>"}
GEMMA_TURNS = ("<start_of_turn>", "<end_of_turn>")
QWEN_TOKENS = ("<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")
# The turn markers of Gemma 3's own template (user/model turns, images as <start_of_image>), text parts trimmed.
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% set role = 'model' if m['role'] == 'assistant' else m['role'] %}"
    "<start_of_turn>{{ role }}\n{% if m['content'] is string %}{{ m['content'] | trim }}{% else %}"
    "{% for item in m['content'] %}{% if item['type'] == 'image' %}<start_of_image>"
    "{% elif item['type'] == 'text' %}{{ item['text'] | trim }}{% endif %}{% endfor %}{% endif %}<end_of_turn>\n"
    "{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
# The turn markers of Qwen2-VL's template (ChatML, images as vision_start/image_pad/vision_end).
QWEN_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['content'] is string %}{{ m['content'] }}"
    "{% else %}{% for item in m['content'] %}{% if item['type'] == 'image' %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def answer_for(count: int, colour: str, shape: str) -> str:
    return f"{COUNTS[count - 1]} {colour} {shape}{'s' if count > 1 else ''}"


def draw(count: int, colour: str, shape: str, rng: random.Random, size: int = IMAGE_SIZE) -> Any:
    """An RGB Pillow image with `count` non-overlapping shapes in the image's cells (2 x 2 grid)."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (size, size), (235, 235, 225))
    pen = ImageDraw.Draw(image)
    cell = size // 2
    for index in rng.sample(range(4), count):
        x0, y0 = (index % 2) * cell, (index // 2) * cell
        r = rng.randint(cell // 3, cell // 2 - 2)
        cx, cy = x0 + cell // 2 + rng.randint(-2, 2), y0 + cell // 2 + rng.randint(-2, 2)
        box = (cx - r, cy - r, cx + r, cy + r)
        fill = tuple(min(255, max(0, c + rng.randint(-20, 20))) for c in COLOURS[colour])
        if shape == "circle":
            pen.ellipse(box, fill=fill)
        elif shape == "square":
            pen.rectangle(box, fill=fill)
        else:
            pen.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    return image


def write_rows(out: Path, name: str, n: int, seed: int) -> Path:
    """`n` chat rows in `out/name.jsonl`, their PNGs in `out/images/name/` (paths relative to the file)."""
    rng = random.Random(seed)
    folder = out / "images" / name
    folder.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.jsonl"
    with open(path, "w") as f:
        for i in range(n):
            count, colour, shape = rng.randint(1, 3), rng.choice(list(COLOURS)), rng.choice(SHAPES)
            image = f"images/{name}/{i:04d}.png"
            draw(count, colour, shape, rng).save(out / image, optimize=True)
            messages = [
                {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": QUESTION}]},
                {"role": "assistant", "content": [{"type": "text", "text": answer_for(count, colour, shape)}]},
            ]
            f.write(json.dumps({"messages": messages}) + "\n")
    return path


def corpus() -> list[str]:
    words = [QUESTION, "user model assistant system", " ".join(COUNTS), " ".join(COLOURS), " ".join(SHAPES)]
    return words + [answer_for(c, col, s) for c in (1, 2, 3) for col in COLOURS for s in SHAPES]


def make_tokenizer(style: str, vocab_size: int = 400) -> Any:
    """A byte-level BPE tokenizer with the special tokens of a Gemma-3 (`gemma`) or Qwen2-VL (`qwen`) processor."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    extra = list(GEMMA_TURNS) + list(GEMMA_TOKENS.values()) if style == "gemma" else list(QWEN_TOKENS)
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL) + extra,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus(), trainer=trainer)
    named = {"extra_special_tokens": dict(GEMMA_TOKENS)} if style == "gemma" else {}
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>",
                                   unk_token="<unk>", **named)
    if style == "qwen":
        fast.add_special_tokens({"additional_special_tokens": extra})
    fast.chat_template = GEMMA_CHAT_TEMPLATE if style == "gemma" else QWEN_CHAT_TEMPLATE
    return fast


def tiny_processor(style: str) -> Any:
    """A Gemma-3 or Qwen2-VL processor over the tiny tokenizer (no torchvision: Pillow image processors)."""
    tok = make_tokenizer(style)
    if style == "gemma":
        from transformers import Gemma3Processor
        from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

        images = Gemma3ImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
        return Gemma3Processor(images, tok, chat_template=GEMMA_CHAT_TEMPLATE, image_seq_length=9)
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from automodel.trainer.images import image_only_processor

    images = Qwen2VLImageProcessorPil(min_pixels=28 * 28, max_pixels=56 * 56, patch_size=14, merge_size=2)
    return image_only_processor("qwen2_vl", images, tok, QWEN_CHAT_TEMPLATE)


def tiny_config(style: str, tokenizer: Any, hidden: int = 64, layers: int = 2) -> dict[str, Any]:
    """A Gemma-3 (`Gemma3ForConditionalGeneration`) or Qwen2-VL config small enough for a CPU (ids match the
    tokenizer's special tokens)."""
    ids = tokenizer.convert_tokens_to_ids
    text = {"vocab_size": len(tokenizer), "hidden_size": hidden, "intermediate_size": hidden * 2,
            "num_hidden_layers": layers, "num_attention_heads": 4, "num_key_value_heads": 2,
            "max_position_embeddings": 512, "rms_norm_eps": 1e-6, "initializer_range": 0.1,
            "pad_token_id": ids("<pad>"), "bos_token_id": ids("<bos>"), "eos_token_id": ids("<eos>")}
    if style == "gemma":
        text.update(model_type="gemma3_text", head_dim=16, query_pre_attn_scalar=16, sliding_window=64,
                    layer_types=["sliding_attention", "full_attention"][:layers] + ["full_attention"] * (layers - 2))
        vision = {"model_type": "siglip_vision_model", "hidden_size": hidden, "intermediate_size": hidden * 2,
                  "num_hidden_layers": layers, "num_attention_heads": 4, "image_size": IMAGE_SIZE, "patch_size": 8,
                  "vision_use_head": False}
        return {"architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3", "text_config": text,
                "vision_config": vision, "mm_tokens_per_image": 9, "boi_token_index": ids(GEMMA_TOKENS["boi_token"]),
                "eoi_token_index": ids(GEMMA_TOKENS["eoi_token"]), "image_token_index": ids(GEMMA_TOKENS["image_token"]),
                "initializer_range": 0.1, "tie_word_embeddings": False, "eos_token_id": [ids("<eos>"),
                                                                                        ids("<end_of_turn>")]}
    text.update(model_type="qwen2_vl_text", rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                             "mrope_section": [2, 3, 3]})
    vision = {"model_type": "qwen2_vl_vision", "depth": layers, "embed_dim": hidden, "hidden_size": hidden,
              "num_heads": 4, "mlp_ratio": 2, "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2}
    return {"architectures": ["Qwen2VLForConditionalGeneration"], "model_type": "qwen2_vl", "text_config": text,
            "vision_config": vision, "image_token_id": ids("<|image_pad|>"), "video_token_id": ids("<|video_pad|>"),
            "vision_start_token_id": ids("<|vision_start|>"), "vision_end_token_id": ids("<|vision_end|>"),
            "tie_word_embeddings": False, "eos_token_id": ids("<|im_end|>")}


def write_model(out: Path, style: str = "gemma", hidden: int = 64, layers: int = 2) -> Path:
    """`out` holds config.json and the processor (no weights: `model.init: random`)."""
    out.mkdir(parents=True, exist_ok=True)
    processor = tiny_processor(style)
    processor.save_pretrained(out)
    config = tiny_config(style, processor.tokenizer, hidden=hidden, layers=layers)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return out


def write_assets(out: Path, *, n_train: int = 512, n_val: int = 48, seed: int = 0) -> None:
    write_model(out / "model", "gemma")
    write_rows(out / "data", "train", n_train, seed)
    write_rows(out / "data", "val", n_val, seed + 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).parent))
    write_assets(Path(parser.parse_args().out))


if __name__ == "__main__":
    main()

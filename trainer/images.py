"""Images for the vlm task: the processor (with or without torchvision) and Pillow image loading.

Qwen2-VL's and Qwen2.5-VL's processors carry a video processor that needs torchvision, and
`AutoProcessor.from_pretrained` fails without it even when only images are used. When that happens,
`load_processor` builds the same processor class from its image processor (transformers falls back to
the Pillow implementation) and tokenizer, without the video part; GPU machines with torchvision get
the stock processor. Images are opened with Pillow and checked here, so a missing or corrupt file is a
`UserError` naming the row and the file, not a traceback from inside the processor.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from automodel.catalog import hub
from automodel.catalog.errors import UserError
from automodel.trainer.data import data_relative

PROCESSOR_HINT = ("give a local model directory with processor files, or go online once to cache the model "
                  f"(gated models also need {hub.LOGIN})")
QWEN_PROCESSORS = {"qwen2_vl": "Qwen2VLProcessor", "qwen2_5_vl": "Qwen2_5_VLProcessor"}  # video part needs torchvision


def load_processor(source: str, *, trust_remote_code: bool = False) -> Any:
    """The multimodal processor of a local model directory or Hub id (offline-safe: a miss is a UserError)."""
    from transformers import AutoProcessor

    try:
        processor = AutoProcessor.from_pretrained(source, trust_remote_code=trust_remote_code)
    except ImportError:  # a video processor that needs torchvision: build the image-only processor instead
        processor = _image_only_from_pretrained(source, trust_remote_code)
    except OSError as err:
        if "video processor" not in str(err):  # saved without torchvision: no video config to load
            raise UserError(f"cannot load a processor for {source!r}: {err}".splitlines()[0], field="model.name",
                            hint=PROCESSOR_HINT) from None
        processor = _image_only_from_pretrained(source, trust_remote_code)
    except ValueError as err:
        raise UserError(f"cannot load a processor for {source!r}: {err}".splitlines()[0], field="model.name",
                        hint=PROCESSOR_HINT) from None
    if not hasattr(processor, "image_processor") or not hasattr(processor, "tokenizer"):
        raise UserError(f"{source!r} has no image processor ({type(processor).__name__}); task vlm needs an "
                        "image-text model", field="model.name",
                        hint="use a vision-language model such as qwen2.5-vl-3b-instruct, or task=llm")
    tokenizer = processor.tokenizer
    if tokenizer.pad_token_id is None:  # padding is always masked out of the loss
        tokenizer.pad_token = tokenizer.eos_token
    return processor


def _image_only_from_pretrained(source: str, trust_remote_code: bool) -> Any:
    import transformers
    from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer

    try:
        name = _processor_class_name(source)
        if name is None:
            model_type = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code).model_type
            name = QWEN_PROCESSORS.get(model_type)
        image_processor = AutoImageProcessor.from_pretrained(source, trust_remote_code=trust_remote_code)
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, ImportError) as err:
        raise UserError(f"cannot load a processor for {source!r}: {err}".splitlines()[0], field="model.name",
                        hint=PROCESSOR_HINT) from None
    cls = getattr(transformers, name or "", None)
    if cls is None:
        raise UserError(f"the processor of {source!r} needs torchvision, which is not installed", field="model.name",
                        hint="pip install torchvision")
    return image_only_processor(cls, image_processor, tokenizer, getattr(tokenizer, "chat_template", None))


def _processor_class_name(source: str) -> str | None:
    import json

    path = Path(source) / "processor_config.json"
    if path.is_file():
        return json.loads(path.read_text()).get("processor_class")
    return None


def image_only_processor(cls: Any, image_processor: Any, tokenizer: Any, chat_template: str | None) -> Any:
    """`cls` (a processor class, or a model_type such as `qwen2_vl`) without its video processor.

    A subclass whose `__init__` names only the image processor and tokenizer, so transformers' processor
    machinery (attribute checks, `save_pretrained`) sees those two; it keeps `cls`'s name, so the saved
    `processor_config.json` loads back as the stock class where torchvision is installed."""
    import transformers

    if isinstance(cls, str):
        cls = getattr(transformers, QWEN_PROCESSORS[cls])

    def __init__(self: Any, image_processor: Any = None, tokenizer: Any = None, chat_template: Any = None,
                 **kwargs: Any) -> None:
        cls.__init__(self, image_processor, tokenizer, None, chat_template=chat_template, **kwargs)

    def save_pretrained(self: Any, save_directory: Any, *args: Any, **kwargs: Any) -> Any:
        """The stock files, plus a video processor config holding the image settings, which the stock
        processor needs to load where torchvision is installed."""
        import json

        result = cls.save_pretrained(self, save_directory, *args, **kwargs)
        video = {**self.image_processor.to_dict(), "video_processor_type": cls.__name__.replace("Processor",
                                                                                                 "VideoProcessor")}
        video.pop("image_processor_type", None)
        (Path(save_directory) / "video_preprocessor_config.json").write_text(json.dumps(video, indent=2) + "\n")
        return result

    image_only = type(cls.__name__, (cls,), {"__init__": __init__, "save_pretrained": save_pretrained,
                                              "__module__": cls.__module__})
    return image_only(image_processor, tokenizer, chat_template=chat_template)


def resolve(ref: Any, base: Path | None) -> Any:
    """An image reference with a relative path made absolute against `base` (the data file's folder)."""
    if isinstance(ref, str) and ref:
        return data_relative(ref, base)
    if isinstance(ref, Mapping) and not ref.get("bytes") and isinstance(ref.get("path"), str):
        return resolve(ref["path"], base)
    return ref


def open_image(ref: Any, *, where: str) -> Any:
    """An RGB Pillow image from a path (made absolute by `resolve` when the row was read), bytes, an HF
    `{"bytes", "path"}` dict or a Pillow image; `where` names the row and file in errors."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(ref, Image.Image):
        return ref.convert("RGB")
    source: Any
    if isinstance(ref, Mapping) and (ref.get("bytes") or ref.get("path")):
        source = io.BytesIO(ref["bytes"]) if ref.get("bytes") else ref["path"]
    elif isinstance(ref, bytes | bytearray):
        source = io.BytesIO(ref)
    elif isinstance(ref, str) and ref:
        source = ref
    else:
        raise UserError(f"{where}: an image must be a file path, bytes or an image, not {type(ref).__name__}",
                        field="data.source", hint="give each image as a path relative to the data file")
    if isinstance(source, str):
        path = Path(source).expanduser()
        if not path.is_file():
            raise UserError(f"{where}: image file {path} does not exist", field="data.source",
                            hint="image paths are relative to the data file's folder; fix the path or the row")
        source = path
    try:
        with Image.open(source) as image:
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        name = source if isinstance(source, Path) else "(embedded bytes)"
        raise UserError(f"{where}: image {name} cannot be read ({type(err).__name__}: {err})".splitlines()[0],
                        field="data.source", hint="replace the corrupt image or drop the row") from None

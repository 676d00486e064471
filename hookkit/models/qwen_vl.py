"""Qwen2-VL / Qwen2.5-VL support pieces.

transformers' ``Qwen2VLProcessor`` cannot be constructed without torchvision (it insists on a video processor,
and there is no CPU torchvision wheel on this project's CI machines). ``QwenVLImageOnlyProcessor`` is a faithful
image-only stand-in: the same image processor, the same placeholder expansion
(``<|image_pad|>`` × grid_t·grid_h·grid_w / merge², ``processing_qwen2_vl.replace_image_token``) and the same
``mm_token_type_ids`` output (0 text, 1 image), which Qwen2.5-VL needs to build its 3-D M-RoPE positions (without
it the model silently falls back to 1-D positions; transformers-v5.md §6 item 6). ``hookkit.load`` uses the real
processor whenever it can be built and falls back to this one otherwise.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import transformers as T

from hookkit.models.adapters import FamilyAdapter, register_adapter

MARKER_FILE = "hookkit_processor.json"


class QwenVLImageOnlyProcessor:
    """Image + text processor for Qwen2-VL-style models, equivalent to ``Qwen2VLProcessor`` for images."""

    def __init__(self, image_processor: Any, tokenizer: Any, chat_template: str | None = None):
        self.image_processor = image_processor
        self.tokenizer = tokenizer
        self.chat_template = chat_template or getattr(tokenizer, "chat_template", None)
        self.image_token = getattr(tokenizer, "image_token", None) or "<|image_pad|>"
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)

    def __call__(self, images: Any = None, text: str | list[str] | None = None, padding: bool | str = True,
                 return_tensors: str = "pt", **kwargs: Any) -> T.BatchFeature:
        if text is None:
            raise ValueError("text is required")
        texts = [text] if isinstance(text, str) else list(text)
        data: dict[str, Any] = {}
        if images is not None:
            flat = images if isinstance(images, list) else [images]
            flat = [im for item in flat for im in (item if isinstance(item, list) else [item])]
            image_inputs = self.image_processor(images=flat, return_tensors="pt")
            data.update(image_inputs)
            merge = self.image_processor.merge_size ** 2
            counts = [int(g.prod()) // merge for g in image_inputs["image_grid_thw"]]
            expanded, k = [], 0
            for t in texts:
                while self.image_token in t:
                    if k >= len(counts):
                        raise ValueError("more image placeholders in the text than images")
                    t = t.replace(self.image_token, "<|placeholder|>" * counts[k], 1)
                    k += 1
                expanded.append(t.replace("<|placeholder|>", self.image_token))
            if k != len(counts):
                raise ValueError(f"{len(counts)} images but {k} image placeholders in the text")
            texts = expanded
        enc = self.tokenizer(texts, padding=padding, return_tensors=return_tensors, **kwargs)
        data.update(enc)
        data["mm_token_type_ids"] = (enc["input_ids"] == self.image_token_id).to(torch.long)
        return T.BatchFeature(data=data)

    def apply_chat_template(self, conversation: list[dict[str, Any]], **kwargs: Any) -> str:
        kwargs.setdefault("tokenize", False)  # like ProcessorMixin.apply_chat_template: text by default
        return self.tokenizer.apply_chat_template(conversation, chat_template=self.chat_template, **kwargs)

    def batch_decode(self, *args: Any, **kwargs: Any) -> list[str]:
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args: Any, **kwargs: Any) -> str:
        return self.tokenizer.decode(*args, **kwargs)

    def save_pretrained(self, path: str | Path) -> None:
        path = Path(path)
        self.image_processor.save_pretrained(path)
        self.tokenizer.save_pretrained(path)
        (path / MARKER_FILE).write_text(json.dumps({"class": type(self).__name__, "chat_template":
                                                    self.chat_template}, indent=2))

    @classmethod
    def from_pretrained(cls, path: str | Path, **kwargs: Any) -> QwenVLImageOnlyProcessor:
        path = Path(path)
        meta = json.loads((path / MARKER_FILE).read_text()) if (path / MARKER_FILE).exists() else {}
        ip = T.Qwen2VLImageProcessorPil.from_pretrained(path, **kwargs)
        tok = T.AutoTokenizer.from_pretrained(path, **kwargs)
        return cls(ip, tok, chat_template=meta.get("chat_template"))


def build_qwen_vl_processor(image_processor: Any, tokenizer: Any) -> Any:
    """The real ``Qwen2VLProcessor`` when it can be built here, else the image-only equivalent."""
    try:
        return T.Qwen2VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                  chat_template=tokenizer.chat_template)
    except Exception:  # noqa: BLE001 - any failure (typically missing torchvision) selects the fallback
        return QwenVLImageOnlyProcessor(image_processor, tokenizer)


@register_adapter
class Qwen2VLAdapter(FamilyAdapter):
    """Qwen2-VL: dynamic-resolution ViT, ``<|vision_start|><|image_pad|>×n<|vision_end|>``, 3-D M-RoPE."""

    family = "qwen2_vl"
    model_types = ("qwen2_vl",)
    image_token_attrs = ("image_token_id",)


@register_adapter
class Qwen25VLAdapter(Qwen2VLAdapter):
    """Qwen2.5-VL: windowed vision attention; needs ``mm_token_type_ids`` (the processors here always emit it)."""

    family = "qwen2_5_vl"
    model_types = ("qwen2_5_vl",)

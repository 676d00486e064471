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
import logging
from pathlib import Path
from typing import Any

import torch
import transformers as T

from hookkit.models.families import FamilyAdapter
from hookkit.models.tiny import IMAGE_TOKEN_ID, INIT, TEXT_CONFIG, TinySpec, generic_template, make_tokenizer

log = logging.getLogger(__name__)

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


# ---------------------------------------------------------------- tiny twins
QWEN_VS, QWEN_VE = 501, 502


def _qwen_text() -> dict[str, Any]:
    # mrope_section must sum to head_dim / 2 (= 8 here).
    return {**TEXT_CONFIG, "rope_parameters": {"rope_type": "default", "rope_theta": 1e4, "mrope_section": [2, 3, 3]}}


def _qwen2_vl_config() -> T.PretrainedConfig:
    return T.Qwen2VLConfig(
        text_config=_qwen_text(),
        vision_config=dict(depth=2, embed_dim=32, hidden_size=64, num_heads=4, mlp_ratio=2, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2, initializer_range=INIT),
        image_token_id=IMAGE_TOKEN_ID, vision_start_token_id=QWEN_VS, vision_end_token_id=QWEN_VE,
    )


def _qwen2_5_vl_config() -> T.PretrainedConfig:
    return T.Qwen2_5_VLConfig(
        text_config=_qwen_text(),
        vision_config=dict(depth=2, hidden_size=32, out_hidden_size=64, intermediate_size=64, num_heads=4,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=56,
                           fullatt_block_indexes=[1], initializer_range=INIT),
        image_token_id=IMAGE_TOKEN_ID, vision_start_token_id=QWEN_VS, vision_end_token_id=QWEN_VE,
    )


def _qwen_processor() -> Any:
    tok = make_tokenizer(
        {"<|image_pad|>": IMAGE_TOKEN_ID, "<|vision_start|>": QWEN_VS, "<|vision_end|>": QWEN_VE},
        extra_special_tokens={"image_token": "<|image_pad|>"},
        chat_template=generic_template("<|vision_start|><|image_pad|><|vision_end|>"),
    )
    ip = T.Qwen2VLImageProcessorPil(patch_size=14, merge_size=2, temporal_patch_size=2,
                                    min_pixels=56 * 56, max_pixels=4 * 56 * 56)
    return build_qwen_vl_processor(ip, tok)


# ---------------------------------------------------------------- adapters
class Qwen2VLAdapter(FamilyAdapter):
    """Qwen2-VL: dynamic-resolution ViT, ``<|vision_start|><|image_pad|>×n<|vision_end|>``, 3-D M-RoPE."""

    family = "qwen2_vl"
    model_types = ("qwen2_vl",)
    image_token_attrs = ("image_token_id",)
    tiny_models = (TinySpec("tiny-qwen2-vl", "qwen2_vl", _qwen2_vl_config, "Qwen2VLForConditionalGeneration",
                            _qwen_processor, "Qwen2-VL with M-RoPE, variable image tokens"),)

    def sink_base_model(self, info: Any) -> str | None:
        return "qwen2-vl-7b" if info.hidden_size == 3584 else None  # methods-lvlm.md §2.6

    def load_processor(self, source: str) -> Any:
        """The real ``Qwen2VLProcessor`` when it can be built (it needs torchvision), else the image-only one."""
        if (Path(source) / MARKER_FILE).exists():
            return QwenVLImageOnlyProcessor.from_pretrained(source)
        try:
            return super().load_processor(source)
        except Exception as exc:  # noqa: BLE001 - Qwen2VLProcessor needs torchvision's video processor
            log.warning("Qwen2VLProcessor unavailable (%s); using hookkit's image-only equivalent", exc)
            return QwenVLImageOnlyProcessor.from_pretrained(source)


class Qwen25VLAdapter(Qwen2VLAdapter):
    """Qwen2.5-VL: windowed vision attention; needs ``mm_token_type_ids`` (the processors here always emit it)."""

    family = "qwen2_5_vl"
    model_types = ("qwen2_5_vl",)
    tiny_models = (TinySpec("tiny-qwen2.5-vl", "qwen2_5_vl", _qwen2_5_vl_config,
                            "Qwen2_5_VLForConditionalGeneration", _qwen_processor, "Qwen2.5-VL windowed vision tower"),)

    def sink_base_model(self, info: Any) -> str | None:
        return None

"""LLaVA-1.5 and LLaVA-NeXT (llava-hf layout): CLIP tower + projector + Llama/Vicuna/Mistral decoder.

Image token id: ``config.image_token_index`` (alias ``image_token_id``). The processor expands ``<image>`` to the
image's token count (576 for LLaVA-1.5; a variable anyres count for NeXT). The no-image prompt drops ``<image>\\n``
and passes no ``pixel_values`` (methods-lvlm.md §1.10).
"""

from __future__ import annotations

from typing import Any

import transformers as T

from hookkit.models.families import FamilyAdapter
from hookkit.models.tiny import (
    IMAGE_TOKEN_ID,
    LLAVA_CHAT_TEMPLATE,
    TEXT_CONFIG,
    TinySpec,
    clip_vision_config,
    make_tokenizer,
)

#: Sink dimensions are published for the LLaMA-2 base LLMs of LLaVA-1.5 7B/13B (methods-lvlm.md §2.6).
_LLAMA2_BY_WIDTH = {4096: "llama-2-7b", 5120: "llama-2-13b"}


def _llava_tokenizer() -> Any:
    return make_tokenizer({"<image>": IMAGE_TOKEN_ID}, extra_special_tokens={"image_token": "<image>"},
                          chat_template=LLAVA_CHAT_TEMPLATE, add_bos=True)


def _llava_config() -> T.PretrainedConfig:
    return T.LlavaConfig(
        vision_config=clip_vision_config(), text_config=T.LlamaConfig(**TEXT_CONFIG), image_token_index=IMAGE_TOKEN_ID,
        vision_feature_layer=-2, vision_feature_select_strategy="default", image_seq_length=16,
    )


def _clip_image_processor() -> Any:
    return T.CLIPImageProcessor(size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56})


def _llava_processor() -> Any:
    return T.LlavaProcessor(
        image_processor=_clip_image_processor(), tokenizer=_llava_tokenizer(), patch_size=14,
        vision_feature_select_strategy="default", num_additional_image_tokens=1,
        chat_template=LLAVA_CHAT_TEMPLATE,
    )


_PINPOINTS = [[56, 112], [112, 56], [112, 112]]


def _llava_next_config() -> T.PretrainedConfig:
    return T.LlavaNextConfig(
        vision_config=clip_vision_config(), text_config=T.LlamaConfig(**TEXT_CONFIG), image_token_index=IMAGE_TOKEN_ID,
        vision_feature_layer=-2, vision_feature_select_strategy="default", image_grid_pinpoints=_PINPOINTS,
        image_seq_length=16,
    )


def _llava_next_processor() -> Any:
    ip = T.LlavaNextImageProcessor(
        size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56}, image_grid_pinpoints=_PINPOINTS
    )
    return T.LlavaNextProcessor(
        image_processor=ip, tokenizer=_llava_tokenizer(), patch_size=14,
        vision_feature_select_strategy="default", num_additional_image_tokens=1,
        chat_template=LLAVA_CHAT_TEMPLATE,
    )


class LlavaAdapter(FamilyAdapter):
    family = "llava"
    model_types = ("llava",)
    image_token_attrs = ("image_token_index", "image_token_id")
    tiny_models = (TinySpec("tiny-llava", "llava", _llava_config, "LlavaForConditionalGeneration", _llava_processor,
                            "CLIP + Llama, 16 image tokens (LLaVA-1.5 layout)"),)

    def sink_base_model(self, info: Any) -> str | None:
        if info.text_config.model_type == "llama":
            return _LLAMA2_BY_WIDTH.get(info.hidden_size)
        return None


class LlavaNextAdapter(LlavaAdapter):
    family = "llava_next"
    model_types = ("llava_next",)
    tiny_models = (TinySpec("tiny-llava-next", "llava_next", _llava_next_config, "LlavaNextForConditionalGeneration",
                            _llava_next_processor, "LLaVA-NeXT anyres tiles"),)

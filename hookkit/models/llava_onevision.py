"""LLaVA-OneVision (llava-hf layout): SigLIP tower + projector + Qwen2 decoder, anyres tiles with unpadding.

Image token id: ``config.image_token_index`` (alias ``image_token_id``). The processor expands ``<image>`` to the
image's feature count: for one image per prompt the base tile plus the unpadded anyres grid with one newline per
row (``LlavaOnevisionProcessor._get_number_of_features``, capped by ``vision_aspect_ratio``); for several images per
prompt ``num_image_tokens + 1`` each (``replace_image_token``).

Without torchvision its processor cannot be loaded (``hookkit/models/torchvision_free.py``):
``LlavaOnevisionImageOnlyProcessor`` is the real ``LlavaOnevisionProcessor`` with the video slot removed from its
signature, so every line that counts, places and tokenizes placeholders is transformers' own.
"""

from __future__ import annotations

from typing import Any

import transformers as T

from hookkit.models.tiny import IMAGE_TOKEN_ID, INIT, TEXT_CONFIG, TinySpec, generic_template, make_tokenizer
from hookkit.models.torchvision_free import TorchvisionFreeAdapter, TorchvisionFreeProcessor


class LlavaOnevisionImageOnlyProcessor(TorchvisionFreeProcessor, T.LlavaOnevisionProcessor):
    """``LlavaOnevisionProcessor`` without the video slot (images only).

    The parent's ``__init__`` passes ``(image_processor, tokenizer, video_processor)`` on to ``ProcessorMixin``,
    which pairs them with the slots of *this* signature and so drops the absent video processor.
    """

    stands_in_for = "LlavaOnevisionProcessor"
    pil_image_processor = "LlavaOnevisionImageProcessorPil"
    video_processor_type = "LlavaOnevisionVideoProcessor"

    def __init__(self, image_processor: Any = None, tokenizer: Any = None, num_image_tokens: int | None = None,
                 vision_feature_select_strategy: str | None = None, chat_template: str | None = None,
                 image_token: str = "<image>", video_token: str = "<video>",
                 vision_aspect_ratio: str = "anyres_max_9", **kwargs: Any):
        super().__init__(image_processor, tokenizer, None, num_image_tokens=num_image_tokens,
                         vision_feature_select_strategy=vision_feature_select_strategy, chat_template=chat_template,
                         image_token=image_token, video_token=video_token, vision_aspect_ratio=vision_aspect_ratio,
                         **kwargs)


# ---------------------------------------------------------------- tiny twin
OV_VIDEO_TOKEN_ID = 501
OV_IMAGE_SIZE, OV_PATCH = 56, 28  # 2x2 = 4 features per tile: an 80x120 image gives 16 image tokens
OV_PINPOINTS = [[56, 56], [56, 112], [112, 56], [112, 112]]


def _llava_onevision_config() -> T.PretrainedConfig:
    return T.LlavaOnevisionConfig(
        vision_config=dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=64,
                           num_hidden_layers=2, num_attention_heads=4, image_size=OV_IMAGE_SIZE, patch_size=OV_PATCH,
                           vision_use_head=False, initializer_range=INIT),
        text_config=T.Qwen2Config(**TEXT_CONFIG).to_dict(), image_token_index=IMAGE_TOKEN_ID,
        video_token_index=OV_VIDEO_TOKEN_ID, image_grid_pinpoints=OV_PINPOINTS, vision_feature_layer=-1,
        vision_feature_select_strategy="full", vision_aspect_ratio="anyres_max_9", initializer_range=INIT,
    )


def _llava_onevision_processor() -> LlavaOnevisionImageOnlyProcessor:
    template = generic_template("<image>\n")
    tok = make_tokenizer({"<image>": IMAGE_TOKEN_ID, "<video>": OV_VIDEO_TOKEN_ID},
                         extra_special_tokens={"image_token": "<image>", "video_token": "<video>"},
                         chat_template=template)
    ip = T.LlavaOnevisionImageProcessorPil(size={"height": OV_IMAGE_SIZE, "width": OV_IMAGE_SIZE},
                                           image_grid_pinpoints=OV_PINPOINTS)
    return LlavaOnevisionImageOnlyProcessor(image_processor=ip, tokenizer=tok,
                                            num_image_tokens=(OV_IMAGE_SIZE // OV_PATCH) ** 2,
                                            vision_feature_select_strategy="full", chat_template=template,
                                            vision_aspect_ratio="anyres_max_9")


class LlavaOnevisionAdapter(TorchvisionFreeAdapter):
    family = "llava_onevision"
    model_types = ("llava_onevision",)
    image_token_attrs = ("image_token_index", "image_token_id")
    fallback_processor = LlavaOnevisionImageOnlyProcessor
    tiny_models = (TinySpec("tiny-llava-onevision", "llava_onevision", _llava_onevision_config,
                            "LlavaOnevisionForConditionalGeneration", _llava_onevision_processor,
                            "SigLIP + Qwen2, anyres tiles with unpadding (LLaVA-OneVision layout)"),)

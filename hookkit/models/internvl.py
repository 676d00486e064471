"""InternVL (InternVL3-hf layout): InternViT tower + pixel-shuffle MLP projector + Qwen2 decoder.

Image token id: ``config.image_token_id`` (``<IMG_CONTEXT>``). The image processor (GOT-OCR2's) cuts an image into
up to ``max_patches`` tiles plus a thumbnail, and the processor expands each ``<IMG_CONTEXT>`` placeholder to
``<img>`` + ``<IMG_CONTEXT>`` × ``image_seq_length`` × tiles + ``</img>`` (``InternVLProcessor.replace_image_token``),
where ``image_seq_length = (image_size / patch_size)² × downsample_ratio²`` features per tile. Only the
``<IMG_CONTEXT>`` slots receive image features; ``<img>``/``</img>`` are text, as in the model.

**Without torchvision.** ``AutoProcessor`` fails here like LLaVA-OneVision's (the ``InternVLVideoProcessor`` needs
torchvision, and the processor rejects ``video_processor=None``); ``InternVLImageOnlyProcessor`` is the real
``InternVLProcessor`` without the video slot, with ``GotOcr2ImageProcessorPil``.
"""

from __future__ import annotations

from typing import Any

import transformers as T

from hookkit.models.tiny import IMAGE_TOKEN_ID, INIT, TEXT_CONFIG, TinySpec, generic_template, make_tokenizer
from hookkit.models.torchvision_free import TorchvisionFreeAdapter, TorchvisionFreeProcessor


class InternVLImageOnlyProcessor(TorchvisionFreeProcessor, T.InternVLProcessor):
    """``InternVLProcessor`` without the video slot (images only); tiles, placeholders and tokenization are the
    parent's. Its tokenizer must name ``start_image_token``, ``end_image_token``, ``context_image_token`` and
    ``video_token`` (as InternVL-hf tokenizers do), which the parent's ``__init__`` reads."""

    stands_in_for = "InternVLProcessor"
    pil_image_processor = "GotOcr2ImageProcessorPil"
    video_processor_type = "InternVLVideoProcessor"

    def __init__(self, image_processor: Any = None, tokenizer: Any = None, image_seq_length: int = 256,
                 chat_template: str | None = None, **kwargs: Any):
        super().__init__(image_processor, tokenizer, None, image_seq_length=image_seq_length,
                         chat_template=chat_template, **kwargs)


# ---------------------------------------------------------------- tiny twin
INTERNVL_START, INTERNVL_END, INTERNVL_VIDEO = 501, 502, 503
INTERNVL_IMAGE_SIZE, INTERNVL_PATCH, INTERNVL_MAX_TILES = 56, 14, 4
#: (56 / 14)² patches, pixel-shuffled by 0.5 in each direction: 4 features per tile; an 80x120 image gives 2 tiles +
#: a thumbnail = 12 image tokens
INTERNVL_SEQ = (INTERNVL_IMAGE_SIZE // INTERNVL_PATCH) ** 2 // 4


def _internvl_config() -> T.PretrainedConfig:
    return T.InternVLConfig(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=[INTERNVL_IMAGE_SIZE] * 2, patch_size=[INTERNVL_PATCH] * 2,
                           initializer_range=INIT),
        text_config=T.Qwen2Config(**TEXT_CONFIG).to_dict(), image_token_id=IMAGE_TOKEN_ID,
        image_seq_length=INTERNVL_SEQ, downsample_ratio=0.5, vision_feature_layer=-1,
        vision_feature_select_strategy="default", initializer_range=INIT,
    )


def _internvl_processor() -> InternVLImageOnlyProcessor:
    template = generic_template("<IMG_CONTEXT>\n")
    tok = make_tokenizer(
        {"<IMG_CONTEXT>": IMAGE_TOKEN_ID, "<img>": INTERNVL_START, "</img>": INTERNVL_END, "<video>": INTERNVL_VIDEO},
        extra_special_tokens={"context_image_token": "<IMG_CONTEXT>", "start_image_token": "<img>",
                              "end_image_token": "</img>", "video_token": "<video>"},
        chat_template=template,
    )
    ip = T.GotOcr2ImageProcessorPil(size={"height": INTERNVL_IMAGE_SIZE, "width": INTERNVL_IMAGE_SIZE},
                                    crop_to_patches=True, min_patches=1, max_patches=INTERNVL_MAX_TILES)
    return InternVLImageOnlyProcessor(image_processor=ip, tokenizer=tok, image_seq_length=INTERNVL_SEQ,
                                      chat_template=template)


class InternVLAdapter(TorchvisionFreeAdapter):
    family = "internvl"
    model_types = ("internvl",)
    image_token_attrs = ("image_token_id",)
    fallback_processor = InternVLImageOnlyProcessor
    tiny_models = (TinySpec("tiny-internvl", "internvl", _internvl_config, "InternVLForConditionalGeneration",
                            _internvl_processor, "InternViT + Qwen2, tiles + thumbnail, pixel shuffle"),)

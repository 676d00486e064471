"""Gemma3: SigLIP tower, ``mm_tokens_per_image`` soft tokens between ``<start_of_image>``/``<end_of_image>``.

The text stack alternates sliding-window and full layers (``config.layer_types``), and prefill attends
bidirectionally inside each image block (``token_type_ids``); both reach the attention function through the
model's own masks, so hookkit needs nothing special beyond region tracking by cache slot.
"""

from __future__ import annotations

from typing import Any

import transformers as T

from hookkit.models.families import FamilyAdapter
from hookkit.models.tiny import IMAGE_TOKEN_ID, INIT, TEXT_CONFIG, TinySpec, generic_template, make_tokenizer

GEMMA_BOI, GEMMA_EOI = 501, 502


def _gemma3_config() -> T.PretrainedConfig:
    return T.Gemma3Config(
        text_config={**TEXT_CONFIG, "num_hidden_layers": 4, "head_dim": 16, "query_pre_attn_scalar": 16,
                     "sliding_window": 6, "sliding_window_pattern": 2},
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=56, patch_size=14, initializer_range=INIT),
        mm_tokens_per_image=4, image_token_index=IMAGE_TOKEN_ID, boi_token_index=GEMMA_BOI,
        eoi_token_index=GEMMA_EOI, initializer_range=INIT,
    )


def _gemma3_processor() -> Any:
    tok = make_tokenizer(
        {"<image_soft_token>": IMAGE_TOKEN_ID, "<start_of_image>": GEMMA_BOI, "<end_of_image>": GEMMA_EOI},
        extra_special_tokens={"image_token": "<image_soft_token>", "boi_token": "<start_of_image>",
                              "eoi_token": "<end_of_image>"},
        chat_template=generic_template("<start_of_image>"),
    )
    ip = T.Gemma3ImageProcessor(size={"height": 56, "width": 56})
    return T.Gemma3Processor(image_processor=ip, tokenizer=tok, image_seq_length=4,
                             chat_template=generic_template("<start_of_image>"))


class Gemma3Adapter(FamilyAdapter):
    family = "gemma3"
    model_types = ("gemma3",)
    image_token_attrs = ("image_token_index", "image_token_id")
    tiny_models = (TinySpec("tiny-gemma3", "gemma3", _gemma3_config, "Gemma3ForConditionalGeneration",
                            _gemma3_processor, "Gemma3 with alternating sliding (window 6) and full layers"),)

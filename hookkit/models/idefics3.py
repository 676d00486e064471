"""Idefics3 and SmolVLM: SigLIP tower with pixel shuffle; images are split into tiles plus a global image.

Only ``<image>`` slots count as the image region; the ``<fake_token_around_image>`` and ``<row_r_col_c>``
markers around them are text, as in the model's own ``inputs_merger``.
"""

from __future__ import annotations

from typing import Any

import transformers as T

from hookkit.models.families import FamilyAdapter
from hookkit.models.tiny import IMAGE_TOKEN_ID, INIT, TEXT_CONFIG, TinySpec, generic_template, make_tokenizer


def _idefics3_config() -> T.PretrainedConfig:
    return T.Idefics3Config(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=64, patch_size=16, initializer_range=INIT),
        text_config={**TEXT_CONFIG, "vocab_size": 576}, image_token_id=IMAGE_TOKEN_ID, scale_factor=2,
    )


def _idefics3_processor() -> Any:
    specials = {"<image>": IMAGE_TOKEN_ID, "<fake_token_around_image>": 501, "<global-img>": 502}
    specials.update({f"<row_{r}_col_{c}>": 503 + (r - 1) * 6 + (c - 1) for r in range(1, 7) for c in range(1, 7)})
    tok = make_tokenizer(specials, vocab_size=576, extra_special_tokens={"image_token": "<image>"},
                         chat_template=generic_template("<image>"))
    ip = T.Idefics3ImageProcessor(size={"longest_edge": 128}, max_image_size={"longest_edge": 64})
    return T.Idefics3Processor(image_processor=ip, tokenizer=tok, image_seq_len=4,
                               chat_template=generic_template("<image>"))


class Idefics3Adapter(FamilyAdapter):
    family = "idefics3"
    model_types = ("idefics3", "smolvlm")
    tiny_models = (TinySpec("tiny-smolvlm", "idefics3", _idefics3_config, "Idefics3ForConditionalGeneration",
                            _idefics3_processor, "Idefics3/SmolVLM with image splitting"),)

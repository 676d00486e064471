"""Gemma3: SigLIP tower, ``mm_tokens_per_image`` soft tokens between ``<start_of_image>``/``<end_of_image>``.

The text stack alternates sliding-window and full layers (``config.layer_types``), and prefill attends
bidirectionally inside each image block (``token_type_ids``); both reach the attention function through the
model's own masks, so hookkit needs nothing special beyond region tracking by cache slot.
"""

from __future__ import annotations

from hookkit.models.adapters import FamilyAdapter, register_adapter


@register_adapter
class Gemma3Adapter(FamilyAdapter):
    family = "gemma3"
    model_types = ("gemma3",)
    image_token_attrs = ("image_token_index", "image_token_id")

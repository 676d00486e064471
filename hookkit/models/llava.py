"""LLaVA-1.5 and LLaVA-NeXT (llava-hf layout): CLIP tower + projector + Llama/Vicuna/Mistral decoder.

Image token id: ``config.image_token_index`` (alias ``image_token_id``). The processor expands ``<image>`` to the
image's token count (576 for LLaVA-1.5; a variable anyres count for NeXT). The no-image prompt drops ``<image>\\n``
and passes no ``pixel_values`` (methods-lvlm.md §1.10).
"""

from __future__ import annotations

from hookkit.models.adapters import FamilyAdapter, register_adapter


@register_adapter
class LlavaAdapter(FamilyAdapter):
    family = "llava"
    model_types = ("llava",)
    image_token_attrs = ("image_token_index", "image_token_id")


@register_adapter
class LlavaNextAdapter(FamilyAdapter):
    family = "llava_next"
    model_types = ("llava_next",)
    image_token_attrs = ("image_token_index", "image_token_id")

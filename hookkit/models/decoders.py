"""Text-only decoders: Llama (and SmolLM2, a Llama), Qwen2 and Mistral (sliding window on every layer)."""

from __future__ import annotations

from hookkit.models.adapters import FamilyAdapter, register_adapter


@register_adapter
class LlamaAdapter(FamilyAdapter):
    family = "llama"
    model_types = ("llama",)
    is_vlm = False


@register_adapter
class Qwen2Adapter(FamilyAdapter):
    family = "qwen2"
    model_types = ("qwen2",)
    is_vlm = False


@register_adapter
class MistralAdapter(FamilyAdapter):
    family = "mistral"
    model_types = ("mistral",)
    is_vlm = False

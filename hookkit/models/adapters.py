"""Family adapters: the little each architecture family needs beyond generic discovery.

An adapter knows (1) which config attributes hold the image token ids, (2) where the vision tower is, so that
``describe()`` can show it is left alone, and (3) how to turn a plain prompt (+ image) into model inputs with the
family's processor and chat template, including the *no-image* variant VHD/VHR compare against. Families live in
one small module each (``llava.py``, ``qwen_vl.py``, ...); ``decoders.py`` covers text-only models and the generic
fallback adapter handles unseen decoders.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from PIL import Image
from torch import nn

from hookkit import compat
from hookkit.errors import InputError, UnsupportedModelError


class FamilyAdapter:
    """Base adapter: a chat-template prompt with an optional image, batched by the family's processor."""

    family: ClassVar[str] = "generic"
    model_types: ClassVar[tuple[str, ...]] = ()
    #: config attributes that may hold the image placeholder token id
    image_token_attrs: ClassVar[tuple[str, ...]] = ("image_token_id", "image_token_index")
    #: attribute names of the vision tower / projector on the inner model (for describe())
    vision_attrs: ClassVar[tuple[str, ...]] = ("vision_tower", "visual", "vision_model", "multi_modal_projector",
                                               "qformer", "connector")
    is_vlm: ClassVar[bool] = True

    def image_token_ids(self, model: nn.Module) -> tuple[int, ...]:
        if not self.is_vlm:
            return ()
        cfg = model.config
        for attr in self.image_token_attrs:
            value = getattr(cfg, attr, None)
            if isinstance(value, int):
                return (value,)
        raise UnsupportedModelError(f"{type(model).__name__}: none of the config attributes "
                                    f"{list(self.image_token_attrs)} holds the image token id")

    def vision_module_names(self, model: nn.Module) -> list[str]:
        names = []
        for name, _ in model.named_modules():
            leaf = name.rsplit(".", 1)[-1]
            if leaf in self.vision_attrs and not any(name.startswith(n + ".") for n in names):
                names.append(name)
        return names

    # ------------------------------------------------------------------ prompts
    def format_prompt(self, processor: Any, prompt: str, with_image: bool) -> str:
        """The model's chat-formatted prompt text, with the image placeholder when ``with_image``."""
        owner = processor if getattr(processor, "chat_template", None) else getattr(processor, "tokenizer", processor)
        if not getattr(owner, "chat_template", None):
            return prompt
        if hasattr(owner, "image_processor"):
            # Multimodal processors' templates take typed content parts (the image part places the placeholder).
            content: list[dict[str, str]] = [{"type": "image"}] if with_image else []
            content.append({"type": "text", "text": prompt})
            messages: list[dict[str, Any]] = [{"role": "user", "content": content}]
        else:  # plain tokenizer templates (ChatML, Llama-2...) expect string content
            messages = [{"role": "user", "content": prompt}]
        return owner.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def build_inputs(self, processor: Any, prompts: Sequence[str], images: Sequence[Image.Image | None],
                     device: torch.device | str | None = None) -> Any:
        """A left-padded batch; ``images[i] is None`` makes row ``i`` a text-only prompt (VHR's no-image branch)."""
        if len(prompts) != len(images):
            raise InputError(f"prompts and images differ in length: {len(prompts)} vs {len(images)}")
        if not self.is_vlm and any(im is not None for im in images):
            raise InputError("this is a text-only model; pass no image")
        texts = [self.format_prompt(processor, p, im is not None) for p, im in zip(prompts, images)]
        tokenizer = getattr(processor, "tokenizer", processor)
        _ensure_left_padding(tokenizer)
        if not self.is_vlm:
            # A rendered chat template already holds its special tokens (BOS included where the model uses one).
            templated = bool(getattr(tokenizer, "chat_template", None))
            batch = tokenizer(texts, padding=True, return_tensors="pt", add_special_tokens=not templated)
        elif all(im is None for im in images):
            batch = processor(text=texts, padding=True, return_tensors="pt")
        else:
            batch = processor(text=texts, images=[[im] if im is not None else [] for im in images], padding=True,
                              return_tensors="pt")
        return batch.to(device) if device is not None else batch


    # ------------------------------------------------------------------ generation plumbing
    def select_rows(self, model: nn.Module, rows: torch.Tensor) -> None:
        """Reduce per-batch state kept inside the model to ``rows`` (Qwen-VL caches its M-RoPE deltas)."""
        compat.select_model_state_rows(model, rows)

    def continue_generate(self, model: nn.Module, **kwargs: Any) -> Any:
        """Continue decoding from a filled cache with text inputs only (the image is already in the cache)."""
        return model.generate(**kwargs)


def _ensure_left_padding(tokenizer: Any) -> None:
    # Decoder-only generation needs left padding; every hookkit batch is left-padded.
    if getattr(tokenizer, "padding_side", "left") != "left":
        tokenizer.padding_side = "left"
    if getattr(tokenizer, "pad_token", None) is None and getattr(tokenizer, "eos_token", None) is not None:
        tokenizer.pad_token = tokenizer.eos_token


class GenericAdapter(FamilyAdapter):
    """Fallback for unseen architectures: generic discovery, and an image token id if the config has one."""

    family = "generic"

    def __init__(self, model: nn.Module):
        cfg = model.config
        self.is_vlm_model = any(isinstance(getattr(cfg, a, None), int) for a in self.image_token_attrs)

    def image_token_ids(self, model: nn.Module) -> tuple[int, ...]:
        return super().image_token_ids(model) if self.is_vlm_model else ()

    def build_inputs(self, processor: Any, prompts: Sequence[str], images: Sequence[Image.Image | None],
                     device: torch.device | str | None = None) -> Any:
        if not self.is_vlm_model and any(im is not None for im in images):
            raise InputError("this model has no image token in its config; pass no image")
        return super().build_inputs(processor, prompts, images, device)


_ADAPTERS: list[type[FamilyAdapter]] = []


def register_adapter(cls: type[FamilyAdapter]) -> type[FamilyAdapter]:
    _ADAPTERS.append(cls)
    return cls


def _family_adapters() -> list[type[FamilyAdapter]]:
    # Importing the family modules registers their adapters (kept lazy to avoid import cycles).
    import hookkit.models.decoders  # noqa: F401
    import hookkit.models.gemma3  # noqa: F401
    import hookkit.models.idefics3  # noqa: F401
    import hookkit.models.instructblip  # noqa: F401
    import hookkit.models.llava  # noqa: F401
    import hookkit.models.qwen_vl  # noqa: F401

    return _ADAPTERS


def adapter_for(model: nn.Module) -> FamilyAdapter:
    """The adapter of the model's family (by ``config.model_type``), else the generic fallback."""
    model_type = getattr(model.config, "model_type", None)
    for cls in _family_adapters():
        if model_type in cls.model_types:
            return cls()
    return GenericAdapter(model)


def supported_families() -> dict[str, tuple[str, ...]]:
    """Family name -> the ``config.model_type`` values it handles."""
    return {cls.family: cls.model_types for cls in _family_adapters()}

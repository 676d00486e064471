"""Family adapters: everything hookkit knows about one architecture family, one file per family.

Generic discovery (``hookkit.models.base.inspect_model``) finds the text stack of most decoders by itself; an
adapter says what cannot be discovered, and overrides what differs:

* **discovery**: the names of the attention projections (``q_proj``... or a fused ``qkv_proj`` as in Phi-3, an
  output projection called ``dense`` as in Phi-2), or a whole ``find_text_attentions`` of its own;
* **what the model is**: whether it is a vision-language model, which config attributes hold the image token ids,
  where the vision tower and projector live (``describe()`` shows they are left alone), how to load its processor;
* **paper defaults that depend on the architecture**: VHR's layer set, the base LLM whose sink dimensions VAR
  publishes;
* **prompts**: the family's processor and chat template, with the *no-image* variant VHD/VHR compare against;
* **its tiny random-weight twin** (``tiny_models``), so that the parity suite runs on it offline.

Adapters are listed in ``hookkit.registry.FAMILIES`` (outside packages add theirs through the ``hookkit.families``
entry point) and matched by ``config.model_type``; ``GenericAdapter`` handles unseen decoders.
docs/adding-a-model.md walks through adding one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from PIL import Image
from torch import nn

from hookkit import compat
from hookkit.errors import InputError, UnsupportedModelError
from hookkit.registry import FAMILIES

if TYPE_CHECKING:
    from hookkit.models.base import ModelInfo
    from hookkit.models.tiny import TinySpec


class FamilyAdapter:
    """Base adapter: generic discovery, a chat-template prompt with an optional image, batched by the processor."""

    family: ClassVar[str] = "generic"
    #: ``config.model_type`` values this adapter handles
    model_types: ClassVar[tuple[str, ...]] = ()
    is_vlm: ClassVar[bool] = True
    #: config attributes that may hold the image placeholder token id
    image_token_attrs: ClassVar[tuple[str, ...]] = ("image_token_id", "image_token_index")
    #: attribute names of the vision tower / projector on the inner model (for describe())
    vision_attrs: ClassVar[tuple[str, ...]] = ("vision_tower", "visual", "vision_model", "multi_modal_projector",
                                               "qformer", "connector")
    #: names of the projections inside a text attention module; a fused QKV layer sets ``qkv_proj`` and leaves
    #: ``q_proj``/``k_proj``/``v_proj`` None (its output is queries, keys and values concatenated in that order)
    #: attribute of a decoder layer that holds its attention module
    attention_attr: ClassVar[str] = "self_attn"
    q_proj: ClassVar[str | None] = "q_proj"
    k_proj: ClassVar[str | None] = "k_proj"
    v_proj: ClassVar[str | None] = "v_proj"
    qkv_proj: ClassVar[str | None] = None
    o_proj: ClassVar[str] = "o_proj"
    #: the tiny random-weight twins of this family (``hookkit.models.tiny``)
    tiny_models: ClassVar[tuple[TinySpec, ...]] = ()

    # ------------------------------------------------------------------ discovery
    def projection_names(self) -> tuple[str, ...]:
        """The input projections of a text attention module, in q, k, v order (one name when fused)."""
        if self.qkv_proj is not None:
            return (self.qkv_proj,)
        return tuple(n for n in (self.q_proj, self.k_proj, self.v_proj) if n is not None)

    def split_query_key(self, info: ModelInfo, outputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw queries ``[..., H*D]`` and keys ``[..., Hkv*D]`` from the outputs of ``info.query_key_targets()``.

        A fused projection is read as ``[queries | keys | values]`` (Phi-3); a family with another layout
        (GPT-NeoX interleaves them per head) overrides this.
        """
        targets = info.query_key_targets()
        if len(targets) == 1:
            fused = outputs[targets[0]]
            q_size, k_size = info.num_heads * info.head_dim, info.num_kv_heads * info.head_dim
            return fused[..., :q_size], fused[..., q_size:q_size + k_size]
        return outputs[targets[0]], outputs[targets[1]]

    def is_text_attention(self, module: nn.Module) -> bool:
        """A text attention module: the family's projections and an integer ``layer_idx``."""
        names = (*self.projection_names(), self.o_proj)
        return all(hasattr(module, n) for n in names) and isinstance(getattr(module, "layer_idx", None), int)

    def find_text_attentions(self, model: nn.Module, text_config: Any) -> list[tuple[str, nn.Module]]:
        """Attention modules of the text decoder, as (qualified name, module) sorted by ``layer_idx``.

        Modules whose ``.config`` is another sub-config (a vision tower with ``q_proj``...) are skipped; if a
        config object was copied per sub-model, any decoder attention with a layer index is taken instead.
        """
        for strict in (True, False):
            found = []
            for name, module in model.named_modules():
                if not self.is_text_attention(module):
                    continue
                cfg = getattr(module, "config", None)
                if strict and cfg is not None and cfg is not text_config:
                    continue
                found.append((name, module))
            if found:
                return sorted(found, key=lambda item: item[1].layer_idx)
        return []

    # ------------------------------------------------------------------ architecture-dependent defaults
    def vhr_layers(self, num_layers: int) -> list[int]:
        """VHR's paper layer set for this family, scaled to ``num_layers`` (methods-lvlm.md §1.6): {1} ∪ the last
        14 of 32 layers (LLaVA-1.5)."""
        last = max(1, round(14 * num_layers / 32))
        layers = set(range(num_layers - last, num_layers))
        if num_layers > 2:
            layers.add(1)
        return sorted(layers)

    def sink_base_model(self, info: ModelInfo) -> str | None:
        """The base LLM whose published sink dimensions VAR uses by default (methods-lvlm.md §2.6), or None."""
        return None

    # ------------------------------------------------------------------ loading
    def load_processor(self, source: str) -> Any:
        """The processor (VLMs) or the left-padding tokenizer (text-only models) of a checkpoint folder/hub id."""
        from transformers import AutoTokenizer

        if self.is_vlm:
            try:
                return _auto_processor(source)
            except ImportError as exc:
                if "torchvision" not in str(exc).lower():
                    raise
                raise InputError(f"the processor of {source} needs torchvision, which is not installed: "
                                 f"{torchvision_install_hint()} ({exc})") from exc
        tokenizer = AutoTokenizer.from_pretrained(source)
        ensure_left_padding(tokenizer)
        return tokenizer

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
    #: most images one prompt may carry (None: no limit); the family's processor and model must accept them
    max_images_per_prompt: ClassVar[int | None] = None

    def format_prompt(self, processor: Any, prompt: str, num_images: int | bool) -> str:
        """The model's chat-formatted prompt text, with ``num_images`` image placeholders before the text."""
        owner = processor if getattr(processor, "chat_template", None) else getattr(processor, "tokenizer", processor)
        if not getattr(owner, "chat_template", None):
            return prompt
        if hasattr(owner, "image_processor"):
            # Multimodal processors' templates take typed content parts (each image part places a placeholder).
            content: list[dict[str, str]] = [{"type": "image"}] * int(num_images)
            content.append({"type": "text", "text": prompt})
            messages: list[dict[str, Any]] = [{"role": "user", "content": content}]
        else:  # plain tokenizer templates (ChatML, Llama-2...) expect string content
            messages = [{"role": "user", "content": prompt}]
        return owner.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def image_lists(self, prompts: Sequence[str], images: Sequence[Any]) -> list[list[Image.Image]]:
        """Each prompt's images as a list (``None`` -> ``[]``, one image -> ``[image]``), checked against the family."""
        if len(prompts) != len(images):
            raise InputError(f"images: got {len(prompts)} prompts but {len(images)} image entries (one per prompt: "
                             "None, an image, or a list of images)")
        out = []
        for i, item in enumerate(images):
            row = [] if item is None else list(item) if isinstance(item, (list, tuple)) else [item]
            if not all(isinstance(im, Image.Image) for im in row):
                raise InputError(f"images[{i}]: expected None, a PIL image or a list of PIL images, got {item!r:.80}")
            if row and not self.is_vlm:
                raise InputError("images: this is a text-only model; pass no image")
            if self.max_images_per_prompt is not None and len(row) > self.max_images_per_prompt:
                raise InputError(f"images[{i}]: {len(row)} images, but {self.family} takes at most "
                                 f"{self.max_images_per_prompt} per prompt")
            out.append(row)
        return out

    def build_inputs(self, processor: Any, prompts: Sequence[str], images: Sequence[Any],
                     device: torch.device | str | None = None) -> Any:
        """A left-padded batch. ``images[i]``: None (a text-only row, e.g. VHR's no-image branch), an image, or a
        list of images (several placeholders, for families whose processor allows it)."""
        rows = self.image_lists(prompts, images)
        texts = [self.format_prompt(processor, p, len(row)) for p, row in zip(prompts, rows)]
        tokenizer = getattr(processor, "tokenizer", processor)
        ensure_left_padding(tokenizer)
        if not self.is_vlm:
            # A rendered chat template already holds its special tokens (BOS included where the model uses one).
            templated = bool(getattr(tokenizer, "chat_template", None))
            batch = tokenizer(texts, padding=True, return_tensors="pt", add_special_tokens=not templated)
        elif not any(rows):
            batch = processor(text=texts, padding=True, return_tensors="pt")
        else:
            try:
                batch = processor(text=texts, images=rows, padding=True, return_tensors="pt")
            except ValueError as exc:  # the processor's own count checks, e.g. placeholders vs images
                raise InputError(f"images: the {type(processor).__name__} refused this batch: {exc}") from exc
        return batch.to(device) if device is not None else batch

    # ------------------------------------------------------------------ generation plumbing
    def select_rows(self, model: nn.Module, rows: torch.Tensor) -> None:
        """Reduce per-batch state kept inside the model to ``rows`` (Qwen-VL caches its M-RoPE deltas)."""
        compat.select_model_state_rows(model, rows)

    def continue_generate(self, model: nn.Module, **kwargs: Any) -> Any:
        """Continue decoding from a filled cache with text inputs only (the image is already in the cache)."""
        return model.generate(**kwargs)


def _auto_processor(source: str) -> Any:
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(source)


def torchvision_install_hint() -> str:
    """The torchvision release built for the installed torch (0.x for torch 2.(x-15)), as a pip command."""
    major_minor = torch.__version__.split("+")[0].split(".")[:2]
    try:
        return f"pip install torchvision==0.{int(major_minor[1]) + 15}.*  (the release line of torch {torch.__version__})"
    except (IndexError, ValueError):
        return "pip install torchvision (the release built for your torch)"


def ensure_left_padding(tokenizer: Any) -> None:
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
        self.is_vlm = any(isinstance(getattr(cfg, a, None), int) for a in self.image_token_attrs)


def family_adapters() -> list[type[FamilyAdapter]]:
    """Every registered adapter class (built-in families and ``hookkit.families`` plug-ins)."""
    return [cls for _, cls in FAMILIES.items()]


def adapter_class_for(model_type: str | None) -> type[FamilyAdapter] | None:
    """The adapter class handling ``config.model_type``, or None (the generic fallback applies)."""
    for cls in family_adapters():
        if model_type in cls.model_types:
            return cls
    return None


def adapter_for(model: nn.Module) -> FamilyAdapter:
    """The adapter of the model's family (by ``config.model_type``), else the generic fallback."""
    cls = adapter_class_for(getattr(model.config, "model_type", None))
    return cls() if cls is not None else GenericAdapter(model)


def supported_families() -> dict[str, tuple[str, ...]]:
    """Family name -> the ``config.model_type`` values it handles."""
    return {cls.family: cls.model_types for cls in family_adapters()}

"""Test helpers: deterministic images, left-padded batches, generation with per-step logits."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image

PROMPTS = ["Describe this image in detail.", "Is there a dog in the image? Please answer yes or no."]


def make_image(seed: int = 0, size: tuple[int, int] = (80, 120)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, size=(size[1], size[0], 3), dtype=np.uint8))


def build_batch(info: Any, processor: Any, batch_size: int, *, with_image: bool = True) -> Any:
    """bs 1: one prompt; bs 2: prompts of different lengths, so the shorter row is left-padded."""
    prompts = PROMPTS[:batch_size] if batch_size <= 2 else (PROMPTS * batch_size)[:batch_size]
    images = [make_image(i) if (with_image and info.is_vlm) else None for i in range(batch_size)]
    batch = info.adapter.build_inputs(processor, prompts, images)
    if batch_size > 1:
        assert (batch["attention_mask"] == 0).any(), "test batch must contain left padding"
    return batch


def suppressed_tokens(info: Any) -> list[int]:
    """Random tiny models would otherwise emit image/special tokens (transformers-v5.md pitfall 12)."""
    vocab = info.text_config.vocab_size
    return list(range(500, vocab)) if info.is_vlm else []


def generate(model: Any, info: Any, batch: Any, new_tokens: int = 4) -> Any:
    return model.generate(**batch, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                          output_logits=True, return_dict_in_generate=True,
                          suppress_tokens=suppressed_tokens(info) or None, pad_token_id=0)


def max_logit_diff(a: Any, b: Any) -> float:
    return max((x - y).abs().max().item() for x, y in zip(a.logits, b.logits))


def prefill_logits(model: Any, batch: Any) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).logits


def masked_max_diff(a: torch.Tensor, b: torch.Tensor, attention_mask: torch.Tensor) -> float:
    keep = attention_mask.bool()
    return (a - b)[keep].abs().max().item()

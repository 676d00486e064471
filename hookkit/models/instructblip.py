"""InstructBLIP: ViT + Q-Former; 32 learned query embeddings (8 in the tiny model) replace ``<image>`` tokens
placed before the text, and the Q-Former also reads the instruction.

Removing the image means running the language model on the text alone (methods-lvlm.md §1.10). Batches are built
row by row here, for two reasons: the processor adds the query tokens to every row whenever images are passed (so
it cannot mix image and text-only rows, as VHR's lock-step prefill needs), and in a batch it left-pads the Q-Former
instruction too, which shifts the Q-Former's absolute positions so that a prompt's answer depends on its batch
neighbours. Here the language-model rows are left-padded and the Q-Former rows right-padded (batch-invariant); the
Q-Former inputs keep only the image rows, aligned with ``pixel_values``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image

from hookkit import compat
from hookkit.errors import InputError
from hookkit.models.adapters import FamilyAdapter, _ensure_left_padding, register_adapter


@register_adapter
class InstructBlipAdapter(FamilyAdapter):
    family = "instructblip"
    model_types = ("instructblip",)
    image_token_attrs = ("image_token_index", "image_token_id")

    def format_prompt(self, processor: Any, prompt: str, with_image: bool) -> str:
        # Salesforce/instructblip-* checkpoints take the bare question (no chat template).
        return prompt

    def build_inputs(self, processor: Any, prompts: Sequence[str], images: Sequence[Image.Image | None],
                     device: torch.device | str | None = None) -> Any:
        if len(prompts) != len(images):
            raise InputError(f"prompts and images differ in length: {len(prompts)} vs {len(images)}")
        tokenizer = processor.tokenizer
        _ensure_left_padding(tokenizer)
        rows = [processor(text=[p], images=[im], return_tensors="pt") if im is not None
                else processor(text=[p], return_tensors="pt") for p, im in zip(prompts, images)]
        width = max(r["input_ids"].shape[1] for r in rows)
        pad_id = tokenizer.pad_token_id
        ids, mask = [], []
        for r in rows:
            n = width - r["input_ids"].shape[1]
            ids.append(torch.cat([torch.full((1, n), pad_id, dtype=torch.long), r["input_ids"]], dim=1))
            mask.append(torch.cat([torch.zeros(1, n, dtype=torch.long), r["attention_mask"]], dim=1))
        image_rows = [r for r in rows if "pixel_values" in r]
        from transformers import BatchFeature

        if not image_rows:
            batch = BatchFeature({"input_ids": torch.cat(ids), "attention_mask": torch.cat(mask)})
            return batch.to(device) if device is not None else batch
        qwidth = max(r["qformer_input_ids"].shape[1] for r in image_rows)
        q_ids, q_mask = [], []
        for r in image_rows:  # the Q-Former tokenizer pads on the right
            n = qwidth - r["qformer_input_ids"].shape[1]
            q_ids.append(torch.cat([r["qformer_input_ids"], torch.zeros(1, n, dtype=torch.long)], dim=1))
            q_mask.append(torch.cat([r["qformer_attention_mask"], torch.zeros(1, n, dtype=torch.long)], dim=1))
        batch = BatchFeature({
            "input_ids": torch.cat(ids), "attention_mask": torch.cat(mask),
            "pixel_values": torch.cat([r["pixel_values"] for r in image_rows]),
            "qformer_input_ids": torch.cat(q_ids), "qformer_attention_mask": torch.cat(q_mask),
        })
        return batch.to(device) if device is not None else batch

    def continue_generate(self, model: Any, **kwargs: Any) -> Any:
        # InstructBLIP's generate insists on pixel_values; its language model continues from the cache alone.
        return compat.language_model(model).generate(**kwargs)

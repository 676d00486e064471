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
import transformers as T

from hookkit import compat
from hookkit.models.families import FamilyAdapter, ensure_left_padding
from hookkit.models.tiny import IMAGE_TOKEN_ID, INIT, TEXT_CONFIG, TinySpec, make_tokenizer

#: Sink dimensions are published for the LLaMA-2 base LLMs (methods-lvlm.md §2.6); InstructBLIP-Vicuna-7B is one.
_LLAMA2_BY_WIDTH = {4096: "llama-2-7b", 5120: "llama-2-13b"}


def _instructblip_config() -> T.PretrainedConfig:
    return T.InstructBlipConfig(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=56, patch_size=14, initializer_range=INIT),
        qformer_config=dict(vocab_size=512, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                            intermediate_size=64, encoder_hidden_size=32, initializer_range=INIT, pad_token_id=0),
        text_config=T.LlamaConfig(**TEXT_CONFIG), num_query_tokens=8, image_token_index=IMAGE_TOKEN_ID,
    )


def _instructblip_processor() -> Any:
    # No image_token attribute: InstructBlipProcessor then registers "<image>" itself (it already has its id).
    tok = make_tokenizer({"<image>": IMAGE_TOKEN_ID}, add_bos=True)
    qtok = make_tokenizer({})
    qtok.padding_side = "right"
    ip = T.BlipImageProcessor(size={"height": 56, "width": 56})
    # Like Salesforce/instructblip-vicuna-7b: no chat template, the prompt is the bare question.
    return T.InstructBlipProcessor(image_processor=ip, tokenizer=tok, qformer_tokenizer=qtok, num_query_tokens=8)


class InstructBlipAdapter(FamilyAdapter):
    family = "instructblip"
    model_types = ("instructblip",)
    image_token_attrs = ("image_token_index", "image_token_id")
    tiny_models = (TinySpec("tiny-instructblip", "instructblip", _instructblip_config,
                            "InstructBlipForConditionalGeneration", _instructblip_processor,
                            "InstructBLIP: Q-Former (8 queries) + Llama"),)

    def vhr_layers(self, num_layers: int) -> list[int]:
        """The last 18 of 32 layers for InstructBLIP (methods-lvlm.md §1.6), scaled to ``num_layers``."""
        last = max(1, round(18 * num_layers / 32))
        return list(range(num_layers - last, num_layers))

    def sink_base_model(self, info: Any) -> str | None:
        if info.text_config.model_type == "llama":
            return _LLAMA2_BY_WIDTH.get(info.hidden_size)
        return None

    max_images_per_prompt = 1  # the Q-Former reads one image per prompt

    def format_prompt(self, processor: Any, prompt: str, num_images: int | bool) -> str:
        # Salesforce/instructblip-* checkpoints take the bare question (no chat template).
        return prompt

    def build_inputs(self, processor: Any, prompts: Sequence[str], images: Sequence[Any],
                     device: torch.device | str | None = None) -> Any:
        image_rows_in = self.image_lists(prompts, images)
        tokenizer = processor.tokenizer
        ensure_left_padding(tokenizer)
        rows = [processor(text=[p], images=im, return_tensors="pt") if im
                else processor(text=[p], return_tensors="pt") for p, im in zip(prompts, image_rows_in)]
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

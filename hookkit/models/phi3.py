"""Phi-3 (and Phi-4-mini, model type ``phi3``): a Llama-like decoder whose attention has one fused ``qkv_proj``.

``qkv_proj`` outputs queries, keys and values concatenated (``[H·D | Hkv·D | Hkv·D]``, ``modeling_phi3``), so the
adapter names it instead of ``q_proj``/``k_proj``/``v_proj``; every site works as on Llama, and methods that read
raw queries and keys (LongHeads) split the fused output (``ModelInfo.split_query_key``).
"""

from __future__ import annotations

from typing import Any

import transformers as T

from hookkit.models.families import FamilyAdapter
from hookkit.models.tiny import TEXT_CONFIG, TinySpec, generic_template, make_tokenizer


def _phi3_config() -> T.PretrainedConfig:
    return T.Phi3Config(**TEXT_CONFIG)


def _phi3_tokenizer() -> Any:
    return make_tokenizer({}, chat_template=generic_template("", user="<|user|>", assistant="<|assistant|>"),
                          add_bos=True)


class Phi3Adapter(FamilyAdapter):
    family = "phi3"
    model_types = ("phi3",)
    is_vlm = False
    q_proj = k_proj = v_proj = None
    qkv_proj = "qkv_proj"
    tiny_models = (TinySpec("tiny-phi3", "phi3", _phi3_config, "Phi3ForCausalLM", _phi3_tokenizer,
                            "4-layer Phi-3, fused qkv_proj, GQA 4/2"),)

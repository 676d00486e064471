"""Phi-1/1.5/2 (model type ``phi``): the attention's output projection is called ``dense``, RoPE is partial.

``q_proj``/``k_proj``/``v_proj`` are as in Llama (with biases), but the output projection is ``self_attn.dense``,
which the generic discovery (``o_proj``) does not find. Only the first ``partial_rotary_factor`` of each head is
rotated, so methods that re-apply RoPE themselves (LongHeads) refuse this family at attach.
"""

from __future__ import annotations

from typing import Any

import transformers as T

from hookkit.models.families import FamilyAdapter
from hookkit.models.tiny import TEXT_CONFIG, TinySpec, generic_template, make_tokenizer


def _phi_config() -> T.PretrainedConfig:
    return T.PhiConfig(**TEXT_CONFIG)  # partial_rotary_factor 0.5 (the default), LayerNorm, GELU MLP


def _phi_tokenizer() -> Any:
    return make_tokenizer({}, chat_template=generic_template("", user="Instruct:", assistant="Output:"))


class PhiAdapter(FamilyAdapter):
    family = "phi"
    model_types = ("phi",)
    is_vlm = False
    o_proj = "dense"
    tiny_models = (TinySpec("tiny-phi", "phi", _phi_config, "PhiForCausalLM", _phi_tokenizer,
                            "4-layer Phi-2 layout: output projection `dense`, partial RoPE"),)

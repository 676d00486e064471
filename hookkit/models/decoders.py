"""Text-only decoders: Llama (and SmolLM2, a Llama), Qwen2 and Mistral (sliding window on every layer)."""

from __future__ import annotations

from typing import Any

import transformers as T

from hookkit.models.families import FamilyAdapter
from hookkit.models.tiny import TEXT_CONFIG, TinySpec, generic_template, make_qwen2_tokenizer, make_tokenizer


def _text_tokenizer() -> Any:
    return make_tokenizer({}, chat_template=generic_template("", bos=True), add_bos=True)


def _llama_config() -> T.PretrainedConfig:
    return T.LlamaConfig(**TEXT_CONFIG)


def _qwen2_config() -> T.PretrainedConfig:
    # Qwen2 ids: <|endoftext|> 0 (pad), <|im_start|> 1, <|im_end|> 2 (eos), as trained by make_qwen2_tokenizer.
    return T.Qwen2Config(**{**TEXT_CONFIG, "bos_token_id": None})


def _mistral_config() -> T.PretrainedConfig:
    # A window of 8 so that sliding-window masking is exercised by short test prompts.
    return T.MistralConfig(**TEXT_CONFIG, sliding_window=8)


class LlamaAdapter(FamilyAdapter):
    family = "llama"
    model_types = ("llama",)
    is_vlm = False
    tiny_models = (TinySpec("tiny-llama", "llama", _llama_config, "LlamaForCausalLM", _text_tokenizer,
                            "4-layer Llama, GQA 4/2"),)


class Qwen2Adapter(FamilyAdapter):
    family = "qwen2"
    model_types = ("qwen2",)
    is_vlm = False
    tiny_models = (TinySpec("tiny-qwen2", "qwen2", _qwen2_config, "Qwen2ForCausalLM", make_qwen2_tokenizer,
                            "4-layer Qwen2 (qkv bias), byte-level BPE tokenizer"),)


class MistralAdapter(FamilyAdapter):
    family = "mistral"
    model_types = ("mistral",)
    is_vlm = False
    tiny_models = (TinySpec("tiny-mistral", "mistral", _mistral_config, "MistralForCausalLM", _text_tokenizer,
                            "4-layer Mistral, sliding window 8"),)

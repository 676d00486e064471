"""ALoRA (hookkit/methods/alora.py, a reconstruction) and plain LoRA (hookkit/methods/lora.py).

Must-pass tests of methods-llm.md §3.3: B = 0 equals the base model (prefill and cached decode); W_o = 0 equals plain
LoRA; no information from later tokens; left-padded batched generation equals unbatched; cached decode equals a full
recompute. Plus: our LoRA equals PEFT's for the same weights.
"""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import TEXT_TINY, load_tiny
from helpers import build_batch, generate, masked_max_diff, max_logit_diff, prefill_logits

import hookkit
from hookkit.errors import ConfigError
from hookkit.methods.alora import VARIANTS, ALoRA
from hookkit.methods.lora import LoRA

MODELS = [*TEXT_TINY, "tiny-llava"]


def randomise(iv, info, seed: int = 0, keep_zero: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """Give every adapter tensor random values (except names containing ``keep_zero``), so tests see real effects."""
    iv.build(info)
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for key, value in iv.tensors().items():
        if any(z in key for z in keep_zero):
            tensors[key] = torch.zeros_like(value)
        else:
            tensors[key] = torch.randn(value.shape, generator=gen) * 0.1
    iv.load_tensors(tensors)
    return tensors


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("batch_size", [1, 2])
def test_b_zero_equals_base(name: str, batch_size: int) -> None:
    model, processor, info = load_tiny(name)
    batch = build_batch(info, processor, batch_size)
    stock, stock_prefill = generate(model, info, batch), prefill_logits(model, batch)
    iv = ALoRA()
    randomise(iv, info, keep_zero=("lora_B",))  # everything random except B
    with hookkit.attach(model, iv) as session:
        hooked, hooked_prefill = generate(model, info, batch), prefill_logits(model, batch)
        assert session.states[iv]["cache"]  # the adapter ran and cached its keys
    assert torch.equal(stock.sequences, hooked.sequences)
    assert max_logit_diff(stock, hooked) <= 1e-5
    assert masked_max_diff(stock_prefill, hooked_prefill, batch["attention_mask"]) <= 1e-5


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_fresh_adapter_equals_base_every_variant(variant: str) -> None:
    model, processor, info = load_tiny("tiny-llama")
    batch = build_batch(info, processor, 2)
    stock = generate(model, info, batch)
    with hookkit.attach(model, ALoRA(variant=variant, num_heads=2)):
        hooked = generate(model, info, batch)
    assert torch.equal(stock.sequences, hooked.sequences)
    assert max_logit_diff(stock, hooked) <= 1e-5


def test_random_adapter_changes_the_model() -> None:
    model, processor, info = load_tiny("tiny-llama")
    batch = build_batch(info, processor, 2)
    stock = prefill_logits(model, batch)
    iv = ALoRA()
    randomise(iv, info)
    with hookkit.attach(model, iv):
        hooked = prefill_logits(model, batch)
    assert masked_max_diff(stock, hooked, batch["attention_mask"]) > 1e-3


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-qwen2"])
def test_w_o_zero_equals_plain_lora(name: str) -> None:
    model, processor, info = load_tiny(name)
    batch = build_batch(info, processor, 2)
    alora, lora = ALoRA(dropout=0.0), LoRA(dropout=0.0)
    tensors = randomise(alora, info, keep_zero=("attn_o",))
    lora.build(info)
    lora.load_tensors({k: tensors[k] for k in lora.tensors()})  # same A and B
    with hookkit.attach(model, alora):
        a = generate(model, info, batch)
    with hookkit.attach(model, lora):
        b = generate(model, info, batch)
    assert torch.equal(a.sequences, b.sequences)
    assert max_logit_diff(a, b) <= 1e-6


def test_lora_equals_peft() -> None:
    from peft import LoraConfig, get_peft_model

    model, processor, info = load_tiny("tiny-llama")
    batch = build_batch(info, processor, 2)
    lora = LoRA(rank=4, alpha=8, dropout=0.0)
    tensors = randomise(lora, info)
    with hookkit.attach(model, lora):
        ours = prefill_logits(model, batch)
    peft_model = get_peft_model(copy.deepcopy(model), LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                                                                 target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, module in peft_model.named_modules():
            if hasattr(module, "lora_A") and "default" in getattr(module, "lora_A", {}):
                layer = int(name.split(".layers.")[1].split(".")[0])
                target = "self_attn." + name.rsplit(".", 1)[1]
                module.lora_A["default"].weight.copy_(tensors[f"layers.{layer}.{target}.lora_A.weight"])
                module.lora_B["default"].weight.copy_(tensors[f"layers.{layer}.{target}.lora_B.weight"])
    theirs = prefill_logits(peft_model, batch)
    assert masked_max_diff(ours, theirs, batch["attention_mask"]) <= 1e-5
    assert masked_max_diff(ours, prefill_logits(model, batch), batch["attention_mask"]) > 1e-3


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("batch_size", [1, 2])
def test_cached_decode_equals_full_recompute(variant: str, batch_size: int) -> None:
    model, processor, info = load_tiny("tiny-llama")
    batch = build_batch(info, processor, batch_size)
    iv = ALoRA(variant=variant, dropout=0.0)
    randomise(iv, info)
    with hookkit.attach(model, iv):
        out = generate(model, info, batch, new_tokens=5)
        full_mask = torch.cat([batch["attention_mask"], torch.ones(batch_size, 5, dtype=torch.long)], 1)
        with torch.no_grad():
            full = model(input_ids=out.sequences, attention_mask=full_mask).logits
    prompt = batch["input_ids"].shape[1]
    for step, logits in enumerate(out.logits):  # logits of step s predict token prompt + s
        assert (logits - full[:, prompt - 1 + step]).abs().max() <= 1e-5, step


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_no_information_from_future_tokens(variant: str) -> None:
    model, processor, info = load_tiny("tiny-llama")
    iv = ALoRA(variant=variant, dropout=0.0)
    randomise(iv, info)
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(3, 200, (1, 12), generator=gen)
    changed = ids.clone()
    changed[0, 8:] = torch.randint(3, 200, (4,), generator=gen)
    with hookkit.attach(model, iv), torch.no_grad():
        a, b = model(input_ids=ids).logits, model(input_ids=changed).logits
    assert torch.equal(a[:, :8], b[:, :8])  # positions before the perturbation are bit-identical
    assert (a[:, 8:] - b[:, 8:]).abs().max() > 1e-4


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-qwen2", "tiny-llava"])
def test_left_padded_batch_equals_unbatched(name: str) -> None:
    model, processor, info = load_tiny(name)
    batch = build_batch(info, processor, 2)
    iv = ALoRA(dropout=0.0)
    randomise(iv, info)
    with hookkit.attach(model, iv):
        both = generate(model, info, batch)
        for row in range(2):
            keep = batch["attention_mask"][row].bool()
            single = {k: (v[row:row + 1][:, keep] if k in ("input_ids", "attention_mask") else v)
                      for k, v in batch.items()}
            if "pixel_values" in batch:
                single["pixel_values"] = batch["pixel_values"][row:row + 1]
            alone = generate(model, info, single)
            new = alone.sequences.shape[1] - int(keep.sum())
            assert torch.equal(both.sequences[row, -new:], alone.sequences[0, -new:])
            assert max((x[row] - y[0]).abs().max().item() for x, y in zip(both.logits, alone.logits)) <= 1e-5


def test_parameter_count_is_lora_plus_attention() -> None:
    model, _, info = load_tiny("tiny-llama")
    r = 8
    alora, lora = ALoRA(rank=r), LoRA(rank=r)
    alora.build(info)
    lora.build(info)
    modules = info.num_layers * 2
    assert alora.num_trainable_parameters() - lora.num_trainable_parameters() == modules * 4 * r * r


@pytest.mark.parametrize("params,field", [
    ({"num_heads": 3}, "alora.num_heads"),
    ({"variant": "Z"}, "alora.variant"),
    ({"rank": 0}, "alora.rank"),
    ({"dropout": 1.0}, "alora.dropout"),
    ({"target_modules": ["self_attn.nope"]}, "alora.target_modules"),
    ({"target_modules": []}, "alora.target_modules"),
    ({"variant": "input", "num_heads": 5}, "alora.num_heads"),
])
def test_config_errors_name_the_field(params: dict, field: str) -> None:
    model, _, _ = load_tiny("tiny-llama")
    with pytest.raises(ConfigError) as exc:
        hookkit.attach(model, ALoRA(**params))
    assert exc.value.field == field


def test_letter_aliases_of_variants() -> None:
    model, processor, info = load_tiny("tiny-llama")
    with hookkit.attach(model, ALoRA(variant="D")):
        pass

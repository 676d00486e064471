"""VAR: visual attention sink redistribution.

Kang et al., "See What You Are Told: Visual Attention Sink in Large Multimodal Models", ICLR 2025
(arXiv 2503.03321); reference: ../shared/reference/methods-lvlm.md §2 (the paper is known mostly second-hand; the
released code ``seilk/VisAttnSink`` was read in full).

1. **Sinks** (§2.1): at prefill, for every layer l ≥ 2, on the hidden state *entering* the layer,
   φ(x) = max_{d ∈ D_sink} |x[d]| / RMS(x) (fp32, RMS over all dims, eps 1e-6, no learned RMSNorm weight);
   a token is a sink when φ > τ (strict, as the code). Sinks can be text (BOS) or visual tokens. Generated tokens
   are never sinks. D_sink is a property of the base LLM (table below) or found automatically.
2. **Image-centric rows** (§2.2): for layer l, head h and a text query after the image, with image mass
   vis = Σ_{image} α and non-sink visual share r = Σ_{image ∖ sinks} α / vis, the row is selected when
   vis ≥ summ (0.2) and r ≥ ρ (paper convention; the code's ``rho`` is 1 − ρ, author in issue #5). A layer with no
   visual sink in a sample selects nothing there, as in the code.
3. **Redistribution** (§2.3): in a selected row, every sink column (text and visual) keeps 1 − p_move of its
   attention; the budget Ω = p_move · Σ_{sinks} α goes to the non-sink image columns in proportion to their
   current attention. Row sums are unchanged (no renormalisation).
4. **Where** (§2.4): text queries after the image at prefill and every decoding step; layers 0–1 and the last
   layer are never edited.

Parameter conventions (§2.6): the released config's ``p: 0.6`` is the fraction *kept*, so it moves 0.4; the paper
reading moves 0.6. Which produced the paper's numbers is unknown, so both are named: ``p_move`` (fraction moved),
``p_code`` (fraction kept, = 1 − p_move) and ``reading="code"|"paper"`` choosing the default (0.4 | 0.6). Likewise
``rho`` (paper) and ``rho_code`` (= 1 − rho).

Bugs of the released code not copied (§2.10): sinks are detected for every sample (not only the first; the state
is per sample, never class-level); the last layer really is skipped; inputs keep the tokenizer's BOS; batches of
any size with per-row image positions and sinks; fp32 edits; no stored attentions or hidden states.

Cost: only the rows VAR may edit are materialised (the post-image text at prefill, one row per decoding step),
and only in layers where the sample has a visual sink; everything else stays on sdpa.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from hookkit.core.intervention import AttnCall, Binding, HookContext, Intervention, SampleInfo
from hookkit.core.regions import Region
from hookkit.core.sites import Site
from hookkit.errors import ConfigError, check_bool, check_choice, check_int, check_int_list, check_range
from hookkit.models.base import ModelInfo

#: Sink dimensions of base LLMs (methods-lvlm.md §2.1, §2.6; code constants for the LLaMA-2 entries).
SINK_DIMS: dict[str, tuple[int, ...]] = {
    "llama-2-7b": (1415, 2533),
    "llama-2-13b": (2100, 4743),
    "qwen2-vl-7b": (458, 2570),
    "internvl2-8b": (3584,),
}
READINGS = {"code": 0.4, "paper": 0.6}  # default fraction moved for each reading of p
RMS_EPS = 1e-6


def published_sink_dims(model: ModelInfo) -> tuple[str, tuple[int, ...]] | None:
    """(base name, dims) when the model's family adapter names a base LLM with published sink dims, else None."""
    base = model.adapter.sink_base_model(model)
    return (base, SINK_DIMS[base]) if base in SINK_DIMS else None


def sink_scores(hidden: torch.Tensor, dims: torch.Tensor) -> torch.Tensor:
    """φ per token: max over the sink dims of |x[d]| / RMS(x), in fp32. ``dims``: bool ``[B|1, hidden]``."""
    x = hidden.float()
    normed = x.abs() / x.pow(2).mean(-1, keepdim=True).add(RMS_EPS).sqrt()
    return normed.masked_fill(~dims[:, None, :], 0.0).amax(-1)


def massive_dims(hidden: torch.Tensor, first: torch.Tensor, tau: float) -> torch.Tensor:
    """Automatic sink dims: per row, the dims whose RMS-normalised |activation| exceeds τ on the first real token.

    ``first``: ``[B]`` slot of each row's first non-padding token. Returns bool ``[B, hidden]``.
    """
    x = hidden.float()[torch.arange(hidden.shape[0], device=hidden.device), first]  # [B, hidden]
    return x.abs() / x.pow(2).mean(-1, keepdim=True).add(RMS_EPS).sqrt() > tau


@dataclass(frozen=True)
class VARSettings:
    """VAR's parameters resolved for one model (paper conventions): what ``bind`` hands to every sample."""

    p_move: float  # fraction of the sink attention moved to the image
    rho: float  # min non-sink share of the image attention
    dims: tuple[int, ...] | None  # sink dims; None = found per sample
    layers: tuple[int, ...]


@dataclass
class VARState:
    cfg: VARSettings
    prompt_length: int
    image: torch.Tensor  # [B, S] image slots of the prompt
    pad: torch.Tensor  # [B, S]
    sinks: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> [B, S] sink slots
    visual_sink: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> [B]: any visual sink in the row
    dims: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> [B, hidden] dims used
    stats: dict[str, float] = field(default_factory=lambda: {"rows_selected": 0.0, "mass_moved": 0.0})


@dataclass(eq=False)
class VAR(Intervention):
    """Visual attention sink redistribution: move sink attention to image tokens in image-centric heads (ICLR 2025)."""

    name = "var"
    requires_vision = True

    tau: float = field(default=20.0, metadata={"help": "sink threshold on the RMS-normalised sink dims (strict >)"})
    rho: float | None = field(default=None, metadata={
        "help": "paper convention: min non-sink share of the image attention (default 0.5; 0.8 general VL, "
                "0.9 vision-centric)"})
    rho_code: float | None = field(default=None, metadata={"help": "released-code convention: max sink share (= 1 - rho)"})
    summ: float = field(default=0.2, metadata={"help": "min attention mass on the image for a row to be edited"})
    p_move: float | None = field(default=None, metadata={"help": "fraction of all sink attention moved to the image"})
    p_code: float | None = field(default=None, metadata={"help": "released-code convention: fraction kept (= 1 - p_move)"})
    reading: str = field(default="code", metadata={
        "help": "default p when neither p_move nor p_code is given: code (moves 0.4) | paper (moves 0.6)"})
    sink_dims: Any = field(default="default", metadata={
        "help": "list of dims, a base name (" + ", ".join(SINK_DIMS) + "), 'auto' (per-sample finder), or "
                "'default' (published dims when the base LLM is known, else auto)"})
    first_layer: int = field(default=2, metadata={"help": "first edited layer (sinks appear from layer 2)"})
    skip_last_layer: bool = field(default=True, metadata={"help": "never edit the last layer (paper and config)"})

    # ------------------------------------------------------------------ validation
    def bind(self, model: ModelInfo) -> Binding:
        check_range("var.tau", self.tau, low=0.0, low_inclusive=False)
        check_range("var.summ", self.summ, low=0.0, high=1.0)
        readings = self.effective
        dims = self._resolve_dims(model)
        check_int("var.first_layer", self.first_layer, low=0, high=model.num_layers - 1)
        check_bool("var.skip_last_layer", self.skip_last_layer)
        last = model.num_layers - 1 if self.skip_last_layer else model.num_layers
        layers = tuple(range(self.first_layer, last))
        if not layers:
            raise ConfigError("var.first_layer", f"no layer left to edit in a {model.num_layers}-layer model "
                              f"(layers >= {self.first_layer}{', last skipped' if self.skip_last_layer else ''})")
        settings = VARSettings(readings["p_move"], readings["rho"], dims, layers)
        return Binding({Site.LAYER_INPUT: frozenset(layers), Site.PROBS: frozenset(layers)}, resolved=settings)

    def _resolve_dims(self, model: ModelInfo) -> tuple[int, ...] | None:
        dims = self.sink_dims
        if dims == "auto":
            return None
        if dims == "default":
            found = published_sink_dims(model)
            return None if found is None else found[1]
        if isinstance(dims, str):
            if dims not in SINK_DIMS:
                raise ConfigError("var.sink_dims", f"unknown base model {dims!r}", ["auto", "default", *SINK_DIMS])
            dims = SINK_DIMS[dims]
        return tuple(check_int_list("var.sink_dims", dims, low=0, high=model.hidden_size - 1))

    def writes(self, site: Site) -> bool:
        return site != Site.LAYER_INPUT  # VAR only reads the layer inputs (sink detection)

    @property
    def effective(self) -> dict[str, float]:
        """p_move and rho in the paper's conventions, whichever convention and reading the parameters use."""
        if self.rho is not None and self.rho_code is not None:
            raise ConfigError("var.rho", "give rho (paper) or rho_code (released code), not both")
        if self.p_move is not None and self.p_code is not None:
            raise ConfigError("var.p_move", "give p_move (fraction moved) or p_code (fraction kept), not both")
        check_choice("var.reading", self.reading, list(READINGS))
        if self.rho_code is not None:
            rho = 1.0 - check_range("var.rho_code", self.rho_code, low=0.0, high=1.0)
        else:
            rho = check_range("var.rho", 0.5 if self.rho is None else self.rho, low=0.0, high=1.0)
        if self.p_code is not None:
            p_move = 1.0 - check_range("var.p_code", self.p_code, low=0.0, high=1.0)
        else:
            p_move = check_range("var.p_move", READINGS[self.reading] if self.p_move is None else self.p_move,
                                 low=0.0, high=1.0)
        return {"p_move": p_move, "rho": rho}

    # ------------------------------------------------------------------ state
    def new_state(self, sample: SampleInfo) -> VARState:
        return VARState(cfg=sample.resolved, prompt_length=sample.prompt_length, image=sample.regions == Region.IMAGE,
                        pad=sample.regions == Region.PADDING)

    def select_rows(self, state: VARState, rows: torch.Tensor) -> VARState:
        state.image, state.pad = state.image[rows], state.pad[rows]
        state.sinks = {k: v[rows] for k, v in state.sinks.items()}
        state.visual_sink = {k: v[rows] for k, v in state.visual_sink.items()}
        state.dims = {k: v[rows] for k, v in state.dims.items()}
        return state

    # ------------------------------------------------------------------ sink detection (layer input, prefill)
    def layer_input(self, ctx: HookContext, state: VARState, hidden: torch.Tensor) -> None:
        if not ctx.is_prefill:
            return None  # decoding detects no new sinks: generated tokens are never sinks (§2.1)
        layer = ctx.layer
        pad = state.pad.to(hidden.device)
        if state.cfg.dims is None:
            first = (~pad).int().argmax(dim=1)
            dims = massive_dims(hidden, first, self.tau)
        else:
            dims = torch.zeros(1, hidden.shape[-1], dtype=torch.bool, device=hidden.device)
            dims[0, list(state.cfg.dims)] = True
        state.dims[layer] = dims
        sinks = (sink_scores(hidden, dims) > self.tau) & ~pad
        state.sinks[layer] = sinks
        visual = (sinks & state.image.to(sinks.device)).any(dim=1)
        # A layer without any visual sink selects nothing (§2.2): drop it now so decoding skips it for free.
        if bool(visual.any()):
            state.visual_sink[layer] = visual
        return None

    # ------------------------------------------------------------------ redistribution (probabilities)
    def prob_rows(self, call: AttnCall, state: VARState) -> torch.Tensor | None:
        has_visual_sink = state.visual_sink.get(call.layer)  # [B]
        if has_visual_sink is None:
            return None  # no visual sink in this layer: VAR does nothing here (§2.2, as the code)
        if call.is_prefill:
            rows = call.query_mask(Region.TEXT_AFTER_IMAGE)
        else:  # every decoding step (generated tokens; a replayed prompt slot would be text after the image)
            rows = call.query_mask(Region.GENERATED) | call.query_mask(Region.TEXT_AFTER_IMAGE)
        return rows & has_visual_sink.to(rows.device)[:, None]

    def edit_probs(self, call: AttnCall, state: VARState, probs: torch.Tensor, rows: torch.Tensor,
                   row_mask: torch.Tensor) -> torch.Tensor:
        k_slots = call.k_slots
        in_prompt = k_slots < state.prompt_length
        prompt_slot = k_slots.clamp(max=state.prompt_length - 1)
        # [B, K]; a sliding window may hold only some of the layer's sinks
        sinks = state.sinks[call.layer].to(probs.device)[:, prompt_slot] & in_prompt
        image = call.key_mask(Region.IMAGE).to(probs.device)
        nonsink_image = image & ~sinks
        has_visual_sink = state.visual_sink[call.layer].to(probs.device)  # [B], over the whole layer

        p = probs
        vis = (p * image[:, None, None]).sum(-1)  # [B, H, R]
        nonsink = (p * nonsink_image[:, None, None]).sum(-1)
        share = nonsink / vis.clamp_min(1e-12)
        selected = (row_mask[:, None, :] & has_visual_sink[:, None, None] & (vis >= self.summ)
                    & (share >= state.cfg.rho) & (nonsink > 0))
        if not bool(selected.any()):
            return probs
        sink_mass = (p * sinks[:, None, None]).sum(-1)  # all sinks, text and visual (§2.3)
        budget = state.cfg.p_move * sink_mass
        sel = selected[..., None]
        scaled_sinks = torch.where(sel & sinks[:, None, None], p * (1.0 - state.cfg.p_move), p)
        gain = (budget / nonsink.clamp_min(1e-12))[..., None] * p  # Ω · α_j / Σ_{non-sink image} α
        out = torch.where(sel & nonsink_image[:, None, None], scaled_sinks + gain, scaled_sinks)
        state.stats["rows_selected"] += float(selected.sum())
        state.stats["mass_moved"] += float((budget * selected).sum())
        return out


def find_sink_dims(model: torch.nn.Module, processor: Any, prompts: list[str], images: list[Any], *,
                   tau: float = 20.0, first_layer: int = 2) -> list[int]:
    """Dims with a massive RMS-normalised activation on the first token at layers ≥ ``first_layer``.

    For models with no published sink dims (methods-lvlm.md §2.1): runs the prompts once and returns the union,
    over rows and layers, of the dims above ``tau`` on each row's first real token. It only reads hidden states
    (plain forward pre-hooks), so it also works while a hookkit session is attached.
    """
    import hookkit

    info = hookkit.get_model_info(model)
    batch = info.adapter.build_inputs(processor, prompts, images)
    first = batch["attention_mask"].int().argmax(dim=1)  # left padding: the first 1 is the first real token
    found: set[int] = set()

    def read(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        found.update(massive_dims(hidden, first.to(hidden.device), tau).any(0).nonzero().flatten().tolist())

    handles = [layer.register_forward_pre_hook(read, with_kwargs=True)
               for layer in info.decoder_layers[first_layer:]]
    try:
        with torch.no_grad():
            model(**batch)
    finally:
        for handle in handles:
            handle.remove()
    return sorted(found)

"""The interface every hookkit method implements, and the context objects its callbacks receive.

An intervention is plain configuration plus callbacks (in the spirit of PEFT's config/layer split):

* ``bind(model)`` validates the parameters against the model and returns a ``Binding``: the **sites** it touches,
  per layer, and the parameters it **resolved** for that model. It changes neither the model nor itself: a failed
  bind leaves nothing half-applied.
* ``new_state(sample)`` creates the per-sample state from ``sample.resolved`` (and the sample). The session calls
  it at every new input (every prefill) and passes the result back to every callback as ``state``. Nothing lives
  in class-level globals.
* One callback per declared site (see ``hookkit.core.sites.Site``). A callback that returns ``None`` leaves the
  tensor untouched, so a no-op costs a Python call and nothing else.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from hookkit.compat import sdpa_attention
from hookkit.core.regions import Region, region_from_name
from hookkit.core.sites import Site
from hookkit.errors import ConfigError

if TYPE_CHECKING:
    from hookkit.models.base import ModelInfo

SitePlan = dict[Site, frozenset[int]]  # site -> layer indices (empty for model-level sites such as logits)
_UNCHANGED: Any = object()  # AttnCall.stock(attention_mask=...) default: keep the call's own mask


@dataclass
class Binding:
    """``Intervention.bind``'s answer for one model.

    ``sites``: the layers it touches per site; ``linear_targets``: the sub-modules its ``LINEAR`` site hooks;
    ``resolved``: the parameters it resolved for this model (defaults filled in, validated), handed back to it as
    ``SampleInfo.resolved`` in every ``new_state``. Keeping them here rather than on ``self`` leaves an intervention
    pure configuration, so the same instance can be bound to another model without stale values.
    """

    sites: SitePlan
    linear_targets: tuple[str, ...] = ()
    resolved: Any = None


@dataclass
class SampleInfo:
    """What is known about a new input when its state is created (at prefill)."""

    batch_size: int
    prompt_length: int
    regions: torch.Tensor  # [B, S] Region codes of the prompt
    input_ids: torch.Tensor  # [B, S]
    model: ModelInfo
    #: per-sample options an orchestrator handed to this intervention (e.g. VHR's paired no-image rows)
    extras: dict[str, Any] = field(default_factory=dict)
    #: what this intervention's ``bind`` resolved for the model (``Binding.resolved``)
    resolved: Any = None


@dataclass
class ForwardContext:
    """One forward pass of the model: the prefill (step 0) or one cached decode step."""

    step: int  # 0 at prefill, then 1, 2, ... per cached forward of the same sample
    past_length: int  # slots already in the cache before this forward
    query_length: int  # new tokens in this forward
    tracker: Any  # hookkit.core.regions.TokenTracker
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def is_prefill(self) -> bool:
        return self.past_length == 0

    @property
    def total_length(self) -> int:
        return self.past_length + self.query_length


@dataclass
class HookContext:
    """Passed to module-level callbacks (layer input, attention input, head output, logits)."""

    forward: ForwardContext
    layer: int | None  # None for model-level sites

    @property
    def is_prefill(self) -> bool:
        return self.forward.is_prefill

    def query_mask(self, region: Region | str) -> torch.Tensor:
        """``[B, Q]`` mask of this forward's tokens that belong to ``region``."""
        tracker = self.forward.tracker
        return tracker.mask(region, slice(tracker.total - self.forward.query_length, tracker.total))


class AttnCall:
    """Everything an attention-level callback may need about one attention call of one text layer.

    ``query`` is ``[B, Hq, Q, D]`` after RoPE; ``key``/``value`` are ``[B, Hkv, K, D]`` *after* the cache update,
    so K counts cache slots. Query head ``h`` reads KV head ``h // n_rep``. Region lookups are lazy.
    """

    __slots__ = ("layer", "module", "query", "key", "value", "attention_mask", "scaling", "kwargs", "forward",
                 "_base", "_q_slots", "_k_slots", "_key_regions", "_query_regions", "_base_bias")

    def __init__(self, layer: int, module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
                 value: torch.Tensor, attention_mask: torch.Tensor | None, scaling: float, kwargs: dict[str, Any],
                 forward: ForwardContext, base: Callable[..., Any] | None = None):
        self.layer, self.module = layer, module
        self.query, self.key, self.value = query, key, value
        self.attention_mask, self.scaling, self.kwargs = attention_mask, scaling, kwargs
        self.forward = forward
        self._base = base
        self._q_slots = self._k_slots = self._key_regions = self._query_regions = self._base_bias = None

    # ----------------------------------------------------------------- stock attention
    def stock(self, query: torch.Tensor | None = None, key: torch.Tensor | None = None,
              value: torch.Tensor | None = None, attention_mask: Any = _UNCHANGED) -> torch.Tensor:
        """The layer's stock attention output ``[B, Q, Hq, D]``: the base backend the session would have called
        (transformers' sdpa, or the modeling file's own eager function) on this call's tensors or replacements.

        On this call's own tensors it is exactly what the unhooked model computes, so methods use it as their
        pass-through (``attention_mask`` must then be in the base backend's format: bool/None for sdpa, additive
        float for eager).
        """
        if self._base is None:
            raise RuntimeError("this AttnCall was built without its base attention function")
        mask = self.attention_mask if attention_mask is _UNCHANGED else attention_mask
        out, _ = self._base(self.module, self.query if query is None else query, self.key if key is None else key,
                            self.value if value is None else value, mask, scaling=self.scaling, **self.kwargs)
        return out

    def sdpa(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
             attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """transformers' sdpa attention of ``query [B, Hq, Q, D]`` over ``key``/``value [B, Hkv, K, D]`` with this
        call's scaling (GQA handled), output ``[B, Q, Hq, D]``, whatever the base backend.

        ``attention_mask``: bool (True = attend), additive float, or None (causal when Q > 1, else every key).
        """
        kwargs = {k: v for k, v in self.kwargs.items() if k != "position_ids"}  # rows may be a sub-batch
        return sdpa_attention(self.module, query, key, value, attention_mask, scaling=self.scaling, **kwargs)[0]

    # ----------------------------------------------------------------- shapes
    @property
    def batch_size(self) -> int:
        return self.query.shape[0]

    @property
    def num_heads(self) -> int:
        return self.query.shape[1]

    @property
    def num_kv_heads(self) -> int:
        return self.key.shape[1]

    @property
    def n_rep(self) -> int:
        return self.query.shape[1] // self.key.shape[1]

    @property
    def q_len(self) -> int:
        return self.query.shape[2]

    @property
    def k_len(self) -> int:
        return self.key.shape[2]

    @property
    def is_prefill(self) -> bool:
        return self.forward.is_prefill

    # ----------------------------------------------------------------- slots and regions
    @property
    def q_slots(self) -> torch.Tensor:
        """Cache slot of every query, ``[Q]``."""
        if self._q_slots is None:
            total = self.forward.total_length
            self._q_slots = torch.arange(total - self.q_len, total, device=self.query.device)
        return self._q_slots

    @property
    def k_slots(self) -> torch.Tensor:
        """Cache slot of every key, ``[K]``: the last K slots (dynamic caches; sliding layers keep fewer)."""
        if self._k_slots is None:
            total = self.forward.total_length
            if self.k_len > total:
                raise NotImplementedError("the cache returned more keys than tokens seen (a StaticCache?); "
                                          "hookkit's region tracking supports dynamic caches only")
            self._k_slots = torch.arange(total - self.k_len, total, device=self.key.device)
        return self._k_slots

    @property
    def key_regions(self) -> torch.Tensor:
        """Region code of every key, ``[B, K]`` int8."""
        if self._key_regions is None:
            self._key_regions = self.forward.tracker.regions[:, self.k_slots.to(self.forward.tracker.regions.device)]
        return self._key_regions

    @property
    def query_regions(self) -> torch.Tensor:
        """Region code of every query, ``[B, Q]`` int8."""
        if self._query_regions is None:
            total = self.forward.total_length
            self._query_regions = self.forward.tracker.regions[:, total - self.q_len:total]
        return self._query_regions

    def key_mask(self, region: Region | str) -> torch.Tensor:
        return self.key_regions == int(region_from_name(region))

    def query_mask(self, region: Region | str) -> torch.Tensor:
        return self.query_regions == int(region_from_name(region))

    # ----------------------------------------------------------------- masks
    def base_bias(self) -> torch.Tensor:
        """The model's own mask as an additive float tensor ``[B|1, 1, Q, K]`` (0 attend, finfo.min masked).

        sdpa hands us a bool mask, or ``None`` when the mask is plain causal (no padding, and Q == 1 or Q == K).
        For ``None`` we rebuild the causal mask aligned to the last query, which equals sdpa's ``is_causal``
        whenever sdpa is allowed to skip the mask (transformers-v5.md §6 item 3).
        """
        if self._base_bias is None:
            self._base_bias = additive_mask(self.attention_mask, self.q_len, self.k_len, self.query.dtype,
                                            self.query.device)
        return self._base_bias


def additive_mask(mask: torch.Tensor | None, q_len: int, k_len: int, dtype: torch.dtype,
                  device: torch.device) -> torch.Tensor:
    min_value = torch.finfo(dtype).min
    if mask is None:
        if q_len == 1:
            return torch.zeros(1, 1, 1, k_len, dtype=dtype, device=device)
        q_pos = torch.arange(k_len - q_len, k_len, device=device)[:, None]
        allowed = torch.arange(k_len, device=device)[None, :] <= q_pos
        return torch.zeros(q_len, k_len, dtype=dtype, device=device).masked_fill(~allowed, min_value)[None, None]
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=device).masked_fill(~mask, min_value)
    return mask.to(dtype)


class Intervention:
    """Base class of hookkit methods. Subclasses override ``bind`` and the callbacks of their sites."""

    #: registry name of the method (``hookkit list`` shows it)
    name: ClassVar[str] = "intervention"
    #: True for methods that need an image in the prompt (VHR, VAR): refused on text-only models
    requires_vision: ClassVar[bool] = False
    #: True for methods that keep nothing per batch row across decoding steps, so generation modes that reorder or
    #: crop the KV cache (beam search, assisted decoding) cannot desynchronise them; the others are refused there
    supports_cache_reordering: ClassVar[bool] = False

    def bind(self, model: ModelInfo) -> Binding | SitePlan:
        """Validate against ``model`` and return a ``Binding`` (sites per layer, linear targets, resolved
        parameters), or just the sites per layer. Must not modify the model, nor ``self``."""
        raise NotImplementedError

    def new_state(self, sample: SampleInfo) -> Any:
        """Per-sample state, created at every prefill and passed back to every callback."""
        return None

    def writes(self, site: Site) -> bool:
        """Whether this method changes ``site`` (True) or only reads it; readers never conflict with writers."""
        return True

    def reference_branch(self) -> str | None:
        """``"lockstep"`` or ``"probe"`` when the method compares each prompt with its no-image version (VHR);
        ``hookkit.generation.generate`` then runs that branch. None (the default) for everything else."""
        return None

    def probe_result(self, state: Any) -> dict[str, Any]:
        """After a ``"probe"`` pass: what to hand to the real generation as per-sample extras."""
        return {}

    def select_rows(self, state: Any, rows: torch.Tensor) -> Any:
        """Keep only batch ``rows`` of ``state`` (after a lock-step prefill dropped its reference rows)."""
        if state is None:
            return None
        raise NotImplementedError(f"{self.name} cannot drop batch rows of its state, so it cannot be combined "
                                  "with a lock-step reference branch (VHR)")

    @classmethod
    def parameters(cls) -> list[dict[str, Any]]:
        """Name, default and help of every parameter (the dataclass fields and their ``metadata["help"]``)."""
        params = []
        for f in dataclasses.fields(cls):
            if not f.init or f.name.startswith("_"):
                continue
            if f.default is not dataclasses.MISSING:
                default = f.default
            elif f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
            else:
                default = None
            params.append({"name": f.name, "default": default, "help": f.metadata.get("help", "")})
        return params

    @classmethod
    def from_params(cls, params: dict[str, Any] | None = None) -> Intervention:
        """An instance from a parameter dict; an unknown name is a ``ConfigError`` listing the allowed ones."""
        params = dict(params or {})
        allowed = [p["name"] for p in cls.parameters()]
        unknown = sorted(set(params) - set(allowed))
        if unknown:
            raise ConfigError(f"{cls.name}.{unknown[0]}", "unknown parameter", allowed)
        return cls(**params)

    def params(self) -> dict[str, Any]:
        """JSON-serialisable parameters (for recipes): by default the dataclass fields; tensors go in ``tensors()``."""
        if dataclasses.is_dataclass(self):
            return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                    if f.init and not f.name.startswith("_")}
        return {}

    def tensors(self) -> dict[str, torch.Tensor]:
        """Tensors that belong in the recipe's safetensors file (fixed head sets, learned routers...)."""
        return {}

    def describe(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{self.name}({args})"

    # ---------------------------------------------------------------- module-level sites
    def layer_input(self, ctx: HookContext, state: Any, hidden: torch.Tensor) -> torch.Tensor | None:
        return None

    def attn_input(self, ctx: HookContext, state: Any, hidden: torch.Tensor) -> None:
        return None

    def head_output(self, ctx: HookContext, state: Any, heads: torch.Tensor) -> torch.Tensor | None:
        """``heads``: ``[B, S, num_heads, head_dim]``; return a replacement or None."""
        return None

    def logits(self, ctx: HookContext, state: Any, logits: torch.Tensor) -> None:
        return None

    def linear_targets(self) -> list[str]:
        """Sub-module paths inside a decoder layer hooked by the ``LINEAR`` site, e.g. ``["self_attn.q_proj"]``,
        for methods whose ``bind`` returns a plain site plan (a ``Binding`` names them itself)."""
        return []

    def linear_output(self, ctx: HookContext, state: Any, target: str, inputs: torch.Tensor,
                      output: torch.Tensor) -> torch.Tensor | None:
        """Return a replacement for ``output`` of ``target`` (``inputs`` is the module input), or None."""
        return None

    # ---------------------------------------------------------------- attention-level sites
    def score_bias(self, call: AttnCall, state: Any) -> torch.Tensor | None:
        """Additive pre-softmax bias ``[B|1, Hq|1, Q|1, K]`` in the query dtype, or None."""
        return None

    def prob_rows(self, call: AttnCall, state: Any) -> torch.Tensor | None:
        """Bool ``[B, Q]``: the query rows ``edit_probs`` may change in this call, or None for none."""
        return None

    def edit_probs(self, call: AttnCall, state: Any, probs: torch.Tensor, rows: torch.Tensor,
                   row_mask: torch.Tensor) -> torch.Tensor:
        """Edit fp32 probabilities ``[B, Hq, R, K]`` of query rows ``rows`` (indices into Q).

        ``row_mask`` ``[B, R]`` says which (batch row, query row) pairs this intervention asked for; the others
        were materialised for another intervention or for a neighbouring batch row and must be returned as is.
        """
        return probs

    def attention(self, call: AttnCall, state: Any) -> torch.Tensor:
        """Compute the attention output ``[B, Q, Hq, D]`` of the layer (the ``ATTENTION`` site)."""
        raise NotImplementedError

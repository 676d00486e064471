"""Scoped attach/detach of interventions on a loaded model.

    with hookkit.attach(model, [VHR(alpha=2.0)]) as session:
        out = model.generate(**inputs)

``attach`` validates everything first (each intervention's ``bind``, conflicts between them, a second session on
the same model) and only then touches the model; if installing fails half-way, what was installed is removed
again. ``detach`` (also run by ``__exit__``, so also when ``generate`` raised) removes every hook and attribute
hookkit added and restores the text tower's previous attention implementation.

The session owns all per-sample state: a token tracker (regions of every cache slot) and one state object per
intervention, recreated at every prefill.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from hookkit import compat
from hookkit.core.attention import EAGER_NAME, LAYER_ATTR, SDPA_NAME, LayerAttention, register_attention_functions
from hookkit.core.intervention import Binding, ForwardContext, HookContext, Intervention, SampleInfo, SitePlan
from hookkit.core.regions import REGION_NAMES, TokenTracker
from hookkit.core.sites import ATTENTION_LEVEL_SITES, MODEL_LEVEL_SITES, READ_ONLY_SITES, Site
from hookkit.errors import AttachError, ConfigError, InputError, UnsupportedModelError
from hookkit.models.base import ModelInfo, inspect_model
from hookkit.models.families import adapter_for

SESSION_ATTR = "_hookkit_session"
#: cache implementations whose keys are not the last K tracked slots (transformers-v5.md §3.2)
STATIC_CACHES = frozenset({"static", "offloaded_static", "sliding_window", "hybrid", "hybrid_chunked"})
_SUPPORTED_BASES = {"sdpa": SDPA_NAME, "eager": EAGER_NAME}


def get_model_info(model: nn.Module) -> ModelInfo:
    """Discover the text stack of ``model`` (raises ``UnsupportedModelError`` naming what is missing)."""
    return inspect_model(model, adapter_for(model))


@dataclass
class _Bound:
    intervention: Intervention
    binding: Binding

    @property
    def plan(self) -> SitePlan:
        return self.binding.sites


class Session:
    """An attachment of interventions to one model. Create it with ``hookkit.attach``."""

    def __init__(self, model: nn.Module, interventions: list[Intervention], *, allow_stacking: bool | Iterable[str]
                 = False, info: ModelInfo | None = None):
        self.model = model
        self.info = info or get_model_info(model)
        self.interventions = list(interventions)
        self.allow_stacking = allow_stacking
        self.states: dict[Intervention, Any] = {}
        self.tracker = TokenTracker(self.info.image_token_ids)
        self.current_forward: ForwardContext | None = None
        self.step = 0
        self.attached = False
        self._handles: list[RemovableHandle] = []
        self._layer_attrs: list[nn.Module] = []
        self._previous_attn: str | None = None
        self._switched_attn = False
        self._pending: tuple[torch.Tensor, torch.Tensor | None] | None = None
        #: options for the next new input, per intervention (consumed at the next prefill)
        self.next_sample_extras: dict[Intervention, dict[str, Any]] = {}
        self._bound = self._bind_all()

    # ------------------------------------------------------------------ validation (no side effects)
    def _bind_all(self) -> list[_Bound]:
        if not self.interventions:
            raise ConfigError("interventions", "nothing to attach")
        bound = []
        seen: set[int] = set()
        for iv in self.interventions:
            if id(iv) in seen:
                raise ConfigError("interventions", f"{iv.describe()} is listed twice")
            seen.add(id(iv))
            if iv.requires_vision and not self.info.is_vlm:
                raise UnsupportedModelError(
                    f"method {iv.name!r} needs a vision-language model, but {type(self.model).__name__} "
                    f"(family {self.info.family!r}) is text-only")
            binding = iv.bind(self.info)
            if not isinstance(binding, Binding):  # a plain site plan; LINEAR targets come from the method
                binding = Binding(binding, tuple(iv.linear_targets()))
            plan = binding.sites
            for site, layers in plan.items():
                bad = [layer for layer in layers if not 0 <= layer < self.info.num_layers]
                if bad:
                    raise ConfigError(f"{iv.name}.layers", f"layers {bad} out of range for a "
                                      f"{self.info.num_layers}-layer model", f"0..{self.info.num_layers - 1}")
                if site in MODEL_LEVEL_SITES and layers:
                    raise ConfigError(f"{iv.name}.sites", f"site {site.value!r} takes no layers")
            bound.append(_Bound(iv, binding))
        self._check_conflicts(bound)
        return bound

    def _stacking_allowed(self, site: Site) -> bool:
        if isinstance(self.allow_stacking, bool):
            return self.allow_stacking
        return site.value in set(self.allow_stacking)

    def _check_conflicts(self, bound: list[_Bound]) -> None:
        writers: dict[tuple[Site, int], list[str]] = defaultdict(list)
        linear_writers: dict[tuple[int, str], list[str]] = defaultdict(list)
        kernels: dict[int, str] = {}
        for b in bound:
            for site, layers in b.plan.items():
                for layer in layers:
                    if site == Site.ATTENTION:
                        kernels[layer] = b.intervention.name
                    if site == Site.LINEAR:  # conflicts are per target module, checked below
                        for target in b.binding.linear_targets:
                            linear_writers[(layer, target)].append(b.intervention.name)
                    elif site not in READ_ONLY_SITES and b.intervention.writes(site):
                        writers[(site, layer)].append(b.intervention.name)
        for (site, layer), names in writers.items():
            if len(names) > 1 and (site == Site.ATTENTION or not self._stacking_allowed(site)):
                raise ConfigError(
                    "recipe.allow_stacking",
                    f"{' and '.join(names)} both write site {site.value!r} on layer {layer}; set "
                    f"allow_stacking (true, or a list of sites) to apply them in the declared order"
                    + (" (the 'attention' site can never be stacked)" if site == Site.ATTENTION else ""))
        for (layer, target), names in linear_writers.items():
            if len(names) > 1 and not self._stacking_allowed(Site.LINEAR):
                raise ConfigError("recipe.allow_stacking", f"{' and '.join(names)} both write {target!r} on layer "
                                  f"{layer}; set allow_stacking to apply them in the declared order")
        for b in bound:
            for site in (Site.SCORE_BIAS, Site.PROBS):
                clash = sorted(set(b.plan.get(site, ())) & set(kernels))
                if clash:
                    raise ConfigError("recipe", f"{b.intervention.name} edits {site.value!r} on layers {clash}, "
                                      f"where {kernels[clash[0]]} replaces the attention computation")

    # ------------------------------------------------------------------ attach / detach
    def _install(self) -> None:
        model = self.model
        if getattr(model, SESSION_ATTR, None) is not None:
            raise AttachError("this model already has an attached hookkit session; detach it first or compose "
                              "all methods in one recipe")
        compat.warn_if_untested()
        try:
            setattr(model, SESSION_ATTR, self)
            # Token ids and the 2-D padding mask are read where they exist (the top-level forward, or generate
            # for models such as InstructBLIP whose generate feeds embeddings to the language model), and every
            # forward is counted at the text model, which runs exactly once per forward of any wrapper.
            self._handles.append(model.register_forward_pre_hook(self._stash_inputs, with_kwargs=True))
            self._wrap_generate()
            text_model = self.info.text_model
            if text_model is None:
                raise UnsupportedModelError("could not find the module that owns the decoder layers")
            self._handles.append(text_model.register_forward_pre_hook(self._on_text_forward, with_kwargs=True))
            if self._any_site(Site.LOGITS):
                if self.info.lm_head is None:
                    raise UnsupportedModelError("the logits site needs an output embedding (lm_head)")
                self._handles.append(self.info.lm_head.register_forward_hook(self._on_logits))
            per_site = self._layers_per_site()
            for layer, ivs in per_site[Site.LAYER_INPUT].items():
                self._handles.append(self.info.decoder_layers[layer].register_forward_pre_hook(
                    self._layer_input_hook(layer, ivs), with_kwargs=True))
            for layer, ivs in per_site[Site.ATTN_INPUT].items():
                self._handles.append(self.info.attentions[layer].register_forward_pre_hook(
                    self._attn_input_hook(layer, ivs), with_kwargs=True))
            for layer, ivs in per_site[Site.HEAD_OUTPUT].items():
                # Installed on whatever sits at o_proj now: after PEFT wrapping, on the LoRA wrapper (pitfall 11).
                self._handles.append(self.info.o_proj(layer).register_forward_pre_hook(
                    self._head_output_hook(layer, ivs)))
            for layer, ivs in per_site[Site.LINEAR].items():
                self._install_linear_hooks(layer, ivs)
            attention_layers = sorted({layer for site in ATTENTION_LEVEL_SITES for layer in per_site[site]})
            if attention_layers:
                self._switch_attention(attention_layers, per_site)
            self.attached = True
        except BaseException:
            self._remove_everything()
            raise

    def _binding(self, iv: Intervention) -> Binding:
        return next(b.binding for b in self._bound if b.intervention is iv)

    def resolved(self, iv: Intervention) -> Any:
        """What ``iv.bind`` resolved for this model (``Binding.resolved``)."""
        return self._binding(iv).resolved

    def _install_linear_hooks(self, layer: int, ivs: list[Intervention]) -> None:
        decoder_layer = self.info.decoder_layers[layer]
        targets: dict[str, list[Intervention]] = defaultdict(list)
        for iv in ivs:
            for target in self._binding(iv).linear_targets:
                targets[target].append(iv)
        for target, target_ivs in targets.items():
            try:
                module = decoder_layer.get_submodule(target)
            except AttributeError:
                raise ConfigError(f"{target_ivs[0].name}.target_modules", f"layer {layer} has no sub-module "
                                  f"{target!r}", sorted(n for n, m in decoder_layer.named_modules()
                                                        if isinstance(m, nn.Linear))) from None
            self._handles.append(module.register_forward_hook(self._linear_hook(layer, target, target_ivs)))

    def _linear_hook(self, layer: int, target: str, ivs: list[Intervention]):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor):
            ctx = self._ctx(layer)
            if ctx is None:
                return None
            changed = False
            for iv in ivs:
                new = iv.linear_output(ctx, self.states[iv], target, args[0], output)
                if new is not None:
                    output, changed = new, True
            return output if changed else None

        return hook

    def _layers_per_site(self) -> dict[Site, dict[int, list[Intervention]]]:
        per_site: dict[Site, dict[int, list[Intervention]]] = {site: defaultdict(list) for site in Site}
        for b in self._bound:  # declared order = application order
            for site, layers in b.plan.items():
                for layer in sorted(layers):
                    per_site[site][layer].append(b.intervention)
        return per_site

    def _switch_attention(self, layers: list[int], per_site: dict[Site, dict[int, list[Intervention]]]) -> None:
        register_attention_functions()
        cfg = self.info.text_config
        previous = compat.attn_implementation(cfg) or "sdpa"
        if previous in (SDPA_NAME, EAGER_NAME):
            raise AttachError("the text tower is already on a hookkit attention function")
        if previous not in _SUPPORTED_BASES:
            raise UnsupportedModelError(
                f"attention-level sites need the text tower on sdpa or eager, but it uses {previous!r}; reload with "
                f"attn_implementation='sdpa' (hookkit keeps untouched layers on the stock sdpa path)")
        name = _SUPPORTED_BASES[previous]
        with_sinks = [layer for layer in layers if getattr(self.info.attentions[layer], "sinks", None) is not None]
        if with_sinks:  # GPT-OSS: a learned sink logit per head (s_aux) that hookkit's attention paths do not add
            raise UnsupportedModelError(
                f"layers {with_sinks} have learned attention sinks (s_aux, GPT-OSS style), which hookkit's "
                "score_bias/probs/attention sites do not support; sites outside the attention function "
                "(head_output, layer_input, linear, logits) work")
        for layer in layers:
            kernel = per_site[Site.ATTENTION][layer]
            module = self.info.attentions[layer]
            setattr(module, LAYER_ATTR, LayerAttention(
                self, layer, eager_base=previous == "eager", bias=per_site[Site.SCORE_BIAS][layer],
                probs=per_site[Site.PROBS][layer], kernel=kernel[0] if kernel else None))
            self._layer_attrs.append(module)
        self._previous_attn = previous
        self._set_text_attn(name)
        self._switched_attn = True

    def _set_text_attn(self, name: str) -> None:
        compat.set_text_attn_implementation(self.model, self.info.attn_impl_key, name)

    def _remove_everything(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._unwrap_generate()
        self._pending = None
        for module in self._layer_attrs:
            if hasattr(module, LAYER_ATTR):
                delattr(module, LAYER_ATTR)
        self._layer_attrs.clear()
        if self._switched_attn:
            self._set_text_attn(self._previous_attn or "sdpa")
            self._switched_attn = False
        if getattr(self.model, SESSION_ATTR, None) is self:
            delattr(self.model, SESSION_ATTR)
        self.states.clear()
        self.current_forward = None

    def detach(self) -> None:
        """Remove every hook and restore the previous attention implementation. Detaching twice is an error."""
        if not self.attached:
            raise AttachError("this session is already detached")
        self._remove_everything()
        self.attached = False

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.attached:
            self.detach()

    # ------------------------------------------------------------------ per-forward bookkeeping
    def _any_site(self, site: Site) -> bool:
        return any(site in b.plan for b in self._bound)

    def _wrap_generate(self) -> None:
        model = self.model
        original = model.generate
        self._had_generate_attr = "generate" in vars(model)
        self._saved_generate = vars(model).get("generate")

        def generate(*args: Any, **kwargs: Any) -> Any:
            self.check_generation(kwargs)
            self._stash_inputs(model, (), kwargs)
            return original(*args, **kwargs)

        model.generate = generate

    def check_generation(self, generate_kwargs: dict[str, Any]) -> None:
        """Refuse, before anything runs, generation modes the attached methods cannot follow.

        Every cache slot must stay the slot the session tracked: a static cache returns slots the tracker never saw
        (pitfall 5), beam search reorders rows and assisted decoding crops the cache (pitfall 14), which would
        desynchronise per-row method state (VHR's paired rows and head sets, VAR's sinks, LongHeads' chunks).
        """
        config = generate_kwargs.get("generation_config") or getattr(self.model, "generation_config", None)

        def setting(name: str) -> Any:
            return generate_kwargs[name] if name in generate_kwargs else getattr(config, name, None)

        cache = compat.cache_from_kwargs(generate_kwargs)
        static = setting("cache_implementation") in STATIC_CACHES or "Static" in type(cache).__name__
        if static:
            raise InputError(f"hookkit sessions need a dynamic KV cache, but this generate call asks for a static "
                             f"one (cache_implementation={setting('cache_implementation')!r}, cache "
                             f"{type(cache).__name__}); use the default dynamic cache")
        modes = []
        if (setting("num_beams") or 1) > 1:
            modes.append(f"beam search (num_beams={setting('num_beams')})")
        if generate_kwargs.get("assistant_model") is not None or setting("prompt_lookup_num_tokens"):
            modes.append("assisted decoding")
        unsafe = sorted({iv.name for iv in self.interventions if not iv.supports_cache_reordering})
        if modes and unsafe:
            raise InputError(f"{', '.join(unsafe)} cannot follow {' and '.join(modes)}: it reorders or crops the KV "
                             "cache rows its per-row state refers to; use greedy or sampled decoding (num_beams=1)")

    def _unwrap_generate(self) -> None:
        if not hasattr(self, "_had_generate_attr"):
            return
        if self._had_generate_attr:
            self.model.generate = self._saved_generate
        elif "generate" in vars(self.model):
            del self.model.generate
        del self._had_generate_attr

    def _stash_inputs(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        input_ids = kwargs.get("input_ids", args[0] if args and isinstance(args[0], torch.Tensor) else None)
        if input_ids is not None:
            self._pending = (input_ids, kwargs.get("attention_mask"))

    def _on_text_forward(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        input_ids = kwargs.get("input_ids", args[0] if args and isinstance(args[0], torch.Tensor) else None)
        embeds = kwargs.get("inputs_embeds")
        attention_mask = kwargs.get("attention_mask")
        past = compat.cache_length(compat.cache_from_kwargs(kwargs))
        shape = tuple(input_ids.shape[:2]) if input_ids is not None else tuple(embeds.shape[:2])
        pending, self._pending = getattr(self, "_pending", None), None
        if pending is not None and tuple(pending[0].shape[:2]) == shape:
            # The wrapper's ids and 2-D mask (the text model may get embeddings and an already-built 4-D mask).
            input_ids = pending[0] if input_ids is None else input_ids
            if pending[1] is not None:
                attention_mask = pending[1]
        if not isinstance(attention_mask, torch.Tensor) or attention_mask.dim() != 2:
            attention_mask = None
        if input_ids is None:
            # Without ids every slot is text (regions other than padding cannot be recovered from embeddings).
            input_ids = torch.full(shape, -1, dtype=torch.long, device=embeds.device)
        if past == 0:
            self._begin_sample(input_ids, attention_mask)
        else:
            self.tracker.extend(past, input_ids, attention_mask)
            self.step += 1
        self.current_forward = ForwardContext(step=self.step, past_length=past, query_length=shape[1],
                                              tracker=self.tracker)

    def _on_logits(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        forward = self.current_forward
        if forward is None:
            return
        ctx = HookContext(forward, None)
        for b in self._bound:
            if Site.LOGITS in b.plan:
                b.intervention.logits(ctx, self.states.get(b.intervention), output.detach())

    def _begin_sample(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> None:
        """A new input: fresh regions and fresh per-intervention state (nothing carries over between samples)."""
        self.tracker.start(input_ids, attention_mask)
        self.step = 0
        extras, self.next_sample_extras = self.next_sample_extras, {}
        self.states = {}
        for b in self._bound:
            sample = SampleInfo(batch_size=input_ids.shape[0], prompt_length=input_ids.shape[1],
                                regions=self.tracker.regions, input_ids=input_ids, model=self.info,
                                extras=dict(extras.get(b.intervention, {})), resolved=b.binding.resolved)
            self.states[b.intervention] = b.intervention.new_state(sample)

    def select_rows(self, rows: torch.Tensor) -> None:
        """Keep batch ``rows`` of the current sample (the caller reduces the KV cache the same way)."""
        self.tracker.select_rows(rows)
        self.states = {iv: iv.select_rows(state, rows) for iv, state in self.states.items()}

    # ------------------------------------------------------------------ module hooks
    def _ctx(self, layer: int | None) -> HookContext | None:
        return None if self.current_forward is None else HookContext(self.current_forward, layer)

    def _layer_input_hook(self, layer: int, ivs: list[Intervention]):
        def hook(module: nn.Module, args: tuple, kwargs: dict):
            ctx = self._ctx(layer)
            if ctx is None:
                return None
            from_kwargs = "hidden_states" in kwargs
            hidden = kwargs["hidden_states"] if from_kwargs else args[0]
            changed = False
            for iv in ivs:
                new = iv.layer_input(ctx, self.states[iv], hidden)
                if new is not None:
                    hidden, changed = new, True
            if not changed:
                return None
            if from_kwargs:
                return args, {**kwargs, "hidden_states": hidden}
            return (hidden, *args[1:]), kwargs

        return hook

    def _attn_input_hook(self, layer: int, ivs: list[Intervention]):
        def hook(module: nn.Module, args: tuple, kwargs: dict):
            ctx = self._ctx(layer)
            if ctx is not None:
                hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
                for iv in ivs:
                    iv.attn_input(ctx, self.states[iv], hidden)
            return None

        return hook

    def _head_output_hook(self, layer: int, ivs: list[Intervention]):
        num_heads, head_dim = self.info.num_heads, self.info.head_dim

        def hook(module: nn.Module, args: tuple):
            ctx = self._ctx(layer)
            if ctx is None:
                return None
            flat = args[0]
            heads = flat.view(*flat.shape[:-1], num_heads, head_dim)
            changed = False
            for iv in ivs:
                new = iv.head_output(ctx, self.states[iv], heads)
                if new is not None:
                    heads, changed = new, True
            if not changed:
                return None
            return (heads.reshape(flat.shape), *args[1:])

        return hook

    # ------------------------------------------------------------------ inspection
    def describe(self) -> dict[str, Any]:
        """Layers, heads, KV heads, head_dim, regions and the active hooks, as a JSON-friendly dict."""
        info = self.info
        per_site = self._layers_per_site()
        hooks = {site.value: {str(layer): [iv.name for iv in ivs] for layer, ivs in sorted(per_layer.items())}
                 for site, per_layer in per_site.items() if per_layer}
        for b in self._bound:
            if Site.LOGITS in b.plan:
                hooks.setdefault(Site.LOGITS.value, {})["model"] = [b.intervention.name]
        return {
            **describe_model(info),
            "attached": self.attached,
            "attention_implementation": {
                "text": compat.attn_implementation(info.text_config),
                "previous_text": self._previous_attn,
            },
            "interventions": [iv.describe() for iv in self.interventions],
            "hooks": hooks,
            "allow_stacking": self.allow_stacking if isinstance(self.allow_stacking, bool)
            else sorted(self.allow_stacking),
        }


def describe_model(info: ModelInfo) -> dict[str, Any]:
    """The registry's view of a model (used by ``Session.describe`` and ``hookkit inspect``)."""
    cfg = info.model.config
    vision_impl = None
    for key in ("vision_config",):
        sub = getattr(cfg, key, None)
        if sub is not None:
            vision_impl = compat.attn_implementation(sub)
    return {
        "model": type(info.model).__name__,
        "family": info.family,
        "name_or_path": getattr(cfg, "_name_or_path", ""),
        "vision_language": info.is_vlm,
        "num_layers": info.num_layers,
        "num_heads": info.num_heads,
        "num_kv_heads": info.num_kv_heads,
        "head_dim": info.head_dim,
        "layer_types": info.layer_types(),
        "sliding_window": getattr(info.text_config, "sliding_window", None),
        "image_token_ids": list(info.image_token_ids),
        "vision_modules": info.vision_modules,
        "vision_attention_implementation": vision_impl,
        "regions": sorted(REGION_NAMES, key=lambda n: REGION_NAMES[n]),
        "text_attention_path": f"{_module_path(info.model, info.attentions[0])} (x{info.num_layers})",
    }


def _module_path(model: nn.Module, target: nn.Module) -> str:
    for name, module in model.named_modules():
        if module is target:
            return name.rsplit(".", 2)[0] + ".<i>." + name.rsplit(".", 1)[-1] if ".layers." in name else name
    return "?"


def attach(model: nn.Module, interventions: Intervention | Iterable[Intervention] | Any, *,
           allow_stacking: bool | Iterable[str] | None = None) -> Session:
    """Attach interventions (an ``Intervention``, a list, or a ``Recipe``) to ``model`` and return the session.

    Use as a context manager, or call ``session.detach()``. Nothing is changed if validation fails.
    """
    from hookkit.core.recipe import Recipe

    info = None
    if isinstance(interventions, Recipe):
        recipe = interventions
        # Every entry point (the API, `hookkit apply`, `hookkit eval`, the harness plug-ins) attaches through here,
        # so a recipe made for another architecture is refused in one place.
        info = get_model_info(model)
        recipe.require_model(info.fingerprint())
        interventions = recipe.build_interventions()
        if allow_stacking is None:
            allow_stacking = recipe.allow_stacking
    elif isinstance(interventions, Intervention):
        interventions = [interventions]
    elif isinstance(interventions, str):
        raise ConfigError("interventions", f"got the string {interventions!r}; pass an Intervention (e.g. "
                          f"hookkit.methods.build_method({interventions!r})), a list of them, or a Recipe")
    if isinstance(interventions, (list, tuple)):
        bad = [iv for iv in interventions if not isinstance(iv, Intervention)]
    else:
        bad = [interventions]
    if bad:
        raise ConfigError("interventions", f"expected Intervention objects, a list of them, or a Recipe; got "
                          f"{bad[0]!r:.80}")
    session = Session(model, list(interventions), allow_stacking=allow_stacking or False, info=info)
    session._install()
    return session

"""VHD and VHR: vision-aware head divergence and vision-aware head reinforcement.

He et al., "Cracking the Code of Hallucination in LVLMs with Vision-aware Head Divergence", ACL 2025
(arXiv 2412.13949); reference: ../shared/reference/methods-lvlm.md §1.

* **VHD** (Eq. 4): for layer l and head i, the L2 distance between the head's output ``A_{l,i}`` (the slice
  entering ``o_proj``) at the last prompt position with and without the image. Computed in fp32.
* **T-VHD** (Eq. 5): ``Σ_l Σ_{i ∈ top-k_l} VHD_{l,i}`` per generated token (analysis only; k is not given in the
  paper, 8 here as in a third-party reimplementation — a parameter).
* **VHR** (Eq. 6–7, Algorithm 1): at the first generation step, layer by layer over the reinforced layers, zero
  the VHD of heads that are outliers in *both* VHD and TA = ‖A_{l,i}(no image)‖² (> μ+σ over the layer's heads),
  keep the heads whose VHD is above the layer's median, and scale them by α (= 2). The head sets are frozen for
  the rest of decoding (the KV cache stays consistent, §3.2) and chosen per sample — per batch row here.

Selection modes (``selection``):

* ``"lockstep"`` (default, faithful): image and no-image prompts are prefilled together in one left-padded batch
  (``hookkit.generation.generate`` runs it); at each reinforced layer the heads are selected from this forward's outputs and
  both branches are scaled before ``o_proj``, so deeper layers see the reinforced earlier layers (§1.4 step 5,
  "previous layers are already reinforced when calculating the VHD scores"). The first token comes from that
  forward; decoding continues on the image rows with frozen heads.
* ``"probe"``: one *unmodified* forward of both branches selects the heads of every layer at once, then the
  image prompt is generated with those heads (the simpler variant of §1.5; Table 4 suggests details matter).
* ``"fixed"``: one head mask for every sample, from the recipe's tensors (the "fixed heads" ablation of Table 4).

Default layers (§1.6): {1} ∪ the last 14 of 32 for the LLaVA family, the last 18 of 32 for InstructBLIP. Other
depths scale proportionally: ``round(14·L/32)`` (resp. ``round(18·L/32)``) last layers, at least one, plus layer 1
for non-InstructBLIP families when L > 2 — e.g. 28 layers (Qwen2-VL-7B) → {1} ∪ {16..27}.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from hookkit.core.intervention import Binding, HookContext, Intervention, SampleInfo
from hookkit.core.sites import Site
from hookkit.errors import ConfigError, check_bool, check_choice, check_int_list, check_range
from hookkit.models.base import ModelInfo

SELECTIONS = ("lockstep", "probe", "fixed")
STD_KINDS = ("population", "sample")


def select_heads(vhd: torch.Tensor, ta: torch.Tensor, *, outlier_rule: bool = True,
                 std: str = "population", noise_tol: float = 0.0) -> torch.Tensor:
    """VHR head selection for one layer (Eq. 6–7). ``vhd``, ``ta``: ``[..., heads]`` (fp32). Returns a bool mask.

    A VHD at or below ``noise_tol`` times the head's no-image output norm (``sqrt(TA)``) is floating-point noise,
    not signal, and counts as 0: when the last position cannot see the image (a question longer than a sliding
    window), the image and no-image runs differ only by rounding, and a median split of that noise would still pick
    half the heads. Outliers (VHD > μ+σ *and* TA > μ+σ, over the heads) get VHD := 0, then the heads strictly above
    the median of the (zeroed) VHD are kept — the "first half", fewer with ties.
    """
    vhd = vhd.float()
    ta = ta.float()
    if noise_tol > 0:
        vhd = vhd.masked_fill(vhd <= noise_tol * ta.sqrt(), 0.0)
    if outlier_rule:
        unbiased = std == "sample"
        vhd_thr = vhd.mean(-1, keepdim=True) + vhd.std(-1, keepdim=True, unbiased=unbiased)
        ta_thr = ta.mean(-1, keepdim=True) + ta.std(-1, keepdim=True, unbiased=unbiased)
        vhd = vhd.masked_fill((vhd > vhd_thr) & (ta > ta_thr), 0.0)
    median = vhd.median(dim=-1, keepdim=True).values  # torch's median: the lower middle value for even counts
    return vhd > median


def noise_tolerance(dtype: torch.dtype) -> float:
    """Default relative VHD noise floor: a few units of roundoff of the model's dtype (fp32 4.8e-7, bf16 3.1e-2)."""
    return 4 * torch.finfo(dtype).eps


def head_divergence(heads: torch.Tensor, image_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """VHD and TA at the last position from a ``[2n, S, H, D]`` batch of [image rows; no-image rows].

    Left padding puts every row's last prompt token in the last column, so no index bookkeeping is needed.
    """
    last = heads[:, -1].float()
    with_image, without = last[:image_rows], last[image_rows:2 * image_rows]
    return (with_image - without).norm(dim=-1), without.pow(2).sum(-1)


@dataclass
class VHRState:
    mode: str  # "lockstep" | "probe" | "apply" | "fixed"
    paired_rows: int | None = None  # image rows; rows paired_rows..2*paired_rows-1 are their no-image versions
    heads: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> [rows, H] bool, frozen once chosen
    vhd: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> [rows, H] fp32 (for inspection)
    ta: dict[int, torch.Tensor] = field(default_factory=dict)
    scales: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> [rows, 1, H, 1], built once


@dataclass(eq=False)
class VHR(Intervention):
    """Vision-aware head reinforcement: scale the image-sensitive heads by alpha (ACL 2025)."""

    name = "vhr"
    requires_vision = True

    alpha: float = field(default=2.0, metadata={"help": "scale of the selected heads (paper: 2; 4 degenerates)"})
    layers: list[int] | None = field(default=None, metadata={
        "help": "reinforced layers (default: {1} + last 14 of 32, scaled; InstructBLIP: last 18 of 32)"})
    selection: str = field(default="lockstep", metadata={"help": "lockstep (faithful) | probe | fixed"})
    outlier_rule: bool = field(default=True, metadata={"help": "zero VHD of heads that are mu+sigma outliers in "
                                                               "both VHD and TA before the median split"})
    outlier_std: str = field(default="population", metadata={"help": "sigma over heads: population | sample"})
    noise_tol: float | None = field(default=None, metadata={
        "help": "VHD <= noise_tol x the head's no-image output norm counts as 0 (rounding noise); default 4 x "
                "the model dtype's epsilon, 0 = off (the paper's plain rule)"})

    def __post_init__(self) -> None:
        self._fixed_mask: torch.Tensor | None = None  # [num_layers, H] for selection="fixed" (a recipe tensor)

    # ------------------------------------------------------------------ validation
    def bind(self, model: ModelInfo) -> Binding:
        check_range("vhr.alpha", self.alpha, low=0.0, low_inclusive=False)
        check_choice("vhr.selection", self.selection, SELECTIONS)
        check_choice("vhr.outlier_std", self.outlier_std, STD_KINDS)
        check_bool("vhr.outlier_rule", self.outlier_rule)
        if self.noise_tol is not None:
            check_range("vhr.noise_tol", self.noise_tol, low=0.0)
        if self.layers is None:
            layers = model.adapter.vhr_layers(model.num_layers)
        else:
            layers = check_int_list("vhr.layers", self.layers, low=0, high=model.num_layers - 1)
        if self.selection == "fixed":
            if self._fixed_mask is None:
                raise ConfigError("vhr.selection", "'fixed' needs a head mask (recipe tensor 'head_mask')")
            if tuple(self._fixed_mask.shape) != (model.num_layers, model.num_heads):
                raise ConfigError("vhr.head_mask", f"shape {tuple(self._fixed_mask.shape)} does not match the "
                                  f"model", f"[{model.num_layers}, {model.num_heads}]")
        layers = sorted(set(layers))
        return Binding({Site.HEAD_OUTPUT: frozenset(layers)}, resolved=layers)

    # ------------------------------------------------------------------ recipe tensors
    def tensors(self) -> dict[str, torch.Tensor]:
        return {} if self._fixed_mask is None else {"head_mask": self._fixed_mask.to(torch.uint8)}

    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        unknown = set(tensors) - {"head_mask"}
        if unknown:
            raise ConfigError("vhr.tensors", f"unexpected tensors {sorted(unknown)}", ["head_mask"])
        self._fixed_mask = tensors["head_mask"].bool()

    def set_fixed_heads(self, mask: torch.Tensor) -> None:
        """Use one ``[num_layers, num_heads]`` head mask for every sample (``selection="fixed"``)."""
        self._fixed_mask = mask.detach().bool().cpu()
        self.selection = "fixed"

    # ------------------------------------------------------------------ generation protocol
    def reference_branch(self) -> str | None:
        return None if self.selection == "fixed" else self.selection

    def new_state(self, sample: SampleInfo) -> VHRState:
        phase = sample.extras.get("phase")
        if self.selection == "fixed":
            return VHRState("fixed", heads={layer: self._fixed_mask[layer][None].expand(sample.batch_size, -1)
                                            for layer in sample.resolved})
        if phase in ("lockstep", "probe"):
            rows = int(sample.extras["paired_rows"])
            if sample.batch_size != 2 * rows:
                raise RuntimeError(f"VHR {phase}: expected {2 * rows} rows (image + no-image), got "
                                   f"{sample.batch_size}")
            return VHRState(phase, paired_rows=rows)
        if phase == "apply":
            return VHRState("apply", heads=sample.extras["heads"], vhd=sample.extras.get("vhd", {}))
        # A forward that did not come through hookkit.generation.generate: the no-image branch is missing.
        return VHRState("missing")

    def probe_result(self, state: VHRState) -> dict[str, Any]:
        return {"heads": dict(state.heads), "vhd": dict(state.vhd)}

    def select_rows(self, state: VHRState, rows: torch.Tensor) -> VHRState:
        # Head sets were chosen for the image rows only; dropping the no-image rows leaves them as they are.
        state.mode = "frozen"
        return state

    # ------------------------------------------------------------------ the site
    def head_output(self, ctx: HookContext, state: VHRState, heads: torch.Tensor) -> torch.Tensor | None:
        layer = ctx.layer
        assert layer is not None
        if state.mode == "missing":
            raise RuntimeError(
                "VHR selects heads by comparing each prompt with its no-image version; run generation through "
                "hookkit.generation.generate(model, processor, prompts, images) (or `hookkit apply`), or use "
                "selection='fixed' with a head mask")
        if self.alpha == 1.0 and state.mode not in ("lockstep", "probe"):
            return None
        if state.mode in ("lockstep", "probe") and ctx.is_prefill:
            rows = state.paired_rows
            vhd, ta = head_divergence(heads, rows)
            tol = noise_tolerance(heads.dtype) if self.noise_tol is None else self.noise_tol
            chosen = select_heads(vhd, ta, outlier_rule=self.outlier_rule, std=self.outlier_std, noise_tol=tol)
            state.vhd[layer], state.ta[layer], state.heads[layer] = vhd, ta, chosen
            if state.mode == "probe" or self.alpha == 1.0:
                return None  # the probe pass is unmodified
            # Both branches are reinforced (inferred, §1.4 step 5).
            return heads * self._scale(torch.cat([chosen, chosen]), heads)
        scale = state.scales.get(layer)
        if scale is None or scale.shape[0] != heads.shape[0]:  # built once per sample: decoding stays cheap
            scale = state.scales[layer] = self._scale(state.heads[layer], heads)
        return heads * scale

    def _scale(self, mask: torch.Tensor, heads: torch.Tensor) -> torch.Tensor:
        """α on the selected heads, 1 elsewhere, shaped ``[rows, 1, H, 1]`` to broadcast over positions."""
        scale = torch.where(mask.to(heads.device), self.alpha, 1.0).to(heads.dtype)
        return scale[:, None, :, None]


# ---------------------------------------------------------------------- VHD analysis API
@dataclass
class VHDResult:
    vhd: torch.Tensor  # [num_layers, num_heads] fp32, last prompt position
    ta: torch.Tensor  # [num_layers, num_heads]: squared norm of the no-image head output
    t_vhd: list[float]  # per generated token (empty unless tokens were given)
    top_k: int

    def to_dict(self) -> dict[str, Any]:
        return {"vhd": self.vhd.tolist(), "ta": self.ta.tolist(), "t_vhd": self.t_vhd, "top_k": self.top_k,
                "shape": list(self.vhd.shape)}


@dataclass(eq=False)
class _CaptureHeads(Intervention):
    """Records the per-head outputs of every layer for a [image rows; no-image rows] batch (no edit)."""

    name = "_capture_heads"
    last_positions: int = 1

    def bind(self, model: ModelInfo) -> Binding:
        return {Site.HEAD_OUTPUT: frozenset(range(model.num_layers))}

    def new_state(self, sample: SampleInfo) -> dict[int, torch.Tensor]:
        return {}

    def head_output(self, ctx: HookContext, state: dict, heads: torch.Tensor) -> None:
        state[ctx.layer] = heads[:, -self.last_positions:].float().cpu()
        return None


def compute_vhd(model: torch.nn.Module, processor: Any, image: Any, prompt: str, *,
                generated_ids: list[int] | None = None, top_k: int | None = None) -> VHDResult:
    """VHD of every layer and head at the last prompt position (fp32), plus T-VHD per generated token.

    With ``generated_ids`` (e.g. from a greedy run), both branches are teacher-forced on those tokens in one
    forward and T-VHD_t = Σ_l Σ_{top-k heads} VHD_{l,i} is reported per generated token (Eq. 5). The paper
    gives no k; the default is 8 (a third-party reimplementation's guess), capped at the number of heads.
    """
    import hookkit

    info = hookkit.get_model_info(model)
    if not info.is_vlm:
        raise hookkit.UnsupportedModelError(f"VHD needs a vision-language model; {type(model).__name__} is "
                                            "text-only")
    top_k = min(8, info.num_heads) if top_k is None else int(check_range("top_k", top_k, low=1,
                                                                             high=info.num_heads))
    batch = info.adapter.build_inputs(processor, [prompt, prompt], [image, None])
    n_gen = len(generated_ids or [])
    if n_gen:
        extra = torch.tensor([generated_ids, generated_ids], dtype=batch["input_ids"].dtype)
        for key in ("input_ids", "attention_mask", "mm_token_type_ids", "token_type_ids"):
            if key in batch:
                fill = extra if key == "input_ids" else torch.full_like(extra, 1 if key == "attention_mask" else 0)
                batch[key] = torch.cat([batch[key], fill.to(batch[key].device)], dim=1)
    capture = _CaptureHeads(last_positions=n_gen + 1)
    with hookkit.attach(model, capture) as session, torch.no_grad():
        model(**batch)
        captured = session.states[capture]
    layers = range(info.num_layers)
    # position -(n_gen+1) is the last prompt token; the positions after it are the generated tokens.
    per_pos = torch.stack([(captured[layer][0] - captured[layer][1]).norm(dim=-1) for layer in layers])  # [L,P,H]
    ta = torch.stack([captured[layer][1, 0].pow(2).sum(-1) for layer in layers])
    vhd = per_pos[:, 0]
    t_vhd = []
    for p in range(1, n_gen + 1):  # VHD at the position that predicts each next token
        t_vhd.append(float(per_pos[:, p - 1].topk(top_k, dim=-1).values.sum()))
    return VHDResult(vhd=vhd, ta=ta, t_vhd=t_vhd, top_k=top_k)

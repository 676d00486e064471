"""Tiny random-weight models with offline tokenizers and processors.

Real LVLM weights cannot be downloaded in CI, so every architecture hookkit supports has a tiny twin: a real
``transformers`` config shrunk to a few layers, random weights from a fixed seed, a small word-level tokenizer and
the family's real processor class. Each family file declares its twins (``FamilyAdapter.tiny_models``); this
module holds the shared pieces (text config, word-level tokenizers, chat templates) and builds the folders. Each model is written to disk as an ordinary checkpoint folder
(``save_pretrained``) and loaded back through the genuine ``from_pretrained`` + ``AutoProcessor`` path, so demos
and tests exercise exactly the code a user runs on a hub checkpoint.

Recipes follow ../shared/reference/transformers-v5.md §8. ``initializer_range=0.08`` keeps attention away from
uniform so that interventions have visible effects.

Folders are cached under ``$HOOKKIT_CACHE`` (default ``~/.cache/hookkit``)/``tiny/<name>-<recipe hash>``; a
change to a recipe changes the hash, so stale folders are never reused.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers as T

from hookkit import compat
from hookkit.models.cache import building_folder, cache_root

# Bump when the tiny recipes change in a way that the hashed fields below do not capture.
TINY_RECIPE_VERSION = 3
INIT = 0.08

IMAGE_TOKEN_ID = 500  # image placeholder id of every tiny VLM (their specials sit above the word list)

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


def generic_template(image_marker: str, user: str = "User:", assistant: str = "Assistant:",
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


def clip_vision_config(image_size: int = 56) -> T.CLIPVisionConfig:
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


def tiny_models() -> dict[str, TinySpec]:
    """Every tiny model, by alias, from the ``tiny_models`` of the registered family adapters."""
    from hookkit.models.families import family_adapters

    return {spec.name: spec for cls in family_adapters() for spec in cls.tiny_models}


def _recipe_hash(spec: TinySpec) -> str:
    cfg = spec.build_config().to_json_string(use_diff=False)
    # The sources are hashed too (this module and the family's file), so any edit to a tokenizer or processor
    # recipe rebuilds the folders.
    family_source = inspect.getsource(inspect.getmodule(spec.build_config))
    blob = json.dumps({"v": TINY_RECIPE_VERSION, "cfg": cfg, "cls": spec.model_class, "tf": T.__version__,
                       "src": Path(__file__).read_text(), "family_src": family_source}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def tiny_model_path(name: str, *, rebuild: bool = False) -> Path:
    """Return the checkpoint folder of tiny model ``name``, building and saving it on first use.

    The folder is written to a temporary directory and renamed into place, so concurrent test workers and
    interrupted builds never leave a half-written checkpoint behind.
    """
    specs = tiny_models()
    if name not in specs:
        raise KeyError(f"unknown tiny model {name!r}; allowed: {sorted(specs)}")
    spec = specs[name]
    target = cache_root() / "tiny" / f"{name}-{_recipe_hash(spec)}"
    if target.exists() and not rebuild:
        return target
    with building_folder(target) as tmp:
        torch.manual_seed(0)
        model_cls = getattr(T, spec.model_class)
        model = compat.model_from_config(model_cls, spec.build_config())
        model.save_pretrained(tmp)
        spec.build_processor().save_pretrained(tmp)
        (tmp / "hookkit_tiny.json").write_text(json.dumps({"name": name, "family": spec.family,
                                                           "description": spec.description}, indent=2))
    return target

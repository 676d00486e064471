"""The torchvision-free processors of LLaVA-OneVision, Mistral3 and InternVL reproduce the real ones.

Without torchvision, ``AutoProcessor`` cannot build any of the three (the video processors and ``PixtralProcessor``
require it), so ``hookkit.load`` falls back to a stand-in rebuilt from the checkpoint folder. These tests pin down
that the stand-in gives what the real processor class gives for the same components, that its image-token counts
are what the model's own vision path produces, and what happens when neither can be built.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from typing import Any

import pytest
import torch
import transformers as T
from conftest import load_tiny
from helpers import PROMPTS, make_image

from hookkit.errors import InputError
from hookkit.models import internvl, llava_onevision, mistral3, torchvision_free
from hookkit.models.families import torchvision_install_hint
from hookkit.models.tiny import tiny_model_path, tiny_models

NAMES = ["tiny-llava-onevision", "tiny-mistral3", "tiny-internvl"]
ADAPTERS = {"tiny-llava-onevision": llava_onevision.LlavaOnevisionAdapter, "tiny-mistral3": mistral3.Mistral3Adapter,
            "tiny-internvl": internvl.InternVLAdapter}
#: image tokens of an 80x120 test image, as the family docstrings state (all well under 40)
TOKENS_80x120 = {"tiny-llava-onevision": 16, "tiny-mistral3": 12, "tiny-internvl": 12}
#: (width, height) of the images checked against the model: portrait, landscape, thin, square, larger than a tile,
#: and one smaller than the largest tile whose sides are not multiples of Pixtral's merged patch (28 px)
SIZES = [(80, 120), (120, 80), (200, 50), (56, 56), (300, 300), (70, 100)]


def _only_given_slots(monkeypatch: pytest.MonkeyPatch, cls: type) -> None:
    """Let a real processor class be built with just an image processor and a tokenizer.

    ``ProcessorMixin.__init__`` type-checks every sub-processor slot of the signature, and ``video_processor=None``
    fails that check (with or without torchvision). Limiting the slots to the two we pass runs the class's own
    ``__init__`` unchanged otherwise.
    """
    monkeypatch.setattr(cls, "get_attributes", classmethod(lambda klass: ["image_processor", "tokenizer"]))


def _real_llava_onevision(monkeypatch: pytest.MonkeyPatch, ip: Any, tok: Any, template: str) -> Any:
    _only_given_slots(monkeypatch, T.LlavaOnevisionProcessor)
    return T.LlavaOnevisionProcessor(
        image_processor=ip, tokenizer=tok, video_processor=None,
        num_image_tokens=(llava_onevision.OV_IMAGE_SIZE // llava_onevision.OV_PATCH) ** 2,
        vision_feature_select_strategy="full", vision_aspect_ratio="anyres_max_9", chat_template=template)


def _real_internvl(monkeypatch: pytest.MonkeyPatch, ip: Any, tok: Any, template: str) -> Any:
    _only_given_slots(monkeypatch, T.InternVLProcessor)
    return T.InternVLProcessor(image_processor=ip, tokenizer=tok, video_processor=None,
                               image_seq_length=internvl.INTERNVL_SEQ, chat_template=template)


def _real_pixtral(monkeypatch: pytest.MonkeyPatch, ip: Any, tok: Any, template: str) -> Any:
    # PixtralProcessor is declared as requiring torchvision: without it, transformers only has a placeholder.
    pytest.importorskip("torchvision", reason="transformers' PixtralProcessor cannot be built without torchvision")
    return T.PixtralProcessor(image_processor=ip, tokenizer=tok, patch_size=mistral3.PIXTRAL_PATCH,
                              spatial_merge_size=mistral3.PIXTRAL_MERGE, chat_template=template)


REAL: dict[str, Callable[..., Any]] = {"tiny-llava-onevision": _real_llava_onevision, "tiny-mistral3": _real_pixtral,
                                       "tiny-internvl": _real_internvl}


def _rows() -> list[list[Any]]:
    return [[make_image(0)], [make_image(1, (120, 80)), make_image(2, (200, 50))]]


def _encode(adapter: Any, processor: Any, rows: list[list[Any]]) -> tuple[list[str], Any]:
    texts = [adapter.format_prompt(processor, p, len(r)) for p, r in zip(PROMPTS, rows)]
    return texts, processor(text=texts, images=rows, padding=True, return_tensors="pt")


@pytest.mark.parametrize("name", NAMES)
def test_fallback_equals_the_real_processor_class_built_from_the_same_components(
        name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    adapter = ADAPTERS[name]()
    fallback = adapter.fallback_processor.from_checkpoint(tiny_model_path(name))  # what hookkit.load falls back to
    assert type(fallback) is adapter.fallback_processor
    components = tiny_models()[name].build_processor()  # the image processor and tokenizer the folder was saved from
    real = REAL[name](monkeypatch, components.image_processor, components.tokenizer, components.chat_template)
    assert type(real).__name__ == adapter.fallback_processor.stands_in_for

    real_texts, expected = _encode(adapter, real, _rows())
    fallback_texts, got = _encode(adapter, fallback, _rows())
    assert fallback_texts == real_texts
    assert set(got) == set(expected)
    for key in expected:
        assert torch.equal(got[key], expected[key]), key  # input_ids, attention_mask, pixel_values, image sizes...
    image_id = real.image_token_id
    counts = (got["input_ids"] == image_id).sum(-1)
    assert counts.tolist() == (expected["input_ids"] == image_id).sum(-1).tolist()
    assert (counts > 0).all() and (got["attention_mask"][:, 0] == 0).any()  # both rows have images; left-padded


def _vision_features(model: Any, batch: Any) -> int:
    """How many image features the model's own vision path produces (transformers-v5.md §8.2, item 1)."""
    params = inspect.signature(model.get_image_features).parameters
    kwargs = {k: batch[k] for k in ("pixel_values", "image_sizes", "batch_num_images") if k in params and k in batch}
    for setting in ("vision_feature_layer", "vision_feature_select_strategy", "vision_aspect_ratio"):
        if setting in params:
            kwargs[setting] = getattr(model.config, setting)
    with torch.no_grad():
        features = model.get_image_features(**kwargs).pooler_output
    tensors = features if isinstance(features, (list, tuple)) else [features]
    return sum(t.reshape(-1, t.shape[-1]).shape[0] for t in tensors)


@pytest.mark.parametrize("name", NAMES)
def test_image_tokens_equal_the_features_of_the_vision_path(name: str) -> None:
    model, processor, info = load_tiny(name)
    image_id = info.image_token_ids[0]
    counts = {}
    for size in SIZES:
        batch = info.adapter.build_inputs(processor, PROMPTS[:1], [make_image(3, size)])
        counts[size] = int((batch["input_ids"] == image_id).sum())
        assert counts[size] == _vision_features(model, batch), f"{size}: tokens vs features"
        with torch.no_grad():
            model(**batch)  # the model's own placeholder check agrees
    assert counts[(80, 120)] == TOKENS_80x120[name]
    assert len(set(counts.values())) > 1, "image size must change the token count (anyres / tiles / rows)"
    two = info.adapter.build_inputs(processor, PROMPTS[:1], [[make_image(4), make_image(5, (64, 64))]])
    assert int((two["input_ids"] == image_id).sum()) == _vision_features(model, two)


def test_pixtral_layout_is_rows_of_image_tokens_closed_by_break_and_end() -> None:
    """Pixtral's layout written out: an 80x120 image fits 112 px as 84x112, i.e. 3 columns x 4 rows of 28 px
    (patch 14 x spatial merge 2), each row closed by [IMG_BREAK] and the last by [IMG_END]."""
    _, processor, info = load_tiny("tiny-mistral3")
    batch = info.adapter.build_inputs(processor, PROMPTS[:1], [make_image(0)])
    assert batch["image_sizes"].tolist() == [[112, 84]]
    image, brk, end = info.image_token_ids[0], mistral3.PIXTRAL_BREAK, mistral3.PIXTRAL_END
    expected = ([image] * 3 + [brk]) * 3 + [image] * 3 + [end]
    ids = batch["input_ids"][0].tolist()
    start = ids.index(image)
    assert ids[start:start + len(expected)] == expected
    assert ids.count(brk) == 3 and ids.count(end) == 1
    # A 70x100 image already fits; its sides are rounded up to the merged patch (14 x 2 = 28 px), not to 14 px.
    small = info.adapter.build_inputs(processor, PROMPTS[:1], [make_image(0, (70, 100))])
    assert small["image_sizes"].tolist() == [[112, 84]]
    assert int((small["input_ids"] == image).sum()) == 4 * 3


#: how AutoProcessor fails without torchvision: on a real checkpoint (the video processor's import) and on a
#: folder that lacks the video processor config
AUTO_FAILURES = [ImportError("LlavaOnevisionVideoProcessor requires the Torchvision library but it was not found"),
                 OSError("Can't load video processor: no video_preprocessor_config.json")]


def _auto_processor_fails(monkeypatch: pytest.MonkeyPatch, error: Exception = AUTO_FAILURES[0]) -> None:
    def fail(cls: Any, *args: Any, **kwargs: Any) -> None:
        raise error

    monkeypatch.setattr(T.AutoProcessor, "from_pretrained", classmethod(fail))


@pytest.mark.parametrize("name", NAMES)
def test_load_processor_falls_back_with_one_warning(name: str, monkeypatch: pytest.MonkeyPatch,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    _auto_processor_fails(monkeypatch)  # as without torchvision, whether or not it is installed
    monkeypatch.setattr(torchvision_free, "_WARNED", set())
    caplog.set_level(logging.WARNING, logger="hookkit.models.torchvision_free")
    adapter = ADAPTERS[name]()
    first = adapter.load_processor(str(tiny_model_path(name)))
    second = adapter.load_processor(str(tiny_model_path(name)))
    assert type(first) is type(second) is adapter.fallback_processor
    warnings = [r for r in caplog.records if adapter.fallback_processor.__name__ in r.getMessage()]
    assert len(warnings) == 1 and "torchvision" in warnings[0].getMessage().lower()


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("first_failure", AUTO_FAILURES, ids=["import", "missing-file"])
def test_when_the_fallback_fails_too_the_error_names_the_install_command(
        name: str, first_failure: Exception, monkeypatch: pytest.MonkeyPatch) -> None:
    _auto_processor_fails(monkeypatch, first_failure)
    adapter = ADAPTERS[name]()
    pil = getattr(T, adapter.fallback_processor.pil_image_processor)

    def broken(cls: Any, *args: Any, **kwargs: Any) -> None:
        raise OSError("no image processor config in this folder")

    monkeypatch.setattr(pil, "from_pretrained", classmethod(broken))
    with pytest.raises(InputError) as caught:
        adapter.load_processor(str(tiny_model_path(name)))
    message = str(caught.value)
    assert torchvision_install_hint() in message
    assert adapter.fallback_processor.stands_in_for in message and "no image processor config" in message

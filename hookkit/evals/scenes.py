"""Synthetic scenes with a controlled co-occurrence prior, written as COCO-format data.

Why: hallucination methods (VHR, VAR, ...) claim to reduce answers that follow the language prior rather than the
image. Testing that needs a model whose prior is *known*: here every training scene is drawn from a seeded
generator in which chosen pairs of shapes appear together with probability ``p_co``. A model trained with
``p_co = 0`` (the control) has no pair prior; one trained with ``p_co = 0.8`` (biased) should answer "yes" to the
absent partner of a present shape more often than to other absent shapes. The ``break`` split keeps exactly one
member of a pair and never its partner, so the prior is wrong on every test image.

Everything is written in the formats hookkit's evaluations already read, so they run unchanged:

* ``instances_<split>.json`` (COCO instances: ``images``, ``annotations`` with ``bbox``, ``area``, ``category_id``
  and an extra ``colour`` field, ``categories``) -> :func:`hookkit.evals.pope.build_pope_splits` and
  :class:`hookkit.evals.chair.ChairScorer`;
* ``captions_<split>.json`` (COCO captions) -> CHAIR ground truth;
* images named ``COCO_val2014_%012d.png`` (the CHAIR runner recognises COCO names, PNG included);
* ``hookkit/evals/data/scenes_synonyms.txt``: the CHAIR synonym table of this vocabulary;
* :func:`build_prior_pope` writes POPE question files whose negatives are the *absent partner* (adversarial) or an
  absent non-partner (random) of a present shape. The stock POPE builder computes co-occurrence from the test
  images themselves, and on the ``break`` split partners never co-occur there, so it cannot target the training
  prior; these files can (same JSON-lines format, so ``hookkit eval pope --data`` runs them).

Scenes: 1-4 distinct shapes of 8 classes (1 or 2 instances each, at most 5 instances), 6 colours, random size,
rotation and position without overlap, light tinted backgrounds with mild noise; drawn at 2x and downsampled
(anti-aliased). Image ``i`` of a split depends only on ``(seed, i)``, so splits are reproducible and can be
generated in any order.
"""

from __future__ import annotations

import json
import math
import os
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

__all__ = [
    "SHAPES",
    "COLOURS",
    "PAIRS",
    "SYNONYMS_PATH",
    "SceneObject",
    "Scene",
    "SceneConfig",
    "sample_scene",
    "render_scene",
    "caption_for",
    "generate_split",
    "load_scenes",
    "co_occurrence_rates",
    "build_prior_pope",
    "partner_of",
    "patch_coverage",
]

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "heart", "cross", "moon", "arrow")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (205, 35, 35),
    "green": (35, 145, 55),
    "blue": (35, 75, 205),
    "yellow": (225, 185, 10),
    "purple": (125, 50, 170),
    "black": (25, 25, 25),
}
#: Symmetric co-occurrence pairs; square and triangle are neutral.
PAIRS: tuple[tuple[str, str], ...] = (("star", "moon"), ("heart", "arrow"), ("circle", "cross"))
SYNONYMS_PATH = Path(__file__).resolve().parent / "data" / "scenes_synonyms.txt"
NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five"}
#: Image file names the CHAIR runner recognises as COCO ids.
FILE_PATTERN = "COCO_val2014_{:012d}.png"


def partner_of(shape: str, pairs: Sequence[Sequence[str]] = PAIRS) -> str | None:
    for a, b in pairs:
        if shape == a:
            return b
        if shape == b:
            return a
    return None


@dataclass(frozen=True)
class SceneObject:
    """One shape class in a scene: its colour, how many instances, and their boxes ``[x, y, w, h]`` (pixels)."""

    shape: str
    colour: str
    boxes: tuple[tuple[float, float, float, float], ...]
    angles: tuple[float, ...]

    @property
    def count(self) -> int:
        return len(self.boxes)


@dataclass(frozen=True)
class Scene:
    image_id: int
    objects: tuple[SceneObject, ...]
    background: tuple[int, int, int]
    noise_seed: int
    size: int
    noise: float = 6.0

    @property
    def shapes(self) -> tuple[str, ...]:
        return tuple(o.shape for o in self.objects)


@dataclass(frozen=True)
class SceneConfig:
    """How scenes of one split are drawn.

    ``mode``: ``"iid"`` draws shapes with the co-occurrence prior ``p_co`` (when a pair member is drawn its partner
    joins with probability ``p_co``, room permitting); ``"break"`` puts at least one pair member in every scene and
    never both members of any pair.
    """

    p_co: float = 0.0
    mode: str = "iid"
    pairs: tuple[tuple[str, str], ...] = PAIRS
    n_shape_probs: tuple[float, ...] = (0.15, 0.25, 0.30, 0.30)  # P(1, 2, 3, 4 distinct shapes)
    p_two: float = 0.25  # P(a shape has two instances)
    max_instances: int = 5
    size: int = 224
    min_obj: float = 0.20  # object size as a fraction of the image side
    max_obj: float = 0.32
    noise: float = 6.0

    def validate(self) -> None:
        if self.mode not in ("iid", "break"):
            raise ValueError(f"mode must be 'iid' or 'break', got {self.mode!r}")
        if not 0.0 <= self.p_co <= 1.0:
            raise ValueError(f"p_co must be in [0, 1], got {self.p_co}")
        if abs(sum(self.n_shape_probs) - 1.0) > 1e-6:
            raise ValueError("n_shape_probs must sum to 1")
        for a, b in self.pairs:
            if a not in SHAPES or b not in SHAPES or a == b:
                raise ValueError(f"bad pair {(a, b)}")


def _rng(seed: int, image_id: int) -> random.Random:
    return random.Random(seed * 1_000_003 + image_id * 7_919 + 17)


def _draw_shapes(rng: random.Random, cfg: SceneConfig) -> list[str]:
    k = rng.choices(range(1, len(cfg.n_shape_probs) + 1), weights=cfg.n_shape_probs)[0]
    max_shapes = len(cfg.n_shape_probs)
    chosen: list[str] = []
    if cfg.mode == "break":
        members = sorted({s for pair in cfg.pairs for s in pair})
        chosen.append(rng.choice(members))
        while len(chosen) < k:
            pool = [s for s in SHAPES if s not in chosen and partner_of(s, cfg.pairs) not in chosen]
            chosen.append(rng.choice(pool))
        return chosen
    while len(chosen) < k:
        shape = rng.choice([s for s in SHAPES if s not in chosen])
        chosen.append(shape)
        partner = partner_of(shape, cfg.pairs)
        if partner is not None and partner not in chosen and len(chosen) < max_shapes and rng.random() < cfg.p_co:
            chosen.append(partner)
    return chosen


def _place(rng: random.Random, n: int, cfg: SceneConfig) -> list[tuple[float, float, float, float]] | None:
    """``n`` non-overlapping square boxes (with a small gap), or None if rejection sampling fails."""
    boxes: list[tuple[float, float, float, float]] = []
    side = cfg.size
    for _ in range(n):
        for _attempt in range(200):
            s = rng.uniform(cfg.min_obj, cfg.max_obj) * side
            x, y = rng.uniform(2, side - s - 2), rng.uniform(2, side - s - 2)
            gap = 0.03 * side
            if all(x + s + gap <= bx or bx + bw + gap <= x or y + s + gap <= by or by + bh + gap <= y
                   for bx, by, bw, bh in boxes):
                boxes.append((round(x, 2), round(y, 2), round(s, 2), round(s, 2)))
                break
        else:
            return None
    return boxes


def sample_scene(seed: int, image_id: int, cfg: SceneConfig) -> Scene:
    """The scene of ``image_id`` in a split with ``seed`` (a pure function of its arguments)."""
    cfg.validate()
    rng = _rng(seed, image_id)
    shapes = _draw_shapes(rng, cfg)
    counts = [2 if rng.random() < cfg.p_two else 1 for _ in shapes]
    while sum(counts) > cfg.max_instances:
        counts[counts.index(2)] = 1
    rng.shuffle(shapes)  # drawing order must not leak the pair structure into the layout
    boxes = None
    for shrink in (1.0, 0.85, 0.7, 0.55):
        small = SceneConfig(**{**asdict(cfg), "pairs": cfg.pairs, "n_shape_probs": cfg.n_shape_probs,
                               "min_obj": cfg.min_obj * shrink, "max_obj": cfg.max_obj * shrink})
        boxes = _place(rng, sum(counts), small)
        if boxes is not None:
            break
    if boxes is None:
        raise RuntimeError(f"could not place {sum(counts)} objects in image {image_id}")
    objects = []
    i = 0
    for shape, count in zip(shapes, counts):
        colour = rng.choice(list(COLOURS))
        angles = tuple(round(rng.uniform(-30, 30) if shape in ("heart", "moon") else rng.uniform(0, 360), 2)
                       for _ in range(count))
        objects.append(SceneObject(shape, colour, tuple(boxes[i:i + count]), angles))
        i += count
    background = tuple(rng.randint(215, 250) for _ in range(3))
    return Scene(image_id, tuple(objects), background, rng.randrange(2**31), cfg.size, cfg.noise)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------- drawing
def _rotate(points: Iterable[tuple[float, float]], angle_deg: float) -> list[tuple[float, float]]:
    a = math.radians(angle_deg)
    c, s = math.cos(a), math.sin(a)
    return [(x * c - y * s, x * s + y * c) for x, y in points]


def _unit_polygon(shape: str) -> list[tuple[float, float]]:
    """Outline in a unit box centred on 0 (radius ~1)."""
    if shape == "square":
        return [(-0.8, -0.8), (0.8, -0.8), (0.8, 0.8), (-0.8, 0.8)]
    if shape == "triangle":
        return [(math.cos(math.radians(a)), math.sin(math.radians(a))) for a in (-90, 30, 150)]
    if shape == "star":
        return [((1.0 if i % 2 == 0 else 0.42) * math.cos(math.radians(-90 + 36 * i)),
                 (1.0 if i % 2 == 0 else 0.42) * math.sin(math.radians(-90 + 36 * i))) for i in range(10)]
    if shape == "cross":
        a, b = 0.32, 1.0
        return [(-a, -b), (a, -b), (a, -a), (b, -a), (b, a), (a, a), (a, b), (-a, b), (-a, a), (-b, a), (-b, -a),
                (-a, -a)]
    if shape == "arrow":
        return [(-1.0, -0.25), (0.2, -0.25), (0.2, -0.65), (1.0, 0.0), (0.2, 0.65), (0.2, 0.25), (-1.0, 0.25)]
    if shape == "heart":
        pts = []
        for i in range(48):
            t = 2 * math.pi * i / 48
            x = 16 * math.sin(t) ** 3
            y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
            pts.append((x / 17.0, -y / 17.0 + 0.1))
        return pts
    raise ValueError(shape)


def _draw_object(mask_draw: ImageDraw.ImageDraw, shape: str, box: tuple[float, float, float, float],
                 angle: float, scale: float) -> None:
    x, y, w, _ = (v * scale for v in box)
    cx, cy, r = x + w / 2, y + w / 2, w / 2
    if shape == "circle":
        mask_draw.ellipse([cx - r * 0.95, cy - r * 0.95, cx + r * 0.95, cy + r * 0.95], fill=255)
        return
    if shape == "moon":
        # Crescent: a disc minus an offset disc, rotated by drawing the offset along the angle.
        mask_draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        a = math.radians(angle)
        ox, oy = 0.45 * r * math.cos(a), 0.45 * r * math.sin(a)
        mask_draw.ellipse([cx - 0.85 * r + ox, cy - 0.85 * r + oy, cx + 0.85 * r + ox, cy + 0.85 * r + oy], fill=0)
        return
    pts = _rotate(_unit_polygon(shape), angle)
    mask_draw.polygon([(cx + px * r, cy + py * r) for px, py in pts], fill=255)


def render_scene(scene: Scene, supersample: int = 2) -> Image.Image:
    """RGB image of a scene (drawn at ``supersample`` x size, downsampled with a Lanczos filter)."""
    big = scene.size * supersample
    canvas = Image.new("RGB", (big, big), scene.background)
    for obj in scene.objects:
        for box, angle in zip(obj.boxes, obj.angles):
            mask = Image.new("L", (big, big), 0)
            _draw_object(ImageDraw.Draw(mask), obj.shape, box, angle, supersample)
            canvas.paste(COLOURS[obj.colour], (0, 0), mask)
    image = canvas.resize((scene.size, scene.size), Image.Resampling.LANCZOS)
    if scene.noise > 0:
        rs = np.random.default_rng(scene.noise_seed)
        arr = np.asarray(image, dtype=np.float32) + rs.normal(0.0, scene.noise, (scene.size, scene.size, 1))
        image = Image.fromarray(np.clip(arr, 0, 255).round().astype(np.uint8))
    return image


def patch_coverage(scene: Scene, grid: int) -> tuple[np.ndarray, np.ndarray]:
    """Fraction of each cell of a ``grid`` x ``grid`` partition covered by each shape class and each colour.

    Returns ``(shape_cov [grid*grid, len(SHAPES)], colour_cov [grid*grid, len(COLOURS)])`` in row-major cell
    order (the order of a ViT's patch tokens). Used to warm-start a projector from per-patch targets.
    """
    shape_cov = np.zeros((grid * grid, len(SHAPES)), dtype=np.float32)
    colour_cov = np.zeros((grid * grid, len(COLOURS)), dtype=np.float32)
    colours = list(COLOURS)
    for obj in scene.objects:
        mask = Image.new("L", (scene.size, scene.size), 0)
        draw = ImageDraw.Draw(mask)
        for box, angle in zip(obj.boxes, obj.angles):
            _draw_object(draw, obj.shape, box, angle, 1)
        cells = np.asarray(mask.resize((grid, grid), Image.Resampling.BOX), dtype=np.float32).reshape(-1) / 255.0
        shape_cov[:, SHAPES.index(obj.shape)] += cells
        colour_cov[:, colours.index(obj.colour)] += cells
    return np.clip(shape_cov, 0, 1), np.clip(colour_cov, 0, 1)


# ---------------------------------------------------------------------------------------------- language
def _plural(shape: str) -> str:
    return shape + ("es" if shape.endswith(("s", "x")) else "s")


def phrase(obj: SceneObject) -> str:
    """``"a red star"`` / ``"two blue crosses"``."""
    if obj.count == 1:
        return f"a {obj.colour} {obj.shape}"
    return f"{NUMBER_WORDS[obj.count]} {obj.colour} {_plural(obj.shape)}"


def join_phrases(parts: Sequence[str]) -> str:
    if len(parts) == 1:
        return parts[0]
    return ", ".join(parts[:-1]) + " and " + parts[-1]


CAPTION_TEMPLATES: tuple[str, ...] = (
    "There {be} {list}.",
    "The image shows {list}.",
    "A picture of {list} on a light background.",
    "In this image there {be} {list}.",
)


def caption_for(scene: Scene, rng: random.Random, template: str | None = None) -> str:
    """A caption naming every shape once (colour and count included), in random mention order."""
    objects = list(scene.objects)
    rng.shuffle(objects)
    parts = [phrase(o) for o in objects]
    template = template if template is not None else rng.choice(CAPTION_TEMPLATES)
    be = "is" if objects[0].count == 1 else "are"
    return template.format(be=be, list=join_phrases(parts))


# ---------------------------------------------------------------------------------------------- files
def _categories() -> list[dict[str, Any]]:
    return [{"id": i + 1, "name": s, "supercategory": "shape"} for i, s in enumerate(SHAPES)]


def generate_split(out_dir: str | os.PathLike[str], split: str, n_images: int, *, seed: int, cfg: SceneConfig,
                   first_id: int = 1, write_images: bool = True, captions_per_image: int = 2) -> dict[str, Any]:
    """Write ``images_<split>/``, ``instances_<split>.json``, ``captions_<split>.json`` under ``out_dir``.

    Image ids run from ``first_id``; give different splits disjoint id ranges if their files are ever merged.
    Returns a summary (paths, counts, measured co-occurrence rates). Re-running with the same arguments writes
    byte-identical files.
    """
    out = Path(out_dir)
    image_dir = out / f"images_{split}"
    if write_images:
        image_dir.mkdir(parents=True, exist_ok=True)
    images, annotations, captions = [], [], []
    ann_id = 1
    cap_id = 1
    scenes = []
    for image_id in range(first_id, first_id + n_images):
        scene = sample_scene(seed, image_id, cfg)
        scenes.append(scene)
        name = FILE_PATTERN.format(image_id)
        if write_images:
            render_scene(scene).save(image_dir / name, optimize=False)
        images.append({"id": image_id, "file_name": name, "width": cfg.size, "height": cfg.size})
        for obj in scene.objects:
            for box in obj.boxes:
                annotations.append({"id": ann_id, "image_id": image_id, "category_id": SHAPES.index(obj.shape) + 1,
                                    "bbox": list(box), "area": round(box[2] * box[3], 2), "iscrowd": 0,
                                    "colour": obj.colour})
                ann_id += 1
        cap_rng = random.Random(f"captions-{seed}-{image_id}")
        for _ in range(captions_per_image):
            captions.append({"id": cap_id, "image_id": image_id, "caption": caption_for(scene, cap_rng)})
            cap_id += 1
    info = {"description": f"hookkit synthetic scenes, split {split}", "seed": seed, "config": asdict(cfg),
            "shapes": list(SHAPES), "colours": list(COLOURS), "generator": "hookkit.evals.scenes"}
    instances = {"info": info, "images": images, "annotations": annotations, "categories": _categories()}
    caps = {"info": info, "images": images, "annotations": captions}
    out.mkdir(parents=True, exist_ok=True)
    inst_path, cap_path = out / f"instances_{split}.json", out / f"captions_{split}.json"
    inst_path.write_text(json.dumps(instances))
    cap_path.write_text(json.dumps(caps))
    return {"split": split, "instances": str(inst_path), "captions": str(cap_path), "images": str(image_dir),
            "n_images": n_images, "n_annotations": len(annotations),
            "co_occurrence": co_occurrence_rates([s.shapes for s in scenes], cfg.pairs)}


def load_scenes(instances: str | os.PathLike[str] | Mapping[str, Any]) -> dict[int, dict[str, dict[str, Any]]]:
    """Per image: shape -> ``{"colour", "count", "boxes"}`` from an ``instances_*.json`` written here."""
    data = instances if isinstance(instances, Mapping) else json.loads(Path(instances).read_text())
    names = {c["id"]: c["name"] for c in data["categories"]}
    out: dict[int, dict[str, dict[str, Any]]] = {img["id"]: {} for img in data["images"]}
    for ann in data["annotations"]:
        entry = out.setdefault(ann["image_id"], {}).setdefault(
            names[ann["category_id"]], {"colour": ann.get("colour"), "count": 0, "boxes": []})
        entry["count"] += 1
        entry["boxes"].append(ann["bbox"])
    return out


def co_occurrence_rates(shape_sets: Iterable[Iterable[str]],
                        pairs: Sequence[Sequence[str]] = PAIRS) -> dict[str, Any]:
    """``P(partner present | member present)`` per pair member, and the same for non-partners (baseline)."""
    sets = [set(s) for s in shape_sets]
    partner: dict[str, Any] = {}
    for a, b in pairs:
        for m, p in ((a, b), (b, a)):
            with_m = [s for s in sets if m in s]
            partner[m] = round(sum(p in s for s in with_m) / len(with_m), 4) if with_m else None
    other_hits = other_total = 0
    for s in sets:
        for m in s:
            for o in SHAPES:
                if o != m and o != partner_of(m, pairs):
                    other_total += 1
                    other_hits += o in s
    return {"partner_given_member": partner,
            "other_given_member": round(other_hits / other_total, 4) if other_total else None,
            "n_images": len(sets)}


def build_prior_pope(instances: str | os.PathLike[str] | Mapping[str, Any], *, seed: int,
                     pairs: Sequence[Sequence[str]] = PAIRS, num_images: int | None = None,
                     template: str = "Is there a {} in the image?") -> dict[str, list[dict[str, Any]]]:
    """POPE question files that probe the co-occurrence prior (for the ``break`` split).

    For each image with a pair member whose partner is absent (a "lonely" member, chosen at random if several),
    both splits ask about the member (label yes) and then about one absent shape (label no):

    * ``adversarial``: the member's absent partner, the shape the prior predicts;
    * ``random``: an absent shape that is not the partner of any present shape.

    Records have the current upstream layout (``question_id`` from 0, ``image``, ``image_id``, ``text``, ``label``),
    and each carries ``"probe": "partner"`` or ``"other"`` plus ``"object"``, which the POPE runner keeps as
    extra fields.
    """
    scenes = load_scenes(instances)
    data = instances if isinstance(instances, Mapping) else json.loads(Path(instances).read_text())
    files = {img["id"]: img["file_name"] for img in data["images"]}
    rng = random.Random(seed)
    ids = sorted(scenes)
    if num_images is not None:
        eligible = [i for i in ids if any(partner_of(s, pairs) and partner_of(s, pairs) not in scenes[i]
                                          for s in scenes[i])]
        if num_images > len(eligible):
            raise ValueError(f"only {len(eligible)} images have a lonely pair member; asked for {num_images}")
        ids = sorted(rng.sample(eligible, num_images))
    out: dict[str, list[dict[str, Any]]] = {"random": [], "adversarial": []}
    for image_id in ids:
        present = set(scenes[image_id])
        lonely = sorted(s for s in present if partner_of(s, pairs) and partner_of(s, pairs) not in present)
        if not lonely:
            continue
        member = rng.choice(lonely)
        partner = partner_of(member, pairs)
        excluded = present | {partner_of(s, pairs) for s in present}
        others = [s for s in SHAPES if s not in excluded]
        if not others:
            continue
        other = rng.choice(others)
        for split, negative, probe in (("adversarial", partner, "partner"), ("random", other, "other")):
            recs = out[split]
            for obj, label in ((member, "yes"), (negative, "no")):
                recs.append({"question_id": len(recs), "image": files[image_id], "image_id": image_id,
                             "text": template.format(obj), "label": label,
                             "probe": "member" if label == "yes" else probe, "object": obj})
    return out


@dataclass
class SplitPlan:
    """The splits of one experiment (used by ``bench/train_scenes.py``); ids are disjoint across splits."""

    p_co: float
    seed: int
    n_train: int
    n_test: int = 300
    n_break: int = 300
    splits: dict[str, Any] = field(default_factory=dict)

    def write(self, out_dir: str | os.PathLike[str]) -> dict[str, Any]:
        base = SceneConfig(p_co=self.p_co)
        self.splits["train"] = generate_split(out_dir, "train", self.n_train, seed=self.seed, cfg=base, first_id=1)
        self.splits["test"] = generate_split(out_dir, "test", self.n_test, seed=self.seed + 1, cfg=base,
                                             first_id=1_000_001)
        brk = SceneConfig(p_co=0.0, mode="break")
        self.splits["break"] = generate_split(out_dir, "break", self.n_break, seed=self.seed + 2, cfg=brk,
                                              first_id=2_000_001)
        return self.splits

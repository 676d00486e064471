"""Offline example tasks for the harness plug-ins, and the exporters that produce their data.

Layout (package data)::

    tasks/lm_eval/    hookkit_mc.yaml (loglikelihood, multiple choice), hookkit_passkey.yaml (generate_until),
                      hookkit_kjv_ppl.yaml (loglikelihood_rolling), utils.py, data/
    tasks/lmms_eval/  hookkit_pope.yaml (POPE, hookkit's official parser), hookkit_pope_exact.yaml (lmms-eval's
                      exact-match parser), utils.py, data/pope_example.jsonl, data/images/

Neither harness can reach the Hub here, so every task reads local files. Relative data paths in the YAML files
resolve against the task folder (not the working directory), so the tasks run from anywhere:
``hookkit harness lm-eval`` / ``lmms-eval`` adds the folder to ``--include_path`` when none is given.

Data provenance: the multiple-choice questions are written for this package; the passkey prompts come from
hookkit's own builder (:func:`export_passkey`, byte-identical to ``hookkit eval passkey``); the perplexity
documents are chapters of the KJV text hookkit ships (``hookkit/evals/data/PROVENANCE.md``); the POPE images are
drawn by :func:`write_example_pope` (deterministic, no external data).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from hookkit.errors import ConfigError, InputError

__all__ = [
    "TASKS_DIR",
    "POPE_EXAMPLE_OBJECTS",
    "export_passkey",
    "local_dataset",
    "read_jsonl",
    "resolve_data_path",
    "tasks_dir",
    "write_example_pope",
    "write_jsonl",
]

TASKS_DIR = Path(__file__).resolve().parent
_HARNESS_DIRS = {"lm-eval": "lm_eval", "lm_eval": "lm_eval", "lmms-eval": "lmms_eval", "lmms_eval": "lmms_eval"}


def tasks_dir(harness: str) -> Path:
    """The bundled task folder of ``harness`` (``"lm-eval"`` or ``"lmms-eval"``): pass it to ``--include_path``."""
    if harness not in _HARNESS_DIRS:
        raise ConfigError("harness", f"unknown harness {harness!r}", ["lm-eval", "lmms-eval"])
    return TASKS_DIR / _HARNESS_DIRS[harness]


def resolve_data_path(path: str | os.PathLike[str], base: Path) -> Path:
    """``path`` as is when absolute, else relative to ``base`` (a task folder); it must exist."""
    p = Path(os.path.expanduser(os.fspath(path)))
    if not p.is_absolute():
        p = base / p
    if not p.exists():
        raise InputError(f"task data file {p} does not exist")
    return p


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Records of a JSON-lines file (blank lines skipped); a bad line raises naming file and line."""
    records = []
    with open(path, encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"{path}:{line_no}: invalid JSON ({exc.msg})") from None
            if not isinstance(record, dict):
                raise InputError(f"{path}:{line_no}: expected a JSON object")
            records.append(record)
    return records


def write_jsonl(records: Iterable[Mapping[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Write records as JSON lines (UTF-8, ``\\n`` endings, key order kept), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8", newline="\n") as fh:
        for record in records:
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return path


def local_dataset(records: Sequence[Mapping[str, Any]], split: str = "test") -> Any:
    """A ``datasets.DatasetDict`` with one split, what both harnesses index documents from."""
    import datasets

    return datasets.DatasetDict({split: datasets.Dataset.from_list([dict(r) for r in records])})


# ------------------------------------------------------------------------------------------------ passkey
def export_passkey(tokenizer: Any, output: str | os.PathLike[str], *, lengths: Sequence[int], trials: int,
                   seed: int = 0, depths: Sequence[float] | None = None, rng: str = "numpy",
                   tokenizer_name: str = "") -> Path:
    """Write passkey prompts as JSON lines for the harnesses' ``generate_until`` task.

    The prompts are exactly those of ``hookkit eval passkey`` with the same tokenizer, lengths, trials, seed and
    depths (same :class:`~hookkit.evals.passkey.task.PasskeyTask` samples and prompt builder), so a harness run
    and a hookkit run can be compared sample by sample (``doc_id`` = hookkit's ``sample_id``). Lengths are in
    tokens of ``tokenizer``, special tokens included (hookkit's convention).
    """
    from hookkit.evals.passkey.task import PasskeyTask

    task = PasskeyTask(tokenizer, lengths, trials, trial_seed=seed, depths=depths, rng=rng)
    records = []
    for sample in task.samples():
        prompt = task.build_prompt(sample)
        records.append({
            "doc_id": sample["sample_id"],
            "length": sample["length"],
            "trial": sample["trial"],
            "prompt": prompt.prompt,
            "answer": str(prompt.passkey),
            "passkey": prompt.passkey,
            "n_tokens": prompt.n_tokens,
            "exact_length": prompt.exact,
            "depth": prompt.depth,
            "seed": sample["seed"],
            "tokenizer": tokenizer_name,
            "prompt_sha256": prompt.to_record()["prompt_sha256"],
        })
    return write_jsonl(records, output)


# ------------------------------------------------------------------------------------------------ POPE example
#: Objects drawn in each example image (a labelled box per object, so that a real VLM can answer), and the
#: objects asked about but absent. Three present and three absent objects per image, asked alternately yes/no as
#: POPE does (§1.1 step 4 of eval-protocols.md).
POPE_EXAMPLE_OBJECTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "example_000001.png": (("dog", "car", "tree"), ("cat", "pizza", "boat")),
    "example_000002.png": (("cat", "chair", "cup"), ("dog", "train", "kite")),
    "example_000003.png": (("pizza", "bottle", "umbrella"), ("horse", "laptop", "bench")),
    "example_000004.png": (("horse", "bus", "clock"), ("bird", "sandwich", "car")),
}
_BOX_COLOURS = ((220, 60, 60), (60, 140, 220), (60, 170, 80))


def _draw_example_image(objects: Sequence[str], index: int) -> Any:
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (192, 144), (245, 242, 230))
    draw = ImageDraw.Draw(image)
    for i, name in enumerate(objects):
        x0, y0 = 8 + (i % 2) * 92, 8 + (i // 2) * 68
        colour = _BOX_COLOURS[(i + index) % len(_BOX_COLOURS)]
        draw.rectangle([x0, y0, x0 + 84, y0 + 60], outline=colour, width=3)
        draw.ellipse([x0 + 10, y0 + 8, x0 + 34, y0 + 32], fill=colour)
        draw.text((x0 + 8, y0 + 40), name, fill=(20, 20, 20))  # PIL's built-in bitmap font: no font files
    return image


def write_example_pope(folder: str | os.PathLike[str], *, split: str = "random") -> Path:
    """Write the example POPE data: ``images/*.png`` and ``pope_example.jsonl`` (official POPE record format).

    Deterministic: the same bytes on every run (PNG without timestamps, PIL's built-in font). The question file
    is also a valid ``hookkit eval pope --data`` file (``--images <folder>/images``).
    """
    from hookkit.evals.pope import POPE_TEMPLATE

    folder = Path(folder)
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    records = []
    qid = 1
    for index, (name, (present, absent)) in enumerate(POPE_EXAMPLE_OBJECTS.items()):
        _draw_example_image(present, index).save(images / name, format="PNG", optimize=False)
        for yes, no in zip(present, absent):
            for obj, label in ((yes, "yes"), (no, "no")):
                article = "an" if obj[0] in "aeiou" else "a"
                text = POPE_TEMPLATE.replace("a {}", f"{article} {{}}").format(obj)
                records.append({"question_id": qid, "image": name, "text": text, "label": label, "split": split})
                qid += 1
    return write_jsonl(records, folder / "pope_example.jsonl")

"""CHAIR reference mode vs the published ``chair.py`` on OPERA's released captions, caption by caption.

OPERA (shikiw/OPERA) releases its LLaVA-1.5, InstructBLIP, MiniGPT-4 and Shikra captions (greedy, beam5, OPERA:
12 files x 500). Those captions are another repository's data, so hookkit does not ship them; this script compares
hookkit's reference extractor with the published scorer's outputs on them, from a file made as
tests/data/chair_reference/README.md describes (``run_published_chair.py --compact`` over the 12 logs):

    python bench/chair_reference.py --published /path/to/opera_published.jsonl.xz

It writes bench/results/chair_reference.json: counts only (no caption text), per file and in total, for the
reference mode and, for comparison, the fast mode.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import lzma
import platform
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from test_chair_reference import mismatches  # noqa: E402

from hookkit.evals.chair import caption_to_objects  # noqa: E402
from hookkit.evals.chair.reference import ReferenceExtractor  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--published", required=True, help="opera_published.jsonl.xz (see the module docstring)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "chair_reference.json"))
    args = parser.parse_args()
    path = Path(args.published)
    with lzma.open(path, "rt", encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle]
    extractor = ReferenceExtractor()
    t0 = time.perf_counter()
    problems = mismatches(extractor, rows)
    ref_s = time.perf_counter() - t0
    per_file: Counter[str] = Counter(row["file"] for row in rows)
    bad_files: Counter[str] = Counter(p.split(":")[0] for p in problems)
    t0 = time.perf_counter()
    fast_same = sum(sorted(caption_to_objects(row["caption"]).node_words) == sorted(row["node_words"]) for row in rows)
    fast_s = time.perf_counter() - t0
    result = {
        "command": " ".join(["python", *sys.argv]),
        "machine": {"python": platform.python_version(), "cpu": platform.processor() or platform.machine()},
        "published_file": {"name": path.name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()},
        "captions": len(rows),
        "reference_mode": {"captions_with_a_difference": len({p.split(" ")[0] for p in problems}),
                           "field_differences": len(problems), "seconds": round(ref_s, 2),
                           "per_file": {f: {"captions": n, "differences": bad_files.get(f, 0)}
                                        for f, n in sorted(per_file.items())}},
        "fast_mode": {"same_node_words_with_multiplicity": fast_same, "seconds": round(fast_s, 2)},
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=2)[:2000])


if __name__ == "__main__":
    main()

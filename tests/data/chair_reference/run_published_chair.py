"""Run the *published* CHAIR ``caption_to_words`` on caption files and store its outputs (fixture generator).

Not a test and not part of hookkit: it imports OPERA's ``chair.py`` unchanged (commit
2a0a23444573a5d0fbbfffdd830b50dcac810c89) and needs nltk==3.8.1 with NLTK's data (see README.md here).
``CHAIR.__init__`` ends with ``self.get_annotations()``, which reads the COCO annotation files; that one method is
replaced by a no-op before the object is built, so the rest of ``__init__`` (synonyms, double words) and
``caption_to_words`` run exactly as published.

Usage:
    NLTK_DATA=DIR python run_published_chair.py --chair-py chair.py --out OUT.jsonl.xz [--compact] \
        [--strip-prefix P] INPUT.jsonl [INPUT.jsonl ...]

Each output line: file (input path without ``--strip-prefix``), line, image_id, caption, words, node_words, idxs
and either raw_words (the published ``double_words``) or, with ``--compact``, n_raw and raw_sha256_16 (first 16 hex
digits of the SHA-256 of ``json.dumps(raw_words, ensure_ascii=False)``).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import lzma


def raw_digest(raw_words: list[str]) -> str:
    return hashlib.sha256(json.dumps(raw_words, ensure_ascii=False).encode("utf-8")).hexdigest()[:16]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--chair-py", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--compact", action="store_true")
    parser.add_argument("--strip-prefix", default="")
    parser.add_argument("inputs", nargs="+")
    args = parser.parse_args()

    spec = importlib.util.spec_from_file_location("published_chair", args.chair_py)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.CHAIR.get_annotations = lambda self: None
    evaluator = module.CHAIR(None)

    with lzma.open(args.out, "wb", preset=9 | lzma.PRESET_EXTREME) as raw_out:
        for path in args.inputs:
            name = path[len(args.strip_prefix):] if path.startswith(args.strip_prefix) else path
            with open(path, encoding="utf-8") as handle:
                for line_no, line in enumerate(handle):
                    if not line.strip():
                        continue
                    record = json.loads(line)
                    words, node_words, idxs, raw_words = evaluator.caption_to_words(record["caption"])
                    row = {"file": name, "line": line_no, "image_id": record.get("image_id"),
                           "caption": record["caption"], "words": words, "node_words": node_words, "idxs": idxs}
                    if args.compact:
                        row["n_raw"] = len(raw_words)
                        row["raw_sha256_16"] = raw_digest(raw_words)
                    else:
                        row["raw_words"] = raw_words
                    raw_out.write((json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8"))


if __name__ == "__main__":
    main()

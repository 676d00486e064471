"""Dataset loaders and scorers of hookkit's example lm-eval tasks (loaded by lm-eval through ``!function``).

Each loader is a ``custom_dataset``: lm-eval calls it with the task's ``metadata`` (the YAML's, updated by
``--metadata '{...}'``), so ``--metadata '{"passkey_file": "/path/to/exported.jsonl"}'`` runs the passkey task on
another exported file. Relative paths resolve against this folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hookkit.integrations.tasks import local_dataset, read_jsonl, resolve_data_path

HERE = Path(__file__).resolve().parent


def mc_dataset(mc_file: str = "data/mc.jsonl", **_: Any) -> Any:
    """hookkit_mc: ``{"question", "choices", "answer"}`` records (answer = index of the right choice)."""
    return local_dataset(read_jsonl(resolve_data_path(mc_file, HERE)))


def passkey_dataset(passkey_file: str = "data/passkey_smollm2.jsonl", **_: Any) -> Any:
    """hookkit_passkey: records written by ``hookkit harness export-passkey`` (hookkit's own prompt builder)."""
    return local_dataset(read_jsonl(resolve_data_path(passkey_file, HERE)))


def passkey_process_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    """Landmark's rule (eval-protocols.md §5.2), as ``hookkit eval passkey`` scores it: the first run of digits
    of the continuation equals the key."""
    from hookkit.evals.passkey import score_first_number

    return {"acc": float(score_first_number(results[0], int(doc["passkey"])))}


def kjv_dataset(kjv_chapters: int = 4, kjv_first: str = "Colossians 2", **_: Any) -> Any:
    """hookkit_kjv_ppl: ``kjv_chapters`` chapters of the shipped KJV text from ``kjv_first`` on (default: the start
    of hookkit's held-out part), one document per chapter, verses joined with newlines."""
    from hookkit.evals.corpus import kjv_chapters as chapters

    all_chapters = chapters()
    names = [f"{c.book} {c.chapter}" for c in all_chapters]
    if kjv_first not in names:
        raise ValueError(f"kjv_first={kjv_first!r} is not a chapter of the shipped KJV text")
    start = names.index(kjv_first)
    docs = [{"chapter": names[i], "text": "\n".join(all_chapters[i].verses)}
            for i in range(start, min(start + int(kjv_chapters), len(all_chapters)))]
    return local_dataset(docs)

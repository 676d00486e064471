"""Passkey retrieval (eval-protocols.md §5): prompt building and scoring in ``build``, the runner task in
``task`` (:class:`~hookkit.evals.passkey.task.PasskeyTask`).
"""

from __future__ import annotations

from hookkit.evals.passkey.build import (  # noqa: F401
    FILLER_UNIT,
    LANDMARK_FILLER_CHARS,
    NEEDLE_TEMPLATE,
    QUESTION,
    TASK_DESCRIPTION,
    ExactLengthError,
    PasskeyPrompt,
    PasskeyTrial,
    TokenizerLike,
    build_passkey_prompt,
    build_passkey_text,
    decode_ids,
    encode_ids,
    filler_text,
    longheads_filler_chars,
    passkey_answer_ids,
    sample_trial,
    sample_trials,
    score_exact_tokens,
    score_first_number,
    token_span,
)

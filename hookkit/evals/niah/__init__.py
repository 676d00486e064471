"""Needle in a haystack (eval-protocols.md §6): prompts, grids and scores in ``build``, the runner task and
heatmaps in ``task`` (:class:`~hookkit.evals.niah.task.NiahTask`).
"""

from __future__ import annotations

from hookkit.evals.niah.build import (  # noqa: F401
    FINAL_CONTEXT_LENGTH_BUFFER,
    NEEDLE,
    NEEDLE_ANSWER,
    NIAH_COLORS,
    NIAH_NEEDLES,
    PROMPT_TEMPLATE,
    QUESTION,
    QUESTION_SUFFIX,
    QUESTION_SUFFIX_HF_API,
    SYSTEM_MESSAGE,
    NiahNeedle,
    NiahPrompt,
    build_niah_prompt,
    format_niah_prompt,
    get_needle,
    gkamradt_context_lengths,
    gkamradt_depth_percents,
    haystack_start,
    hf_context_lengths,
    hf_depth_percents,
    insert_needle_tokens,
    linspace_int,
    logistic_depths,
    niah_grid,
    niah_pivot,
    niah_result_filename,
    period_token_ids,
    plot_niah_heatmap,
    rotate_haystack,
    rouge1_x10,
    substring_score,
)

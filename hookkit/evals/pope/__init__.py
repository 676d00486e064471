"""POPE (Polling-based Object Probing Evaluation), as data plus small scorers (eval-protocols.md §1).

* ``data``: question files and their provenance; ``build``: the seeded builder of the three splits;
* ``prompts``: prompt presets; ``parsers``: answer parsers; ``metrics``: the POPE metrics;
* ``task``: :class:`~hookkit.evals.pope.task.PopeTask` on the shared runner (imported from there, not here).
"""

from __future__ import annotations

from hookkit.evals.files import file_sha256  # noqa: F401  (kept here: POPE files are pinned by it)
from hookkit.evals.pope.build import (  # noqa: F401
    PopeBuildError,
    PopeImage,
    build_pope_split,
    build_pope_splits,
    coco_objects_per_image,
    make_pope_question_text,
    sample_pope_images,
)
from hookkit.evals.pope.data import (  # noqa: F401
    KNOWN_POPE_FILES,
    KNOWN_POPE_SHA256,
    POPE_SPLITS,
    POPE_TEMPLATE,
    KnownPopeFile,
    Label,
    PopeDataError,
    PopeLoadResult,
    PopeQuestion,
    Prediction,
    Strategy,
    classify_pope_version,
    describe_pope_file,
    iter_pope_questions,
    load_pope_questions,
    read_pope_questions,
    write_pope_jsonl,
)
from hookkit.evals.pope.metrics import (  # noqa: F401
    pope_metrics,
    pope_summary,
)
from hookkit.evals.pope.parsers import (  # noqa: F401
    DEFAULT_POPE_PARSER,
    POPE_PARSERS,
    PopeParser,
    get_pope_parser,
    parse_exact,
    parse_opera,
    parse_pope_answer,
    parse_pope_official,
    parse_vcd_substring,
    parse_vlmevalkit,
)
from hookkit.evals.pope.prompts import (  # noqa: F401
    POPE_PROMPT_PRESETS,
    PromptPreset,
    build_pope_prompt,
    get_prompt_preset,
)

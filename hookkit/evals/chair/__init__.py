"""CHAIR (Rohrbach et al. 2018), offline (eval-protocols.md §2).

* ``vocab``: the COCO synonyms and double words; ``words``: the fast word extraction (default);
* ``reference``: the published scorer's extraction (NLTK tokenizer, tagger and WordNet lemmatizer, ``--scorer
  reference``); ``scorer``: ground truth and the CHAIR metrics;
* ``task``: :class:`~hookkit.evals.chair.task.ChairTask` on the shared runner (imported from there, not here).
"""

from __future__ import annotations

from hookkit.evals.chair.scorer import (  # noqa: F401
    SCORERS,
    ChairResult,
    ChairScorer,
    CocoSource,
    T,
    load_captions,
    sample_image_ids,
)
from hookkit.evals.chair.vocab import (  # noqa: F401
    ANIMAL_WORDS,
    COCO_DOUBLE_WORDS,
    DEFAULT_SYNONYMS_PATH,
    DOUBLE_WORDS,
    TOKENIZER,
    VEHICLE_WORDS,
    CaptionObjects,
    ChairVocab,
    default_vocab,
)
from hookkit.evals.chair.words import (  # noqa: F401
    SINGULARIZER,
    caption_to_objects,
    singularize,
    tokenize,
)

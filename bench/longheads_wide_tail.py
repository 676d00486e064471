"""Diagnostic LongHeads variant (bench only): a wide exact tail with the lexical query kept on the question.

With the library's defaults only the prompt's last ``exact_tail`` = 32 tokens (the question) and the answer read the
lexical slots; every earlier prompt token reads chunk 0 and its sliding window. The ``stock-cut-chunks`` oracle of
``bench/longcontext.py`` (chunk 0, the needle's aligned chunks and the recent tokens, read as one short prompt by the
stock model) answers pydoc 16k trials that the defaults miss with the same chunks in view (docs/benchmarks.md,
sixteenth pass). One difference left between the two is that in the oracle the recent tokens themselves attend to
the needle's chunk. Here the last ``exact_tail`` prompt tokens (a whole local window, not only the question) select
with the lexical slots, while the lexical ranking still scores chunks against the last ``lexical_query`` tokens
(the question), so the ranking is the defaults'. Used by ``bench/longcontext.py niah --methods
longheads-lexical-wide``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hookkit.core.intervention import SampleInfo
from hookkit.methods.chunk_scores import ChunkRanking, lexical_chunk_scores
from hookkit.methods.longheads import LongHeads, LongHeadsState


@dataclass(eq=False)
class WideTailLongHeads(LongHeads):
    """LongHeads whose lexical ranking reads the last ``lexical_query`` prompt tokens, not the whole exact tail."""

    lexical_query: int = field(default=32, metadata={"help": "last prompt tokens the lexical ranking scores against"})

    def new_state(self, sample: SampleInfo) -> LongHeadsState:
        state = super().new_state(sample)
        if state.lexical is not None:
            w = state.cfg.w
            state.lexical = [ChunkRanking(lexical_chunk_scores(sample.input_ids[b, n:].tolist(), w,
                                                               self.lexical_query))
                             for b, n in enumerate(state.n_pad)]
        return state

"""Passkey retrieval: prompt builders sized to an exact token count, seeded trials and scorers (no model calls).

Protocol: eval-protocols.md §5. The texts of §5.1 (task description, filler unit, needle, question) are reproduced
byte for byte and joined with ``\n``; prefix and suffix filler are both slices *from the start* of the repeated
filler (the unit joined with one space). Where the original scripts size the filler in characters (§5.2
Landmark, §5.3 LongHeads), hookkit sizes the whole prompt in **tokens** (§5.4): :func:`build_passkey_prompt`
searches the filler length so that the tokenised prompt has exactly ``target_tokens`` tokens.

Tokenizers: every function that takes a ``tokenizer`` accepts a Hugging Face tokenizer
(``PreTrainedTokenizerBase``, fast or slow) or a raw ``tokenizers.Tokenizer``. Token counts are those of
``tokenizer(prompt, add_special_tokens=add_special_tokens)``, i.e. exactly what a model would be fed
(with BOS for tokenizers that add one; SmolLM2 adds none).
"""

from __future__ import annotations

import hashlib
import math
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal, NamedTuple

import numpy as np

# --- §5.1 shared texts (protocol data: byte for byte) -----------------------------------------------------------
TASK_DESCRIPTION = (
    "There is an important info hidden inside a lot of irrelevant text. Find it and memorize them. "
    "I will quiz you about the important information there."
)


FILLER_UNIT = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."


#: Format with ``NEEDLE_TEMPLATE.format(K=passkey)``.
NEEDLE_TEMPLATE = "The pass key is {K}. Remember it. {K} is the pass key."


QUESTION = "What is the pass key? The pass key is"


#: §5.2 Landmark filler lengths n in characters (50 trials each in the original).
LANDMARK_FILLER_CHARS: tuple[int, ...] = (
    0,
    100,
    500,
    1000,
    5000,
    8000,
    10000,
    12000,
    14000,
    18000,
    20000,
    25000,
    38000,
)


TokenizerLike = Any
"""A Hugging Face ``PreTrainedTokenizerBase`` or a ``tokenizers.Tokenizer``."""


class ExactLengthError(RuntimeError):
    """No filler length found whose tokenised prompt has exactly the requested number of tokens."""


# --- tokenizer adapter ------------------------------------------------------------------------------------------
def _is_raw_tokenizer(tokenizer: TokenizerLike) -> bool:
    try:
        from tokenizers import Tokenizer
    except ImportError:  # pragma: no cover - tokenizers ships with transformers
        return False
    return isinstance(tokenizer, Tokenizer)


def _encode(
    tokenizer: TokenizerLike, text: str, *, add_special_tokens: bool, offsets: bool
) -> tuple[list[int], list[tuple[int, int]] | None]:
    if _is_raw_tokenizer(tokenizer):
        enc = tokenizer.encode(text, add_special_tokens=add_special_tokens)
        return list(enc.ids), ([tuple(o) for o in enc.offsets] if offsets else None)
    if offsets:
        try:
            out = tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True, verbose=False)
            return list(out["input_ids"]), [tuple(o) for o in out["offset_mapping"]]
        except (NotImplementedError, ValueError, TypeError, KeyError):
            pass  # slow (Python) tokenizers have no offsets
    out = tokenizer(text, add_special_tokens=add_special_tokens, verbose=False)
    return list(out["input_ids"]), None


def encode_ids(tokenizer: TokenizerLike, text: str, *, add_special_tokens: bool = True) -> list[int]:
    """Token ids of ``text`` (as the model sees them when ``add_special_tokens`` is True)."""
    return _encode(tokenizer, text, add_special_tokens=add_special_tokens, offsets=False)[0]


def decode_ids(tokenizer: TokenizerLike, ids: Sequence[int]) -> str:
    """Decode ids keeping special tokens and without clean-up of tokenisation spaces."""
    if _is_raw_tokenizer(tokenizer):
        return tokenizer.decode(list(ids), skip_special_tokens=False)
    return tokenizer.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)


def token_span(
    tokenizer: TokenizerLike, text: str, char_start: int, char_end: int, *, add_special_tokens: bool = True
) -> tuple[int, int]:
    """Half-open token index range ``[start, end)`` of the tokens of ``text`` that cover ``text[char_start:char_end]``.

    Uses offset mappings when the tokenizer has them (fast / raw tokenizers): a token belongs to the span if its
    character range overlaps ``[char_start, char_end)``. Otherwise falls back to counting the tokens of
    ``text[:char_start]`` and ``text[:char_end]`` (exact unless a token straddles a boundary).
    """
    ids, offs = _encode(tokenizer, text, add_special_tokens=add_special_tokens, offsets=True)
    if offs is not None:
        hit = [i for i, (s, e) in enumerate(offs) if e > s and s < char_end and e > char_start]
        if hit:
            return hit[0], hit[-1] + 1
    start = len(encode_ids(tokenizer, text[:char_start], add_special_tokens=add_special_tokens))
    end = len(encode_ids(tokenizer, text[:char_end], add_special_tokens=add_special_tokens))
    return start, end


# --- integer search shared with niah.py -------------------------------------------------------------------------
def solve_exact_length(
    f: Callable[[int], int],
    target: int,
    guess: int,
    *,
    slope: float = 1.0,
    minimum: int = 0,
    window: int = 48,
) -> tuple[int, bool]:
    """Find ``x >= minimum`` with ``f(x) == target`` for an *almost* non-decreasing integer function.

    Token counts grow with the amount of filler but not strictly monotonically (a character can merge into the
    previous token or split one). Strategy: up to 4 Newton steps with the expected ``slope`` (x per unit of f),
    then bracket with doubling steps, bisect (returning at once on an exact hit), then scan ``window`` points on
    each side of the bracket, nearest first. Returns ``(x, True)`` on success, else ``(lo, False)`` where
    ``f(lo) < target`` is the nearest value found below. Requires ``f(minimum) <= target``.
    """
    x = max(minimum, guess)
    v = f(x)
    for _ in range(4):
        if v == target:
            return x, True
        nx = max(minimum, x + round((target - v) * slope))
        if nx == x:
            break
        x, v = nx, f(nx)
    if v == target:
        return x, True
    step = max(2, math.ceil(2 * slope))
    if v < target:
        lo = x
        while True:
            hi = lo + step
            vh = f(hi)
            if vh == target:
                return hi, True
            if vh > target:
                break
            lo, step = hi, step * 2
    else:
        hi = x
        while True:
            lo = max(minimum, hi - step)
            vl = f(lo)
            if vl == target:
                return lo, True
            if vl < target:
                break
            if lo == minimum:
                raise ValueError(f"f({minimum}) = {vl} > target {target}")
            hi, step = lo, step * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        vm = f(mid)
        if vm == target:
            return mid, True
        if vm < target:
            lo = mid
        else:
            hi = mid
    for delta in range(1, window + 1):
        for cand in (hi + delta, lo - delta):
            if cand >= minimum and f(cand) == target:
                return cand, True
    return lo, False


# --- prompt construction ----------------------------------------------------------------------------------------
def filler_text(n_chars: int) -> str:
    """The first ``n_chars`` characters of the filler unit repeated and joined with one space (§5.1)."""
    if n_chars < 0:
        raise ValueError("n_chars must be >= 0")
    reps = n_chars // (len(FILLER_UNIT) + 1) + 1
    return " ".join([FILLER_UNIT] * reps)[:n_chars]


def build_passkey_text(prefix_chars: int, suffix_chars: int, passkey: int) -> str:
    """The §5.1 prompt for a character-sized filler: five parts joined with ``\\n``.

    ``prefix_chars`` + ``suffix_chars`` is the protocol's ``n``; both fillers are slices from the start of the
    repeated filler. With ``prefix_chars = randint(0, n)`` this is exactly Landmark's / LongHeads' prompt.
    """
    filler = filler_text(max(prefix_chars, suffix_chars))
    return "\n".join(
        [TASK_DESCRIPTION, filler[:prefix_chars], NEEDLE_TEMPLATE.format(K=passkey), filler[:suffix_chars], QUESTION]
    )


@dataclass(frozen=True)
class PasskeyPrompt:
    """A passkey prompt built to an exact token count.

    Attributes:
        prompt: the prompt text (feed it raw, without a chat template, to mirror the protocol).
        input_ids: ``tokenizer(prompt, add_special_tokens=...)`` ids; ``len(input_ids) == n_tokens``.
        n_tokens: prompt length in tokens (== ``target_tokens`` when ``exact``).
        target_tokens: requested length.
        exact: whether ``n_tokens == target_tokens``.
        passkey: the key K.
        requested_depth: depth asked for, fraction of filler characters before the needle.
        depth: actual depth = ``prefix_chars / filler_chars`` (0.0 when there is no filler).
        prefix_chars / suffix_chars / filler_chars: filler sizes in characters (``filler_chars`` is §5's n).
        n_chars: ``len(prompt)``.
        needle: the needle line.
        needle_char_span: ``[start, end)`` of the needle line in ``prompt``.
        needle_token_span: ``[start, end)`` token indices in ``input_ids`` covering the needle line.
        add_special_tokens: how ``input_ids`` were produced.
    """

    prompt: str
    input_ids: tuple[int, ...]
    n_tokens: int
    target_tokens: int
    exact: bool
    passkey: int
    requested_depth: float
    depth: float
    prefix_chars: int
    suffix_chars: int
    filler_chars: int
    n_chars: int
    needle: str
    needle_char_span: tuple[int, int]
    needle_token_span: tuple[int, int]
    add_special_tokens: bool

    @property
    def answer(self) -> str:
        """The expected answer string ``str(passkey)``."""
        return str(self.passkey)

    def to_record(self) -> dict[str, Any]:
        """JSON-friendly metadata (no prompt text or ids; ``prompt_sha256`` identifies the prompt)."""
        rec = asdict(self)
        del rec["prompt"], rec["input_ids"]
        rec["prompt_sha256"] = hashlib.sha256(self.prompt.encode("utf-8")).hexdigest()
        rec["needle_char_span"] = list(self.needle_char_span)
        rec["needle_token_span"] = list(self.needle_token_span)
        return rec


def build_passkey_prompt(
    tokenizer: TokenizerLike,
    target_tokens: int,
    depth: float | None,
    passkey: int,
    *,
    add_special_tokens: bool = True,
    strict: bool = True,
) -> PasskeyPrompt:
    """Build the §5.1 passkey prompt whose tokenisation has exactly ``target_tokens`` tokens (§5.4).

    Exact-length strategy: the filler length n (characters) is the unknown; the prefix is
    ``round(depth * n)`` characters and the suffix ``n - prefix`` (depth held fixed). A first guess comes from the
    filler's characters per token; then the tokenised length of the *whole* prompt is bracketed and bisected on
    n, returning at once on an exact hit. Because token counts are not strictly monotone in n (boundary merges:
    a filler slice ending in ``"gre"`` vs ``"gree"``, prefix/suffix merging with the ``\\n`` separators, BOS), a
    jump over the target (f(n) < target < f(n+1)) is followed by a scan of up to 48 further n on each side,
    nearest first, and then by moving 1-4 characters between prefix and suffix (depth changes by at most 4/n).
    With the protocol filler this always found an exact length in testing; if nothing matches, ``strict=True``
    raises :class:`ExactLengthError` and ``strict=False`` returns the longest prompt found below the target with
    ``exact=False``.

    Args:
        tokenizer: HF tokenizer or ``tokenizers.Tokenizer``.
        target_tokens: required prompt length in tokens (including special tokens the tokenizer adds).
        depth: needle depth as a fraction of the filler in [0, 1]; ``None`` means 0.5 (mid-depth, as in the
            SmolLM2 smoke checks). Use :func:`sample_trial` for protocol-style random depths.
        passkey: the key K (Landmark/LongHeads draw it in [1, 50000]).
        add_special_tokens: count (and return) the tokens exactly as ``tokenizer(prompt)`` produces them.
        strict: raise instead of returning a non-exact prompt.

    Raises:
        ValueError: bad arguments, or ``target_tokens`` below the prompt length with empty filler.
        ExactLengthError: ``strict`` and no exact length was found.
    """
    d = 0.5 if depth is None else float(depth)
    if not 0.0 <= d <= 1.0:
        raise ValueError(f"depth must be in [0, 1] or None, got {depth}")
    if isinstance(passkey, bool) or int(passkey) != passkey or passkey < 0:
        raise ValueError(f"passkey must be a non-negative integer, got {passkey!r}")
    passkey = int(passkey)

    cache: dict[tuple[int, int], int] = {}

    def count(prefix: int, suffix: int) -> int:
        key = (prefix, suffix)
        if key not in cache:
            text = build_passkey_text(prefix, suffix, passkey)
            cache[key] = len(encode_ids(tokenizer, text, add_special_tokens=add_special_tokens))
        return cache[key]

    def split(n: int) -> tuple[int, int]:
        prefix = math.floor(d * n + 0.5)
        return prefix, n - prefix

    base = count(0, 0)
    if target_tokens < base:
        raise ValueError(
            f"target_tokens={target_tokens} is below the {base} tokens of the passkey prompt with empty filler"
        )
    probe = filler_text(4096)
    chars_per_token = len(probe) / max(1, len(encode_ids(tokenizer, probe, add_special_tokens=False)))
    guess = round((target_tokens - base) * chars_per_token)
    n, exact = solve_exact_length(lambda m: count(*split(m)), target_tokens, guess, slope=chars_per_token, minimum=0)
    prefix, suffix = split(n)
    if not exact:
        found = _shift_split(count, prefix, suffix, target_tokens)
        if found is not None:
            prefix, suffix = found
            exact = True
    if not exact:
        if strict:
            raise ExactLengthError(
                f"no passkey prompt with exactly {target_tokens} tokens near {n} filler characters "
                f"(closest below: {count(prefix, suffix)} tokens); retry with another length or strict=False"
            )
    return _make_prompt(tokenizer, prefix, suffix, passkey, d, target_tokens, add_special_tokens)


def _shift_split(
    count: Callable[[int, int], int], prefix: int, suffix: int, target: int, radius: int = 4
) -> tuple[int, int] | None:
    """Try prefix/suffix pairs within ``radius`` characters of ``(prefix, suffix)``, nearest first."""
    cands = [
        (abs(dp) + abs(ds), prefix + dp, suffix + ds)
        for dp in range(-radius, radius + 1)
        for ds in range(-radius, radius + 1)
        if prefix + dp >= 0 and suffix + ds >= 0
    ]
    for _, p, s in sorted(cands):
        if count(p, s) == target:
            return p, s
    return None


def _make_prompt(
    tokenizer: TokenizerLike,
    prefix: int,
    suffix: int,
    passkey: int,
    requested_depth: float,
    target_tokens: int,
    add_special_tokens: bool,
) -> PasskeyPrompt:
    prompt = build_passkey_text(prefix, suffix, passkey)
    needle = NEEDLE_TEMPLATE.format(K=passkey)
    start = len(TASK_DESCRIPTION) + 1 + prefix + 1
    end = start + len(needle)
    assert prompt[start:end] == needle
    ids = encode_ids(tokenizer, prompt, add_special_tokens=add_special_tokens)
    n = prefix + suffix
    return PasskeyPrompt(
        prompt=prompt,
        input_ids=tuple(ids),
        n_tokens=len(ids),
        target_tokens=target_tokens,
        exact=len(ids) == target_tokens,
        passkey=passkey,
        requested_depth=requested_depth,
        depth=prefix / n if n else 0.0,
        prefix_chars=prefix,
        suffix_chars=suffix,
        filler_chars=n,
        n_chars=len(prompt),
        needle=needle,
        needle_char_span=(start, end),
        needle_token_span=token_span(tokenizer, prompt, start, end, add_special_tokens=add_special_tokens),
        add_special_tokens=add_special_tokens,
    )


def longheads_filler_chars(k: int) -> int:
    """§5.3 LongHeads filler length for a "k K tokens" run: ``int(3.75 * k * 1024 // 1024 * 1024)``."""
    return int(3.75 * k * 1024 // 1024 * 1024)


# --- seeded trials ----------------------------------------------------------------------------------------------
class PasskeyTrial(NamedTuple):
    """One sampled trial: ``depth`` (fraction of filler), ``passkey`` and the RNG ``seed`` that produced them."""

    depth: float
    passkey: int
    seed: int


def sample_trial(
    trial_index: int,
    length: int,
    seed: int = 0,
    *,
    depth: float | None = None,
    rng: Literal["numpy", "python"] = "numpy",
) -> PasskeyTrial:
    """Depth and passkey for trial ``trial_index`` of a length-``length`` cell (§5.3 seeding rule).

    Seeding rule (LongHeads, §5.3): RNG seed ``s = seed + trial_index + length``, with a fresh generator per
    trial (no global state is touched). Draw order as in the original scripts: first the prefix position, then K.

    - ``rng="numpy"`` (default, LongHeads): ``RandomState(s)``; ``prefix = randint(0, length)`` in
      ``[0, length - 1]``, ``K = randint(1, 50000)`` in ``[1, 49999]``. With ``seed=0`` and ``length`` = the filler
      length n in characters this reproduces LongHeads' ``(prefix, K)`` exactly (``depth * n == prefix``).
    - ``rng="python"`` (Landmark draws, §5.2, but seeded): ``random.Random(s)``; ``prefix = randint(0, length)``
      and ``K = randint(1, 50000)``, both inclusive.

    hookkit sizes prompts in tokens, so ``length`` is normally the target token count and the sampled depth is
    ``prefix / length`` (a fraction of the filler). Pass ``depth`` to fix the depth ("fixed" mode): the prefix draw
    is still consumed, so K is the same as in sampled mode.
    """
    if length < 1:
        raise ValueError(f"length must be >= 1, got {length}")
    s = int(seed) + int(trial_index) + int(length)
    if rng == "numpy":
        state = np.random.RandomState(s)
        prefix = int(state.randint(0, length))
        key = int(state.randint(1, 50000))
    elif rng == "python":
        r = random.Random(s)
        prefix = r.randint(0, length)
        key = r.randint(1, 50000)
    else:
        raise ValueError(f"rng must be 'numpy' or 'python', got {rng!r}")
    if depth is not None and not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must be in [0, 1], got {depth}")
    return PasskeyTrial(prefix / length if depth is None else float(depth), key, s)


def sample_trials(
    num_trials: int,
    length: int,
    seed: int = 0,
    *,
    depth: float | None = None,
    rng: Literal["numpy", "python"] = "numpy",
) -> list[PasskeyTrial]:
    """``[sample_trial(j, length, seed, ...) for j in range(num_trials)]``."""
    return [sample_trial(j, length, seed, depth=depth, rng=rng) for j in range(num_trials)]


# --- scorers ----------------------------------------------------------------------------------------------------
_FIRST_NUMBER = re.compile(r"\d+")


def score_first_number(generated_text: str, passkey: int) -> bool:
    """Landmark rule (§5.2): the first run of digits in the continuation, as an int, equals K.

    ``"The pass key is 12345."`` → True for 12345; ``"12346"`` → False; no digits → False. Pass only the
    continuation (text after the prompt), not the prompt itself.
    """
    m = _FIRST_NUMBER.search(generated_text)
    return m is not None and int(m.group()) == int(passkey)


def passkey_answer_ids(
    tokenizer: TokenizerLike, passkey: int, *, rule: Literal["space", "drop_bos"] = "space"
) -> list[int]:
    """Answer token ids for the exact-token scorer (§5.3, with the §5.3 tokenizer-trap fix).

    - ``"space"`` (default; correct for tokenizers without BOS such as SmolLM2 and for GPT-2-style BPE): the
      ids of ``" " + str(K)`` without special tokens, i.e. the in-context continuation of ``"... The pass key is"``.
      SmolLM2: ``" 12345"`` → ``[216, 33, 34, 35, 36, 37]`` (space token, then one token per digit).
    - ``"drop_bos"``: the original LongHeads rule ``tokenizer(str(K)).input_ids[1:]``; only meaningful for
      SentencePiece tokenizers that prepend BOS and a ``▁`` (LLaMA-2). Raises ``ValueError`` if the tokenizer does
      not add a special token first (the slice would drop a digit).
    """
    if rule == "space":
        return encode_ids(tokenizer, f" {int(passkey)}", add_special_tokens=False)
    if rule == "drop_bos":
        with_special = encode_ids(tokenizer, str(int(passkey)), add_special_tokens=True)
        plain = encode_ids(tokenizer, str(int(passkey)), add_special_tokens=False)
        if len(with_special) <= len(plain):
            raise ValueError("rule='drop_bos' needs a tokenizer that prepends BOS; use rule='space'")
        return with_special[1:]
    raise ValueError(f"rule must be 'space' or 'drop_bos', got {rule!r}")


def score_exact_tokens(generated_ids: Sequence[int], answer_ids: Sequence[int]) -> bool:
    """LongHeads rule (§5.3): the new tokens equal the answer ids exactly.

    ``generated_ids`` are the *new* tokens only (generation run with ``max_new_tokens=len(answer_ids)``, greedy).
    If more tokens were generated, only the first ``len(answer_ids)`` are compared; fewer (early EOS) is wrong.
    Use with :func:`passkey_answer_ids` (``rule="space"`` for SmolLM2).
    """
    answer = [int(t) for t in answer_ids]
    if not answer:
        raise ValueError("answer_ids is empty")
    got = [int(t) for t in generated_ids][: len(answer)]
    return got == answer

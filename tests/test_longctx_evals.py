"""Long-context eval tasks (passkey, NIAH, long-context perplexity), their CLI, the demo and resume.

Tiny offline models only (the SmolLM2 runs live in bench/longcontext.py and in tests marked ``slow``). The tiny
word-level tokenizer knows the passkey filler words, so prompt builders and scorers run for real; its random
weights make the answers wrong, which the scorers must say.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import load_tiny

import hookkit
from hookkit.cli.main import main
from hookkit.evals.decoding import greedy_generate
from hookkit.evals.longppl import LongPPLTask, window_nll
from hookkit.evals.niah.task import NiahTask, write_heatmaps
from hookkit.evals.passkey.task import PasskeyTask
from hookkit.evals.results import cell_summary, validate_results_file
from hookkit.evals.runner import evaluate, read_jsonl
from hookkit.methods.longheads import LongHeads

INFO = {"model": "tiny-llama", "dtype": "float32", "device": "cpu"}
LH = dict(chunk_size=8, atten_length=32, fit_margin=0)  # selection from 32 tokens on (the prompts fit in 1024)


def tiny():
    model, tok, _ = load_tiny("tiny-llama")
    return model, tok


# ---------------------------------------------------------------------------------------------- passkey
def test_passkey_samples_are_seeded_and_prompts_exact() -> None:
    _, tok = tiny()
    task = PasskeyTask(tok, [200, 260], 3, trial_seed=5)
    samples = task.samples()
    assert [s["sample_id"] for s in samples][:4] == ["len200-trial0", "len200-trial1", "len200-trial2",
                                                     "len260-trial0"]
    assert samples == PasskeyTask(tok, [200, 260], 3, trial_seed=5).samples()  # deterministic
    assert samples != PasskeyTask(tok, [200, 260], 3, trial_seed=6).samples()
    # extendable_config_keys ("lengths", "trials"): more trials or lengths only add samples, never change one
    assert set(PasskeyTask.extendable_config_keys) == {"lengths", "trials"}
    more = PasskeyTask(tok, [260, 200, 300], 5, trial_seed=5).samples()
    assert all(s in more for s in samples)
    for s in samples:
        prompt = task.build_prompt(s)
        assert prompt.n_tokens == s["length"] and prompt.exact
        assert len(tok(prompt.prompt)["input_ids"]) == s["length"]
    fixed = PasskeyTask(tok, [200], 2, depths=[0.0, 1.0]).samples()
    assert [s["sample_id"] for s in fixed] == ["len200-depth0-trial0", "len200-depth0-trial1",
                                               "len200-depth1-trial0", "len200-depth1-trial1"]
    assert {s["depth"] for s in fixed} == {0.0, 1.0}


def test_passkey_record_scores_and_cells() -> None:
    model, tok = tiny()
    task = PasskeyTask(tok, [120], 2, max_new_tokens=4)
    task.model = model
    rec = task.predict_one(task.samples()[0])
    assert rec["length"] == 120 and len(rec["needle_token_span"]) == 2
    assert rec["correct"] is False  # random weights, unknown digits
    assert rec["_prefill_s"] > 0 and rec["_peak_rss_bytes"] > 0 and rec["_decode_tok_s"] > 0
    # Scorer on fixed strings: a record is correct iff the first number of the continuation is the key.
    records = [{"sample_id": "len5-trial0", "correct": True, "correct_exact_tokens": True, "_prefill_s": 2.0,
                "_decode_tok_s": 4.0, "_peak_rss_bytes": 10},
               {"sample_id": "len5-trial1", "correct": False, "correct_exact_tokens": False, "_prefill_s": 4.0,
                "_decode_tok_s": 2.0, "_peak_rss_bytes": 30},
               {"sample_id": "len7-trial0", "correct": True, "correct_exact_tokens": False, "_prefill_s": 1.0,
                "_decode_tok_s": 1.0, "_peak_rss_bytes": 5}]
    metrics = task.aggregate(records)
    assert metrics["accuracy"] == pytest.approx(2 / 3)
    assert metrics["len5/accuracy"] == 0.5 and metrics["len7/accuracy"] == 1.0
    assert metrics["len5/prefill_s_median"] == 3.0 and metrics["len5/peak_rss_bytes_max"] == 30
    assert metrics["cells"]["len7"]["exact_token_accuracy"] == 0.0
    assert cell_summary(records[:1])["decode_tok_s_median"] == 4.0


def test_greedy_generate_matches_generate_and_times_both_phases() -> None:
    model, _ = tiny()
    ids = torch.randint(4, 400, (1, 40), generator=torch.Generator().manual_seed(0))
    timing = greedy_generate(model, ids, 6)
    ref = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, min_new_tokens=6,
                         do_sample=False, pad_token_id=0)
    assert timing.new_ids == ref[0, 40:].tolist()
    assert timing.prefill_s > 0 and timing.decode_s > 0 and timing.decode_tok_s == pytest.approx(5 / timing.decode_s)
    with hookkit.attach(model, LongHeads(**LH)):  # crossing B (32) inside the decode loop
        lh = greedy_generate(model, ids[:, :30], 8)
    assert len(lh.new_ids) == 8


def test_greedy_generate_min_new_tokens_masks_eos_only_for_the_first_tokens() -> None:
    """With the greedy first token declared EOS, the plain decoder stops at once; min_new_tokens=1 takes the best
    other token instead, then decodes freely: the same ids as generate(min_new_tokens=1) with that EOS."""
    model, _ = tiny()
    ids = torch.randint(4, 400, (1, 40), generator=torch.Generator().manual_seed(2))
    first = greedy_generate(model, ids, 1).new_ids[0]
    assert greedy_generate(model, ids, 6, eos_token_ids=[first]).new_ids == [first]
    masked = greedy_generate(model, ids, 6, eos_token_ids=[first], min_new_tokens=1)
    ref = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, min_new_tokens=1,
                         do_sample=False, pad_token_id=0, eos_token_id=first)
    assert masked.new_ids[0] != first
    assert masked.new_ids == ref[0, 40:].tolist()
    with pytest.raises(ValueError, match="min_new_tokens"):
        greedy_generate(model, ids, 6, min_new_tokens=-1)


def test_niah_min_new_tokens_is_recorded_only_when_set() -> None:
    _, tok = tiny()
    plain = NiahTask(tok, [64], [50]).config()["decoding"]
    assert "min_new_tokens" not in plain  # protocol runs keep their task hash
    assert NiahTask(tok, [64], [50], min_new_tokens=1).config()["decoding"]["min_new_tokens"] == 1
    for bad in (-1, 51, 1.0, True):
        with pytest.raises(ValueError, match="min_new_tokens"):
            NiahTask(tok, [64], [50], min_new_tokens=bad)


def _strip(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if not k.startswith("_")} for r in records]


def test_passkey_runner_resume_after_crash_gives_the_same_results(tmp_path: Path) -> None:
    model, tok = tiny()
    task = PasskeyTask(tok, [100, 140], 2, max_new_tokens=3)
    task.model = model
    iv = LongHeads(**LH)
    with hookkit.attach(model, iv):
        clean = evaluate(task, output_dir=tmp_path / "clean", model_info=INFO, intervention={"m": "lh"},
                         progress=False)
        calls = {"n": 0}

        def crashing(batch):
            calls["n"] += 1
            if calls["n"] == 3:
                raise RuntimeError("killed")
            return task.predict(batch)

        with pytest.raises(RuntimeError, match="killed"):
            evaluate(task, output_dir=tmp_path / "run", model_info=INFO, intervention={"m": "lh"},
                     predict_fn=crashing, progress=False)
        resumed = evaluate(task, output_dir=tmp_path / "run", model_info=INFO, intervention={"m": "lh"},
                           resume=True, progress=False)
    recs, _, _ = read_jsonl(tmp_path / "run" / "samples_passkey.jsonl")
    ids = [r["sample_id"] for r in recs]
    assert len(ids) == len(set(ids)) == 4
    assert _strip(recs) == _strip(read_jsonl(tmp_path / "clean" / "samples_passkey.jsonl")[0])
    assert resumed["task_hashes"] == clean["task_hashes"]
    assert resumed["timings"]["n_samples_resumed"] == 2 and resumed["timings"]["n_samples_run"] == 2
    entry = validate_results_file(tmp_path / "run" / "results_passkey.json")["results"]["passkey"]
    assert "len100/accuracy,none" in entry and entry["cells,none"]["len140"]["n"] == 2


# ---------------------------------------------------------------------------------------------- NIAH
def test_niah_task_grid_scores_and_heatmap(tmp_path: Path) -> None:
    model, tok = tiny()
    haystack = "the man is sitting in the room . the dog is eating the food . " * 40
    task = NiahTask(tok, [90, 130], [0, 100], haystack=haystack, haystack_name="toy.txt", max_new_tokens=4)
    task.model = model
    assert [s["sample_id"] for s in task.samples()] == ["len90-depth0", "len90-depth100", "len130-depth0",
                                                        "len130-depth100"]
    res = evaluate(task, output_dir=tmp_path, model_info=INFO, progress=False)
    recs, _, _ = read_jsonl(tmp_path / "samples_niah.jsonl")
    assert [r["n_tokens"] for r in recs] == [90, 90, 130, 130]
    assert all(0.0 <= r["score"] <= 10.0 and r["substring"] is False for r in recs)
    assert res["data_files"][0]["path"] == "toy.txt" and len(res["data_files"][0]["sha256"]) == 64
    pngs = write_heatmaps(recs, tmp_path)
    assert [p.name for p in pngs] == ["niah_heatmap_rouge.png", "niah_heatmap_substring.png"]
    assert all(p.stat().st_size > 1000 for p in pngs)
    # Scorers on fixed strings, through aggregate.
    fixed = [{"context_length": 5, "depth_percent": 0.0, "score": 10.0, "substring": True},
             {"context_length": 5, "depth_percent": 50.0, "score": 0.0, "substring": False}]
    m = task.aggregate([{**r, "sample_id": str(i)} for i, r in enumerate(fixed)])
    assert m["rouge1_x10"] == 5.0 and m["substring_accuracy"] == 0.5 and m["len5/substring_accuracy"] == 0.5


def test_niah_default_haystack_is_the_shipped_kjv() -> None:
    from hookkit.evals.corpus import KJV_SHA256

    _, tok = tiny()
    task = NiahTask(tok, [64], [50])
    entry = task.data_files()[0]
    assert entry["sha256"] == KJV_SHA256 == entry["expected_sha256"] and "kjv" in entry["path"]


def test_pydoc_haystack_is_python_documentation_and_recorded() -> None:
    from hookkit.evals.corpus import HAYSTACKS, corpus_sha256, load_kjv_text, load_pydoc_text

    text = load_pydoc_text()
    assert len(text) > 200_000 and "assert" in text and text != load_kjv_text()
    assert set(HAYSTACKS) == {"kjv", "pydoc", "licenses"}
    _, tok = tiny()
    entry = NiahTask(tok, [64], [50], haystack="pydoc").data_files()[0]
    assert entry["path"] == "pydoc_data.topics" and "Python 3." in entry["version"] and len(entry["sha256"]) == 64
    assert "expected_sha256" not in entry  # the text follows the running Python: no fixed hash to check against
    for name, builtin in HAYSTACKS.items():  # every fixed hash is the shipped text's
        assert builtin.expected_sha256 in (None, corpus_sha256(builtin.load())), name
    with pytest.raises(ValueError, match="unknown needle 'sandwhich'; allowed: sandwich, code"):
        NiahTask(tok, [64], [50], needle="sandwhich")


def test_licenses_haystack_is_the_shipped_licence_texts_and_recorded() -> None:
    from hookkit.evals.corpus import LICENSES_SHA256, corpus_sha256, load_licenses_text

    text = load_licenses_text()
    # the documented format: 14 verbatim licence texts in file-name order, one blank line apart, final newline
    assert corpus_sha256(text) == LICENSES_SHA256 and text.endswith(".\n") and text.isascii()
    titles = ["Apache License", "The \"Artistic License\"", "Copyright (c) The Regents of the University of California",
              "Creative Commons Legal Code", "GNU Free Documentation License", "GNU Free Documentation License",
              "GNU GENERAL PUBLIC LICENSE", "GNU GENERAL PUBLIC LICENSE", "GNU GENERAL PUBLIC LICENSE",
              "GNU LIBRARY GENERAL PUBLIC LICENSE", "GNU LESSER GENERAL PUBLIC LICENSE",
              "GNU LESSER GENERAL PUBLIC LICENSE", "MOZILLA PUBLIC LICENSE", "Mozilla Public License"]
    position = -1
    for title in titles:  # each title found after the previous one: all 14 present, in file-name order
        position = text.find(title, position + 1)
        assert position != -1, title
    _, tok = tiny()
    entry = NiahTask(tok, [64], [50], haystack="licenses").data_files()[0]
    assert entry["path"].endswith("licenses.txt.gz") and entry["sha256"] == entry["expected_sha256"] == LICENSES_SHA256
    assert "base-files" in entry["version"]


def test_niah_vary_start_gives_each_trial_its_own_seeded_haystack_line(tmp_path: Path) -> None:
    from hookkit.evals.niah.build import haystack_start, rotate_haystack

    lines = [f"line {w} the man is sitting in the room . the dog is eating the food ." for w in
             ("one", "two", "three", "four", "five", "six", "seven", "eight")]
    haystack = "\n".join(lines * 6) + "\n"
    assert haystack_start(haystack, "a") == haystack_start(haystack, "a")  # seeded
    starts = {haystack_start(haystack, f"0:90:50:{k}") for k in range(20)}
    assert len(starts) > 5 and all(s == 0 or haystack[s - 1] == "\n" for s in starts)  # line starts, varied
    assert rotate_haystack("abcdef", 2) == "cdefab"
    with pytest.raises(ValueError, match="start must lie in"):
        rotate_haystack("abc", 3)

    model, tok = tiny()
    with pytest.raises(ValueError, match="add|vary_start=True"):
        NiahTask(tok, [90], [50], haystack=haystack, trials=2)
    with pytest.raises(ValueError, match="positive integer"):
        NiahTask(tok, [90], [50], haystack=haystack, trials=0, vary_start=True)
    task = NiahTask(tok, [90], [0, 50], haystack=haystack, haystack_name="toy.txt", max_new_tokens=2, trials=3,
                    vary_start=True)
    task.model = model
    samples = task.samples()
    assert [s["sample_id"] for s in samples] == [f"len90-depth{d}-trial{k}" for d in (0, 50) for k in range(3)]
    assert len({s["haystack_start"] for s in samples}) > 1
    # Same prompts for every method: a second task gives the same samples.
    again = NiahTask(tok, [90], [0, 50], haystack=haystack, trials=3, vary_start=True).samples()
    assert again == samples
    evaluate(task, output_dir=tmp_path, model_info=INFO, progress=False)
    recs, _, _ = read_jsonl(tmp_path / "samples_niah.jsonl")
    assert [r["haystack_start"] for r in recs] == [s["haystack_start"] for s in samples]
    assert all(r["n_tokens"] == r["model_tokens"] == 90 for r in recs)
    # Different starts give different prompts (more than the 2 a fixed start gives); the §6.1 default (start 0)
    # keeps the old sample ids.
    assert len({r["prompt_sha256"] for r in recs}) > 2
    assert [s["sample_id"] for s in NiahTask(tok, [90], [0], haystack=haystack).samples()] == ["len90-depth0"]
    # More trials on resume run only the new ones; the earlier records stay as they were.
    more = NiahTask(tok, [90], [0, 50], haystack=haystack, haystack_name="toy.txt", max_new_tokens=2, trials=4,
                    vary_start=True)
    more.model = model
    calls: list[str] = []
    predict_one = more.predict_one
    more.predict_one = lambda s: calls.append(s["sample_id"]) or predict_one(s)
    evaluate(more, output_dir=tmp_path, model_info=INFO, progress=False, resume=True)
    assert calls == ["len90-depth0-trial3", "len90-depth50-trial3"]
    extended, _, _ = read_jsonl(tmp_path / "samples_niah.jsonl")
    assert [r for r in extended if not r["sample_id"].endswith("trial3")] == recs
    with pytest.raises(ValueError, match="different task_config"):  # a changed needle is another run
        evaluate(NiahTask(tok, [90], [0, 50], haystack=haystack, haystack_name="toy.txt", max_new_tokens=2,
                          trials=4, vary_start=True, needle="code"), output_dir=tmp_path, model_info=INFO,
                 progress=False, resume=True)


def test_niah_subclass_can_transform_the_model_ids(tmp_path: Path) -> None:
    """A truncation baseline (bench ``stock-cut``) gives the model fewer ids than the prompt; the record says so."""

    class Cut(NiahTask):
        def model_input_ids(self, prompt):
            return prompt.input_ids[:10] + prompt.input_ids[-30:]

    model, tok = tiny()
    task = Cut(tok, [90], [100], haystack="the man is sitting in the room . " * 40, max_new_tokens=3)
    task.model = model
    evaluate(task, output_dir=tmp_path, model_info=INFO, progress=False)
    rec = read_jsonl(tmp_path / "samples_niah.jsonl")[0][0]
    assert rec["n_tokens"] == 90 and rec["model_tokens"] == 40


def test_eval_niah_cli_refuses_repeated_trials_without_vary_start(tmp_path: Path, capsys) -> None:
    rc = main(["eval", "niah", "--model", "tiny-llama", "--lengths", "64", "--depths", "50", "--trials", "2",
               "--output-path", str(tmp_path / "o")])
    assert rc != 0
    assert "--trials" in capsys.readouterr().err and not (tmp_path / "o").exists()
    rc = main(["eval", "niah", "--model", "tiny-llama", "--lengths", "64", "--depths", "50", "--max-new-tokens", "4",
               "--min-new-tokens", "5", "--output-path", str(tmp_path / "o")])
    assert rc != 0
    assert "--min-new-tokens" in capsys.readouterr().err and not (tmp_path / "o").exists()


# ---------------------------------------------------------------------------------------------- long ppl
def test_window_nll_equals_full_logits_cross_entropy() -> None:
    model, _ = tiny()
    ids = torch.randint(4, 400, (1, 70), generator=torch.Generator().manual_seed(1))
    sums, counts, _ = window_nll(model, ids, window=32, logit_chunk=16)
    with torch.no_grad():
        logits = model(ids).logits[0, :-1].float()
    nll = torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="none")
    assert counts == [31, 32, 6]  # window k holds the predictions of tokens k*32 .. k*32+31 (token 0 has none)
    assert sums[0] == pytest.approx(float(nll[:31].sum()), rel=1e-5)
    assert sums[2] == pytest.approx(float(nll[63:].sum()), rel=1e-5)


def test_longppl_truncated_context_reference() -> None:
    """max_context: each window from its own forward over at most max_context tokens ending with it."""
    model, tok = tiny()
    text = "the man is sitting in the room and the dog is eating the food . " * 30
    full = LongPPLTask(tok, text=text, max_tokens=100, window=32)
    full.model = model
    ids = full.token_ids()[:100]
    whole = full.predict_one({"sample_id": "s", "start": 0})
    wide = LongPPLTask(tok, text=text, max_tokens=100, window=32, max_context=128)  # >= the sample: same numbers
    wide.model = model
    same = wide.predict_one({"sample_id": "s", "start": 0})
    assert same["token_counts"] == whole["token_counts"] == [31, 32, 32, 4]
    assert same["nll_sums"] == pytest.approx(whole["nll_sums"], rel=1e-5)
    alone = LongPPLTask(tok, text=text, max_tokens=100, window=32, max_context=32)  # each window alone
    alone.model = model
    rec = alone.predict_one({"sample_id": "s", "start": 0})
    assert rec["token_counts"] == [31, 31, 31, 3]  # a window's first token has nothing before it
    for k, lo in enumerate(range(0, 100, 32)):
        sums, counts, _ = window_nll(model, torch.tensor([ids[lo:lo + 32]]), 32)
        assert rec["nll_sums"][k] == pytest.approx(sums[0], rel=1e-5) and rec["token_counts"][k] == counts[0]
    assert rec["nll_sums"][2] != pytest.approx(whole["nll_sums"][2], rel=1e-3)  # the context matters
    assert "at most the 32 tokens" in alone.config()["protocol"]
    with pytest.raises(ValueError, match="multiple of window"):
        LongPPLTask(tok, text=text, max_tokens=100, window=32, max_context=40)


def test_longppl_task_with_longheads_and_text_file(tmp_path: Path) -> None:
    model, tok = tiny()
    text = tmp_path / "t.txt"
    text.write_text("the man is sitting in the room and the dog is eating the food . " * 60)
    task = LongPPLTask.from_file(tok, text, max_tokens=120, window=32, starts=[0, 5])
    task.model = model
    stock = evaluate(task, output_dir=tmp_path / "stock", model_info=INFO, progress=False)
    with hookkit.attach(model, LongHeads(**LH)):
        lh = evaluate(task, output_dir=tmp_path / "lh", model_info=INFO, progress=False)
    s, h = stock["results"]["longppl"], lh["results"]["longppl"]
    assert s["ppl_0_32,none"] == pytest.approx(h["ppl_0_32,none"], rel=1e-6)  # below B: stock attention
    assert s["ppl_96_128,none"] != pytest.approx(h["ppl_96_128,none"], rel=1e-4)  # selection changes it
    assert [w["tokens"] for w in s["windows,none"]] == [62, 64, 64, 48]
    assert all(math.isfinite(w["ppl"]) for w in h["windows,none"])


def test_longppl_resume_adds_starts_and_keeps_the_earlier_records(tmp_path: Path) -> None:
    """starts is extendable: a resumed run with more excerpts runs only the new ones, and equals a fresh run."""
    model, tok = tiny()
    text = "the man is sitting in the room and the dog is eating the food . " * 80
    one = LongPPLTask(tok, text=text, max_tokens=64, window=32, starts=[0])
    one.model = model
    evaluate(one, output_dir=tmp_path / "run", model_info=INFO, progress=False)
    three = LongPPLTask(tok, text=text, max_tokens=64, window=32, starts=[0, 200, 400])
    three.model = model
    resumed = evaluate(three, output_dir=tmp_path / "run", model_info=INFO, progress=False, resume=True)
    assert resumed["timings"]["n_samples_resumed"] == 1 and resumed["timings"]["n_samples_run"] == 2
    fresh = evaluate(three, output_dir=tmp_path / "fresh", model_info=INFO, progress=False)
    recs = read_jsonl(tmp_path / "run" / "samples_longppl.jsonl")[0]
    assert [r["sample_id"] for r in recs] == ["start0", "start200", "start400"]
    assert _strip(recs) == _strip(read_jsonl(tmp_path / "fresh" / "samples_longppl.jsonl")[0])
    assert resumed["results"]["longppl"]["ppl,none"] == pytest.approx(fresh["results"]["longppl"]["ppl,none"])
    other = LongPPLTask(tok, text=text, max_tokens=64, window=16, starts=[0])  # not extendable: refused
    other.model = model
    with pytest.raises(ValueError, match="cannot resume"):
        evaluate(other, output_dir=tmp_path / "run", model_info=INFO, progress=False, resume=True)


# ---------------------------------------------------------------------------------------------- CLI
def test_cli_passkey_resume_and_refusal(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "pk"
    argv = ["eval", "passkey", "--model", "tiny-llama", "--dtype", "float32", "--lengths", "90,110", "--trials", "1",
            "--max-new-tokens", "2", "--method", "longheads", "--param", "chunk_size=8", "--param",
            "atten_length=32", "--output-path", str(out), "--no-progress"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "len90" in text and "prefill s" in text and "results:" in text
    results = json.loads((out / "results_passkey.json").read_text())
    assert results["intervention"]["recipe"]["methods"][0]["method"] == "longheads"
    assert len(results["intervention"]["recipe_hash"]) == 64 and results["intervention_hash"]
    assert results["config"]["model_args"]["dtype"] == "float32"
    assert main(argv) == 2  # refuses to overwrite without --resume
    assert "--resume" in capsys.readouterr().err
    assert main(argv + ["--resume"]) == 0


def test_cli_rope_scaling_changes_the_model_beyond_trained_length(tmp_path: Path) -> None:
    from hookkit.cli.evaluation import load_for_eval, rope_parameters
    from hookkit.evals.runner import get_state

    assert rope_parameters("tiny-llama", ("dynamic", 2.0)) == {"rope_type": "dynamic", "factor": 2.0,
                                                                "rope_theta": 10000.0}

    class Args:
        model, dtype, device_map, attn_implementation, threads = "tiny-llama", "float32", None, "sdpa", None
        rope_scaling = ("dynamic", 2.0)

    ntk, _, info = load_for_eval(Args(), get_state())
    assert info["rope_parameters"]["rope_type"] == "dynamic"
    stock, _ = load_tiny("tiny-llama")[:2]
    ids = torch.randint(4, 400, (1, 1100), generator=torch.Generator().manual_seed(2))  # > 1024 trained positions
    with torch.no_grad():
        a, b = stock(ids, logits_to_keep=1).logits, ntk(ids, logits_to_keep=1).logits
        short_a, short_b = stock(ids[:, :500], logits_to_keep=1).logits, ntk(ids[:, :500], logits_to_keep=1).logits
    assert (a - b).abs().max() > 1e-3
    assert torch.equal(short_a, short_b)  # dynamic NTK only acts beyond the trained length


def test_cli_niah_and_longppl(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    hay = tmp_path / "hay.txt"
    hay.write_text("the man is sitting in the room . the dog is eating the food . " * 40)
    assert main(["eval", "niah", "--model", "tiny-llama", "--dtype", "float32", "--lengths", "100", "--depths",
                 "0,50", "--haystack", str(hay), "--max-new-tokens", "3", "--output-path", str(tmp_path / "n"),
                 "--no-progress"]) == 0
    assert (tmp_path / "n" / "niah_heatmap_rouge.png").exists()
    assert main(["eval", "niah", "--model", "tiny-llama", "--dtype", "float32", "--lengths", "120", "--depths", "50",
                 "--haystack", "pydoc", "--needle", "code", "--max-new-tokens", "2", "--no-heatmap",
                 "--trials", "2", "--vary-start", "--min-new-tokens", "1", "--output-path", str(tmp_path / "c"),
                 "--no-progress"]) == 0
    config = json.loads((tmp_path / "c" / "results_niah.json").read_text())["configs"]["niah"]
    assert config["haystack"] == "pydoc" and config["needle_preset"] == "code" and config["trials_per_cell"] == 2
    assert config["decoding"]["min_new_tokens"] == 1
    assert config["haystack_start"].startswith("seeded line per trial (seed '1234:")
    recs = read_jsonl(tmp_path / "c" / "samples_niah.jsonl")[0]
    assert [r["sample_id"] for r in recs] == ["len120-depth50-trial0", "len120-depth50-trial1"]
    assert main(["eval", "longppl", "--model", "tiny-llama", "--dtype", "float32", "--text", str(hay),
                 "--max-tokens", "100", "--window", "50", "--output-path", str(tmp_path / "p"),
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "heatmap:" in out and "overall ppl" in out
    assert main(["eval", "longppl", "--model", "tiny-llama", "--text", str(hay), "--max-tokens", "100", "--window",
                 "50", "--max-context", "60", "--output-path", str(tmp_path / "q"), "--no-progress"]) != 0
    assert "--max-context: 60 is not a multiple of --window 50" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse names the bad list item
        main(["eval", "passkey", "--lengths", "4k,x", "--output-path", "x"])


def test_demo_prints_a_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--model", "tiny-llama", "--length", "120", "--trials", "1", "--dtype", "float32",
                 "--param", "chunk_size=8", "--param", "atten_length=32"]) == 0
    out = capsys.readouterr().out
    lines = [ln for ln in out.splitlines() if ln.startswith(("stock", "longheads", "method"))]
    assert len(lines) == 3 and "prefill s" in lines[0] and "0/1" in lines[1]

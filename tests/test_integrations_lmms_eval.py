"""lmms-eval plug-in (``--model hookkit``) against hookkit's own POPE runner (tiny-llava, CPU, offline).

The cross-check: on the bundled POPE samples, ``hookkit harness lmms-eval -- --model hookkit ... --tasks
hookkit_pope`` and ``hookkit eval pope`` give the same answer, prediction and metrics for every sample, stock, with
VHR (whose no-image reference branch runs inside the harness call) and with VAR. Also: loglikelihood under a
neutral method equals the stock model's, VHR's teacher-forced loglikelihood equals its own generation's logits,
and lmms-eval's upstream POPE scoring differs from hookkit's only where documented.

Needs ``lmms_eval`` (``pip install 'hookkit[lmms-eval]'``, or the lean install of docs/harnesses.md). Without it
the module is skipped, unless ``HOOKKIT_REQUIRE_HARNESS=1`` (CI) turns the skip into a failure.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from conftest import require_optional

require_optional("lmms_eval", "lmms-eval", "HOOKKIT_REQUIRE_HARNESS")

import torch  # noqa: E402
from lmms_eval.api.instance import Instance  # noqa: E402

import hookkit  # noqa: E402
from hookkit.cli.harness_cmd import main as harness_main  # noqa: E402
from hookkit.cli.main import main as hookkit_main  # noqa: E402
from hookkit.core.recipe import Recipe  # noqa: E402
from hookkit.errors import InputError  # noqa: E402
from hookkit.evals.pope import POPE_PROMPT_PRESETS  # noqa: E402
from hookkit.evals.pope.task import rescore_pope_records  # noqa: E402
from hookkit.generation import generate  # noqa: E402
from hookkit.integrations.lmms_eval import HookkitLMMS  # noqa: E402
from hookkit.integrations.tasks import tasks_dir  # noqa: E402
from hookkit.io import load_image  # noqa: E402

DATA = tasks_dir("lmms-eval") / "data"
QUESTIONS = DATA / "pope_example.jsonl"
IMAGES = DATA / "images"
#: VAR made active on tiny-llava (random weights have no natural sinks above tau=20): explicit sink dims, a low
#: threshold, every row eligible. The same recipe on both routes (and so the same recipe hash).
VAR_PARAMS = {"tau": 0.5, "summ": 0, "rho": 0, "p_move": 0.9, "sink_dims": [5, 17]}
METHODS: dict[str, tuple[str, list[str], Recipe | None]] = {
    "stock": ("", [], None),
    "vhr": (",method=vhr", ["--method", "vhr"], Recipe.single("vhr")),
    "var": (",method=var,param.tau=0.5,param.summ=0,param.rho=0,param.p_move=0.9,param.sink_dims=5;17",
            ["--method", "var", *sum((["--param", f"{k}={json.dumps(v)}"] for k, v in VAR_PARAMS.items()), [])],
            Recipe.single("var", VAR_PARAMS)),
}
METRICS = ("accuracy", "precision", "recall", "f1", "yes_ratio", "unknown_rate")


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


def _lmms_run(out: Path, model_args: str) -> SimpleNamespace:
    argv = ["lmms-eval", "--", "--model", "hookkit", "--model_args", model_args,
            "--tasks", "hookkit_pope,hookkit_pope_exact", "--batch_size", "1", "--output_path", str(out),
            "--log_samples"]
    assert harness_main(argv) == 0
    (results_file,) = out.rglob("*_results.json")
    samples = {}
    for task in ("hookkit_pope", "hookkit_pope_exact"):
        (path,) = out.rglob(f"*_samples_{task}.jsonl")
        samples[task] = sorted((json.loads(line) for line in path.read_text().splitlines()),
                               key=lambda s: s["doc_id"])
    return SimpleNamespace(results=json.loads(results_file.read_text()), samples=samples)


def _hookkit_run(out: Path, method_args: list[str], model: str = "tiny-llava") -> SimpleNamespace:
    argv = ["eval", "pope", "--model", model, "--dtype", "float32", "--data", f"random={QUESTIONS}", "--images",
            str(IMAGES), "--output-path", str(out), "--no-progress", *method_args]
    assert hookkit_main(argv) == 0
    results = json.loads((out / "results_pope.json").read_text())
    samples = [json.loads(line) for line in (out / "samples_pope.jsonl").read_text().splitlines()]
    return SimpleNamespace(results=results, samples=samples)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, SimpleNamespace]:
    """Both routes for every method, on the 24 bundled questions (greedy, 10 new tokens, batch 1)."""
    out: dict[str, SimpleNamespace] = {}
    for name, (model_args, cli_args, _) in METHODS.items():
        out[name] = SimpleNamespace(
            lmms=_lmms_run(tmp_path_factory.mktemp(f"lmms_{name}"), "pretrained=tiny-llava,dtype=float32" + model_args),
            hookkit=_hookkit_run(tmp_path_factory.mktemp(f"hookkit_{name}"), cli_args))
    return out


@pytest.mark.parametrize("method", list(METHODS))
def test_pope_lmms_route_equals_hookkit_runner(runs: dict[str, SimpleNamespace], method: str) -> None:
    lmms, ours = runs[method].lmms, runs[method].hookkit
    ref = {s["question_id"]: s for s in ours.samples}
    got = lmms.samples["hookkit_pope"]
    assert len(got) == len(ref) == 24 and ours.results["results"]["pope"]["n_errors"] == 0
    for sample in got:
        item = sample["pope_accuracy"]
        mine = ref[item["question_id"]]
        assert sample["input"] == mine["prompt"]  # the same user turn (question + llava15 suffix)
        assert item["answer"] == mine["answer"]  # the same generated text, token for token
        assert item["pred"] == mine["pred"] and item["label"] == mine["label"]
    table = lmms.results["results"]["hookkit_pope"]
    pope = ours.results["results"]["pope"]
    for metric in METRICS:
        assert table[f"pope_{metric},none"] == pytest.approx(pope[f"{metric},none"], abs=1e-12)
    # lmms-eval's exact-match scoring = hookkit's `exact` parser with lmms-eval's unknown policy.
    rescored = rescore_pope_records(ours.samples, parser="exact", unknown_policy="lmms_eval")
    exact = lmms.results["results"]["hookkit_pope_exact"]
    for metric in METRICS:
        assert exact[f"pope_{metric},none"] == pytest.approx(rescored[metric], abs=1e-12)
    # The results record what was attached, with the hash hookkit's own results carry.
    _, _, recipe = METHODS[method]
    block = lmms.results["config"]["hookkit"]
    if recipe is None:
        assert block["intervention"] is None and ours.results["intervention"] is None
    else:
        assert block["intervention"]["recipe_hash"] == recipe.hash() == ours.results["intervention"]["recipe_hash"]
        assert block["intervention"]["recipe"] == ours.results["intervention"]["recipe"]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["stock", "vhr"])
def test_pope_lmms_route_equals_hookkit_runner_on_scenes_llava(tmp_path: Path, method: str) -> None:
    """The same cross-check on the real scenes-llava (VAR is left out: the model has no visual sinks, so VAR is
    the stock model there; bench/scenes_methods.py)."""
    model_args, cli_args, _ = METHODS[method]
    lmms = _lmms_run(tmp_path / "lmms", "pretrained=scenes-llava,dtype=float32" + model_args)
    ours = _hookkit_run(tmp_path / "ours", cli_args, model="scenes-llava")
    ref = {s["question_id"]: s for s in ours.samples}
    got = lmms.samples["hookkit_pope"]
    assert len(got) == len(ref) == 24
    assert [s["pope_accuracy"]["answer"] for s in got] == [ref[s["pope_accuracy"]["question_id"]]["answer"]
                                                           for s in got]
    table, pope = lmms.results["results"]["hookkit_pope"], ours.results["results"]["pope"]
    for metric in METRICS:
        assert table[f"pope_{metric},none"] == pytest.approx(pope[f"{metric},none"], abs=1e-12)


@pytest.mark.parametrize("method", ["vhr", "var"])
def test_the_method_changes_generations_on_both_routes(runs: dict[str, SimpleNamespace], method: str) -> None:
    """Both routes really ran the method (else the equality above could be two stock runs)."""
    stock = [s["pope_accuracy"]["answer"] for s in runs["stock"].lmms.samples["hookkit_pope"]]
    edited = [s["pope_accuracy"]["answer"] for s in runs[method].lmms.samples["hookkit_pope"]]
    assert sum(a != b for a, b in zip(stock, edited)) >= 3


# ------------------------------------------------------------------------------------------------ upstream parser
def test_upstream_lmms_pope_scoring_differs_only_where_documented(runs: dict[str, SimpleNamespace]) -> None:
    """lmms-eval's own tasks/pope/utils.py, fed our generations plus edge cases: accuracy, precision, recall and
    F1 equal hookkit's ``exact`` parser with the ``lmms_eval`` unknown policy; yes_ratio differs (upstream computes
    it from the labels, eval-protocols.md §1.4)."""
    upstream = importlib.import_module("lmms_eval.tasks.pope.utils")
    from hookkit.evals.pope import parse_pope_answer, pope_metrics

    answers = [s["pope_accuracy"]["answer"] for s in runs["vhr"].lmms.samples["hookkit_pope"]]
    labels = [s["pope_accuracy"]["label"] for s in runs["vhr"].lmms.samples["hookkit_pope"]]
    answers += ["Yes", " no ", "Yes.", "No, there is not", "NO", "yes"]
    labels += ["yes", "no", "yes", "no", "no", "no"]
    items = []
    for i, (answer, label) in enumerate(zip(answers, labels)):
        doc = {"question_id": i, "answer": label, "question": "q"}
        items.append(upstream.pope_process_results(doc, [answer])["pope_accuracy"])
    ours = pope_metrics([parse_pope_answer(a.strip(), "exact") for a in answers], labels, unknown_policy="lmms_eval")
    assert upstream.pope_aggregate_accuracy(items) == pytest.approx(ours["accuracy"])
    assert upstream.pope_aggregate_precision(items) == pytest.approx(ours["precision"])
    assert upstream.pope_aggregate_recall(items) == pytest.approx(ours["recall"])
    assert upstream.pope_aggregate_f1_score(items) == pytest.approx(ours["f1"])
    assert upstream.pope_aggregate_yes_ratio(items) == pytest.approx(labels.count("yes") / len(labels))
    assert ours["yes_ratio"] == pytest.approx(sum(parse_pope_answer(a, "exact") == "yes" for a in answers) / len(answers))
    assert upstream.pope_aggregate_yes_ratio(items) != pytest.approx(ours["yes_ratio"])
    # Upstream strips the question; hookkit (and hookkit_pope) keep it byte for byte.
    doc = {"question": " Is there a dog in the image? "}
    kwargs = {"pre_prompt": "", "post_prompt": POPE_PROMPT_PRESETS["llava15"].suffix}
    assert upstream.pope_doc_to_text(doc, kwargs) == POPE_PROMPT_PRESETS["llava15"].format(doc["question"].strip())


# ------------------------------------------------------------------------------------------------ model API
class _Docs:
    """Stands in for lmms-eval's task_dict: {task: {split: [doc, ...]}}."""

    def __init__(self, docs: list[dict[str, Any]]) -> None:
        self.task_dict = {"t": {"test": docs}}


def _visual(doc: dict[str, Any]) -> list[Any]:
    return [load_image(IMAGES / doc["image"], field="image")] if doc.get("image") else []


def _model(**kwargs: Any) -> HookkitLMMS:
    lm = HookkitLMMS(pretrained="tiny-llava", dtype="float32", device="cpu", **kwargs)
    lm.task_dict = _Docs([{"image": "example_000001.png"}, {"image": "example_000002.png"}, {"image": None}]).task_dict
    return lm


def _request(kind: str, args: tuple[Any, ...], doc_id: int) -> Instance:
    return Instance(kind, args, 0, metadata={"task": "t", "doc_id": doc_id, "repeats": 1})


def _ll_request(context: str, continuation: str, doc_id: int) -> Instance:
    return _request("loglikelihood", (context, continuation, _visual, doc_id, "t", "test"), doc_id)


def test_loglikelihood_noop_matches_stock() -> None:
    stock, noop = _model(), _model(method="noop")
    requests = [_ll_request("Is there a dog in the image?", " yes there is a dog", 0),
                _ll_request("Describe the image.", " a cat", 1), _ll_request("The sky is", " blue", 2)]
    ref = stock.loglikelihood(requests)
    got = noop.loglikelihood(requests)
    for (a, ga), (b, gb) in zip(got, ref):
        assert a == pytest.approx(b, abs=1e-5) and ga == gb
    assert noop.scope.calls == 1 and getattr(noop.model, "_hookkit_session", None) is None


def test_vhr_loglikelihood_is_its_own_generation_teacher_forced() -> None:
    """With VHR the continuation is scored on the lock-step path generation takes: scoring the greedy answer gives
    exactly the log-probabilities of VHR's own generation, step by step."""
    lm = _model(method="vhr")
    image = _visual({"image": "example_000001.png"})[0]
    prompt = "Is there a dog in the image?"
    with hookkit.attach(lm.model, Recipe.single("vhr")):
        result = generate(lm.model, lm.processor, [prompt], [image], max_new_tokens=5, output_logits=True)
    ids = torch.tensor(result.new_token_ids[0])
    assert len(ids) >= 2, "the test needs a multi-token continuation"
    expected = sum(float(torch.log_softmax(step[0].float(), -1)[t]) for step, t in zip(result.logits, ids))
    continuation = lm.tokenizer.decode(ids)
    assert lm.tokenizer(continuation, add_special_tokens=False)["input_ids"] == ids.tolist(), "no round trip"
    (logprob, greedy), = lm.loglikelihood([_ll_request(prompt, continuation, 0)])
    assert logprob == pytest.approx(expected, abs=1e-4)
    assert greedy
    stock_logprob, _ = _model().loglikelihood([_ll_request(prompt, continuation, 0)])[0]
    assert abs(stock_logprob - logprob) > 1e-3  # VHR moved the scores


def test_generate_until_groups_batches_and_cuts_at_until() -> None:
    lm = _model(batch_size=2)
    gen = {"max_new_tokens": 6, "temperature": 0, "do_sample": False, "until": ["stop"], "image_aspect_ratio": "pad"}
    requests = [_request("generate_until", ("Is there a dog in the image?", dict(gen), _visual, i, "t", "test"), i)
                for i in (0, 1, 2)]
    texts = lm.generate_until(requests)
    images = [_visual({"image": "example_000001.png"})[0], _visual({"image": "example_000002.png"})[0], None]
    ref = generate(lm.model, lm.processor, ["Is there a dog in the image?"] * 2, images[:2], max_new_tokens=6).texts
    ref += generate(lm.model, lm.processor, ["Is there a dog in the image?"], [None], max_new_tokens=6).texts
    assert texts == [t.split("stop")[0] for t in ref]


def test_multi_round_follows_lmms_protocol() -> None:
    lm = _model()
    seen: list[tuple[int, list[str]]] = []

    def doc_to_text(doc: dict[str, Any], previous_output: list[str], round_idx: int,
                    previous_round_info: Any = None) -> tuple[Any, ...]:
        seen.append((round_idx, list(previous_output)))
        done = round_idx >= 2
        return _visual(doc), f"Round {round_idx}: is there a cat?", done, previous_output, {"round": round_idx}

    gen = {"max_new_tokens": 3}
    request = _request("generate_until_multi_round", ("Is there a dog in the image?", gen, _visual, doc_to_text, 0,
                                                     "t", "test"), 0)
    (rounds,) = lm.generate_until_multi_round([request])
    assert len(rounds) == 2 and [r for r, _ in seen] == [1, 2] and seen[0][1] == rounds[:1]


def test_several_images_go_through_generate_and_video_is_refused() -> None:
    lm = _model()
    pair = _visual({"image": "example_000001.png"}) + _visual({"image": "example_000002.png"})

    def two(doc: dict[str, Any]) -> list[Any]:
        return list(pair)

    request = _request("generate_until", ("Is there a dog?", {"max_new_tokens": 4}, two, 0, "t", "test"), 0)
    (text,) = lm.generate_until([request])
    assert text == generate(lm.model, lm.processor, ["Is there a dog?"], [pair], max_new_tokens=4).texts[0]

    def video(doc: dict[str, Any]) -> list[Any]:
        return ["/videos/clip.mp4"]

    request = _request("generate_until", ("q", {"max_new_tokens": 2}, video, 0, "t", "test"), 0)
    with pytest.raises(InputError, match="images only"):
        lm.generate_until([request])
    assert getattr(lm.model, "_hookkit_session", None) is None


def test_entry_point_resolves_to_the_plugin(monkeypatch: pytest.MonkeyPatch) -> None:
    """pyproject's ``[project.entry-points."lmms_eval.models"] hookkit = ...`` as lmms-eval's registry loads it."""
    from importlib.metadata import EntryPoint

    from lmms_eval.models.registry_v2 import ModelRegistryV2

    ep = EntryPoint(name="hookkit", value="hookkit.integrations.entry_points:lmms_eval_manifest",
                    group="lmms_eval.models")
    registry = ModelRegistryV2()
    monkeypatch.setattr(registry, "_select_entry_points", lambda group: [ep])
    registry.load_entrypoint_manifests()
    assert registry.get_model_class("hookkit") is HookkitLMMS

"""Harness plug-ins, the parts that need no harness: model_args parsing, the session scope, the bundled task data
and the passkey exporter (tiny models, CPU, offline)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from conftest import load_tiny

import hookkit
from hookkit.core.recipe import Recipe
from hookkit.errors import ConfigError, InputError
from hookkit.evals.passkey import NEEDLE_TEMPLATE, QUESTION, TASK_DESCRIPTION, build_passkey_prompt
from hookkit.evals.passkey.task import PasskeyTask
from hookkit.evals.pope import load_pope_questions
from hookkit.integrations.common import SessionScope, parse_param_value, split_model_args
from hookkit.integrations.tasks import (
    POPE_EXAMPLE_OBJECTS,
    export_passkey,
    read_jsonl,
    tasks_dir,
    write_example_pope,
)


# ------------------------------------------------------------------------------------------------ model_args
def test_param_values_follow_the_documented_rules() -> None:
    assert parse_param_value(2) == 2 and parse_param_value(2.5) == 2.5 and parse_param_value(True) is True
    assert parse_param_value("1;2;3") == [1, 2, 3]
    assert parse_param_value("5;17;") == [5, 17]
    assert parse_param_value("a;b") == ["a", "b"]
    assert parse_param_value("auto") == "auto"
    assert parse_param_value("none") is None and parse_param_value("False") is False
    assert parse_param_value('"12"') == "12"  # quoted stays a string (JSON)


def test_split_model_args_builds_the_recipe_and_keeps_harness_options() -> None:
    spec = split_model_args({"pretrained": "tiny-llama", "method": "longheads", "param.chunk_size": 16,
                             "param.atten_length": 128, "dtype": "float32", "batch_size": 4, "max_length": 512})
    assert spec.pretrained == "tiny-llama"
    assert spec.recipe is not None
    assert spec.recipe.to_dict() == Recipe.single("longheads", {"chunk_size": 16, "atten_length": 128}).to_dict()
    assert spec.recipe_source == "method=longheads"
    assert spec.load_kwargs == {"dtype": "float32"}
    assert spec.rest == {"batch_size": 4, "max_length": 512}

    stacked = split_model_args({"pretrained": "x", "method": "noop", "allow_stacking": "probs;score_bias"})
    assert stacked.recipe.allow_stacking == ["probs", "score_bias"]
    assert split_model_args({"pretrained": "tiny-llama"}).recipe is None


def test_split_model_args_reads_a_recipe_file(tmp_path: Path) -> None:
    path = Recipe.single("noop", {"exercise": False}).save(tmp_path / "r.json")
    spec = split_model_args({"pretrained": "tiny-llama", "recipe": str(path)})
    assert spec.recipe.hash() == Recipe.load(path).hash()
    assert spec.recipe_source == f"recipe={path}"


@pytest.mark.parametrize(("args", "field"), [
    ({"method": "vhr", "recipe": "r.json"}, "model_args.recipe"),
    ({"param.alpha": 2}, "model_args.param"),
    ({"method": "nope"}, "method"),
    ({"method": "vhr", "param.alhpa": 2}, "vhr.alhpa"),
    ({}, "model_args.pretrained"),
])
def test_split_model_args_errors_name_the_field(args: dict, field: str) -> None:
    full = {"pretrained": "tiny-llama", **args} if args else {}
    with pytest.raises(ConfigError) as err:
        split_model_args(full)
    assert err.value.field == field


def test_session_scope_is_reentrant_and_detaches() -> None:
    model, _, _ = load_tiny("tiny-llama")
    scope = SessionScope(model, Recipe.single("noop"))
    with scope() as outer:
        assert model._hookkit_session is outer and scope.active
        with scope() as inner:
            assert inner is outer
        assert scope.active
    assert getattr(model, "_hookkit_session", None) is None and not scope.active
    assert scope.calls == 1
    with pytest.raises(RuntimeError), scope():
        raise RuntimeError("a failing harness call")
    assert getattr(model, "_hookkit_session", None) is None
    with SessionScope(model, None)() as nothing:
        assert nothing is None and getattr(model, "_hookkit_session", None) is None


# ------------------------------------------------------------------------------------------------ bundled data
def test_bundled_task_folders() -> None:
    lm = tasks_dir("lm-eval")
    lmms = tasks_dir("lmms-eval")
    assert {p.name for p in lm.glob("*.yaml")} == {"hookkit_mc.yaml", "hookkit_passkey.yaml", "hookkit_kjv_ppl.yaml"}
    assert {p.name for p in lmms.glob("*.yaml")} == {"hookkit_pope.yaml", "hookkit_pope_exact.yaml"}
    with pytest.raises(ConfigError):
        tasks_dir("vlmevalkit")
    mc = read_jsonl(lm / "data" / "mc.jsonl")
    assert len(mc) >= 10
    assert all(0 <= r["answer"] < len(r["choices"]) for r in mc)


def test_bundled_passkey_file_is_hookkit_builder_output() -> None:
    """The bundled prompts are ``hookkit eval passkey``'s samples (SmolLM2, lengths 2048/12288, 2 trials, seed 0):
    same ids, keys and depths; every prompt is the §5.1 text around its needle, and its hash is recorded."""
    records = read_jsonl(tasks_dir("lm-eval") / "data" / "passkey_smollm2.jsonl")
    samples = PasskeyTask(None, [2048, 12288], 2, trial_seed=0).samples()
    assert [r["doc_id"] for r in records] == [s["sample_id"] for s in samples]
    for record, sample in zip(records, samples):
        assert record["passkey"] == sample["passkey"] and record["answer"] == str(sample["passkey"])
        assert record["n_tokens"] == record["length"] == sample["length"] and record["exact_length"]
        prompt = record["prompt"]
        assert prompt.startswith(TASK_DESCRIPTION + "\n") and prompt.endswith("\n" + QUESTION)
        assert NEEDLE_TEMPLATE.format(K=record["passkey"]) in prompt
        assert hashlib.sha256(prompt.encode()).hexdigest() == record["prompt_sha256"]
        assert record["tokenizer"] == "smollm2"


def test_export_passkey_matches_the_hookkit_runner(tmp_path: Path) -> None:
    _, tokenizer, _ = load_tiny("tiny-llama")
    path = export_passkey(tokenizer, tmp_path / "pk.jsonl", lengths=[96, 160], trials=2, seed=3,
                          tokenizer_name="tiny-llama")
    records = read_jsonl(path)
    task = PasskeyTask(tokenizer, [96, 160], 2, trial_seed=3)
    assert len(records) == 4
    for record, sample in zip(records, task.samples()):
        prompt = build_passkey_prompt(tokenizer, sample["length"], sample["depth"], sample["passkey"])
        assert record["doc_id"] == sample["sample_id"]
        assert record["prompt"] == prompt.prompt
        assert record["n_tokens"] == len(tokenizer(record["prompt"]).input_ids) == sample["length"]


def test_example_pope_is_deterministic_and_a_valid_pope_file(tmp_path: Path) -> None:
    bundled = tasks_dir("lmms-eval") / "data"
    written = write_example_pope(tmp_path)
    assert written.read_bytes() == (bundled / "pope_example.jsonl").read_bytes()
    for name in POPE_EXAMPLE_OBJECTS:
        assert (tmp_path / "images" / name).read_bytes() == (bundled / "images" / name).read_bytes()
    questions = load_pope_questions(written)
    assert len(questions) == 6 * len(POPE_EXAMPLE_OBJECTS)
    assert [q.label for q in questions[:6]] == ["yes", "no"] * 3
    for q in questions:
        present, absent = POPE_EXAMPLE_OBJECTS[q.image]
        obj = q.text.split(" in the image")[0].split()[-1]
        assert (obj in present) == (q.label == "yes") and (obj in present or obj in absent)


def test_harness_tasks_command_lists_the_bundled_tasks(capsys: pytest.CaptureFixture[str]) -> None:
    from hookkit.cli.harness_cmd import main

    assert main(["tasks"]) == 0
    out = capsys.readouterr().out
    for name in ("hookkit_mc", "hookkit_passkey", "hookkit_kjv_ppl", "hookkit_pope", "hookkit_pope_exact"):
        assert name in out


def test_harness_export_passkey_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from hookkit.cli.harness_cmd import main

    out = tmp_path / "pk.jsonl"
    assert main(["export-passkey", "--model", "tiny-llama", "--lengths", "96", "--trials", "2", "--output",
                 str(out)]) == 0
    assert "wrote 2 passkey prompts" in capsys.readouterr().out
    assert [json.loads(line)["doc_id"] for line in out.read_text().splitlines()] == ["len96-trial0", "len96-trial1"]
    assert main(["export-passkey", "--model", "tiny-llama", "--lengths", "96", "--trials", "0", "--output",
                 str(out)]) == 2


def test_harness_without_a_harness_or_arguments_is_an_error() -> None:
    from hookkit.cli.harness_cmd import harness_argv, main

    assert main([]) == 2
    assert main(["lm-eval"]) == 2
    argv = harness_argv(["--", "--model", "hookkit"], "lm-eval")
    assert argv == ["--model", "hookkit", "--include_path", str(tasks_dir("lm-eval"))]
    assert harness_argv(["--model", "x", "--include_path", "/a"], "lmms-eval") == ["--model", "x", "--include_path",
                                                                                    "/a"]
    assert harness_argv(["--model", "x"], "lm-eval", bundled_tasks=False) == ["--model", "x"]


def test_hookkit_main_registers_the_harness_command() -> None:
    """``hookkit harness`` is wired into the top-level CLI (hookkit/cli/main.py lists harness_cmd)."""
    from hookkit.cli.main import build_parser

    parser = build_parser()
    choices = next(a for a in parser._actions if a.dest == "command").choices
    assert "harness" in choices


def test_missing_data_file_names_the_path(tmp_path: Path) -> None:
    from hookkit.integrations.tasks import resolve_data_path

    with pytest.raises(InputError, match="nope.jsonl"):
        resolve_data_path("nope.jsonl", tmp_path)
    assert resolve_data_path(str(tmp_path), Path("/elsewhere")) == tmp_path


def test_integrations_never_import_the_cli() -> None:
    root = Path(hookkit.__file__).parent / "integrations"
    offenders = [str(p) for p in root.rglob("*.py") if "hookkit.cli" in p.read_text()]
    assert not offenders

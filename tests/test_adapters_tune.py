"""Adapter folders (hookkit/methods/adapters.py), the trainer (hookkit/methods/training.py) and `hookkit tune`.

Save -> load reproduces the logits exactly (through ``hookkit.load(..., adapter=)``, ``load_adapter`` and the
folder's recipe.json); malformed folders get errors naming the problem; training leaves the base model untouched;
an interrupted-and-resumed run equals an uninterrupted one bit for bit.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import load_tiny
from helpers import build_batch, prefill_logits

import hookkit
from hookkit.core.recipe import Recipe
from hookkit.errors import ConfigError, InputError
from hookkit.evals.corpus import load_corpus
from hookkit.methods.alora import ALoRA
from hookkit.methods.lora import LoRA
from hookkit.methods.moh import MoH
from hookkit.methods.trainable import (
    CONFIG_NAME,
    RECIPE_NAME,
    WEIGHTS_NAME,
    load_adapter,
    read_adapter,
    save_adapter,
    unload_adapter,
)
from hookkit.methods.training import TrainConfig, Trainer, tokenize_blocks

TEXT = (
    "In the beginning God created the heaven and the earth.\nAnd the earth was without form, and void; and "
    "darkness was upon the face of the deep.\n\nAnd God said, Let there be light: and there was light.\nAnd God saw "
    "the light, that it was good: and God divided the light from the darkness.\n\n"
) * 12


def perturbed(iv, info, seed: int = 0):
    iv.build(info)
    gen = torch.Generator().manual_seed(seed)
    iv.load_tensors({k: torch.randn(v.shape, generator=gen) * 0.1 for k, v in iv.tensors().items()})
    return iv


ADAPTERS = {
    "moh-learned": lambda: MoH(variant="learned", top_k=1, lora_rank=4),
    "moh-query-norm": lambda: MoH(top_k=1, lora_rank=2, lora_targets=["self_attn.q_proj", "mlp.down_proj"]),
    "alora": lambda: ALoRA(rank=4, variant="gated"),
    "lora": lambda: LoRA(rank=4),
}


@pytest.mark.parametrize("kind", list(ADAPTERS))
def test_save_load_round_trip_is_exact(kind: str, tmp_path: Path) -> None:
    model, processor, info = load_tiny("tiny-llama")
    batch = build_batch(info, processor, 2)
    iv = perturbed(ADAPTERS[kind](), info)
    with hookkit.attach(model, iv):
        expected = prefill_logits(model, batch)
    stock = prefill_logits(model, batch)
    assert not torch.equal(expected, stock)
    save_adapter(iv, info, tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {CONFIG_NAME, WEIGHTS_NAME, RECIPE_NAME}

    fresh, _ = hookkit.load("tiny-llama", dtype="float32", adapter=tmp_path)  # a new model object
    assert fresh._hookkit_session is not None
    assert torch.equal(prefill_logits(fresh, batch), expected)
    unload_adapter(fresh)
    assert torch.equal(prefill_logits(fresh, batch), stock)

    with hookkit.attach(model, Recipe.load(tmp_path / RECIPE_NAME)):  # what `hookkit apply --recipe` does
        assert torch.equal(prefill_logits(model, batch), expected)

    load_adapter(model, tmp_path)
    try:
        assert torch.equal(prefill_logits(model, batch), expected)
    finally:
        unload_adapter(model)


def _saved(tmp_path: Path) -> Path:
    _, _, info = load_tiny("tiny-llama")
    folder = tmp_path / "adapter"
    save_adapter(perturbed(ALoRA(rank=4), info), info, folder)
    return folder


def _edit_config(folder: Path, **changes) -> None:
    cfg = json.loads((folder / CONFIG_NAME).read_text())
    cfg.update(changes)
    (folder / CONFIG_NAME).write_text(json.dumps(cfg))


@pytest.mark.parametrize("problem,error,needle", [
    ("missing_folder", InputError, "does not exist"),
    ("missing_config", InputError, CONFIG_NAME),
    ("missing_weights", InputError, WEIGHTS_NAME),
    ("bad_json", ConfigError, "not valid JSON"),
    ("unknown_method", ConfigError, "unknown method 'dora'"),
    ("not_an_adapter", ConfigError, "not a trainable adapter"),
    ("unknown_param", ConfigError, "unknown parameter"),
    ("bad_version", ConfigError, "unsupported adapter format"),
    ("wrong_shapes", ConfigError, "wrong shapes"),
    ("missing_tensor", ConfigError, "missing tensors"),
    ("bad_safetensors", ConfigError, "not a valid safetensors file"),
    ("base_mismatch", ConfigError, "different base model"),
])
def test_malformed_adapter_folder_errors(problem: str, error: type, needle: str, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    folder = _saved(tmp_path)
    target = "tiny-llama"
    if problem == "missing_folder":
        folder = tmp_path / "nope"
    elif problem == "missing_config":
        (folder / CONFIG_NAME).unlink()
    elif problem == "missing_weights":
        (folder / WEIGHTS_NAME).unlink()
    elif problem == "bad_json":
        (folder / CONFIG_NAME).write_text("{not json")
    elif problem == "unknown_method":
        _edit_config(folder, method="dora")
    elif problem == "not_an_adapter":
        _edit_config(folder, method="noop", params={})
    elif problem == "unknown_param":
        _edit_config(folder, params={"rank": 4, "colour": "blue"})
    elif problem == "bad_version":
        _edit_config(folder, hookkit_adapter=99)
    elif problem in ("wrong_shapes", "missing_tensor"):
        tensors = load_file(str(folder / WEIGHTS_NAME))
        key = sorted(tensors)[0]
        if problem == "wrong_shapes":
            tensors[key] = torch.zeros(3, 3)
        else:
            del tensors[key]
        save_file(tensors, str(folder / WEIGHTS_NAME))
    elif problem == "bad_safetensors":
        (folder / WEIGHTS_NAME).write_bytes(b"garbage")
    elif problem == "base_mismatch":
        target = "tiny-qwen2"
    model, _, _ = load_tiny(target)
    with pytest.raises(error) as exc:
        load_adapter(model, folder)
    assert needle in str(exc.value)
    assert getattr(model, "_hookkit_session", None) is None  # nothing was attached


def test_read_adapter_gives_config_and_pending_weights(tmp_path: Path) -> None:
    iv, cfg = read_adapter(_saved(tmp_path))
    assert cfg["method"] == "alora" and cfg["base_model"]["family"] == "llama"
    assert set(cfg["tensors"]) == set(iv.tensors())


# ---------------------------------------------------------------------------------------------- trainer
def _trainer(iv, out: Path, steps: int = 4, **cfg) -> Trainer:
    model, processor, info = load_tiny("tiny-llama")
    train_text, heldout_text = TEXT[: len(TEXT) * 3 // 4], TEXT[len(TEXT) * 3 // 4:]
    config = TrainConfig(steps=steps, lr=1e-2, batch_size=2, seq_len=16, eval_every=2, eval_blocks=2,
                         warmup_steps=1, **cfg)
    return Trainer(model, processor, iv, config, out, train_text=train_text, heldout_text=heldout_text,
                   progress=False)


def test_training_changes_only_the_adapter(tmp_path: Path) -> None:
    model, _, _ = load_tiny("tiny-llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = {k: p.requires_grad for k, p in model.named_parameters()}
    iv = MoH(variant="learned", top_k=1, lora_rank=2)
    trainer = _trainer(iv, tmp_path)
    start = iv.tensors() if iv.is_built else None
    summary = trainer.train()
    assert start is None
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert flags == {k: p.requires_grad for k, p in model.named_parameters()}
    assert not model.training and getattr(model, "_hookkit_session", None) is None
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    losses = [r for r in records if "loss" in r]
    assert [r["step"] for r in losses] == [1, 2, 3, 4]
    assert all(r["aux"] is not None and r["aux"] > 0 for r in losses)  # MoH's β·L_b is part of the loss
    assert [r["step"] for r in records if "heldout_ppl" in r] == [2, 4]
    assert summary["final_eval"]["heldout_ppl"] > 1
    assert (tmp_path / WEIGHTS_NAME).exists() and (tmp_path / "checkpoint" / "optimizer.safetensors").exists()
    fresh, _ = hookkit.load("tiny-llama", dtype="float32", adapter=tmp_path)
    assert fresh._hookkit_session is not None


@pytest.mark.parametrize("make", [lambda: ALoRA(rank=4, dropout=0.2), lambda: MoH(lora_rank=2, lora_dropout=0.1)])
def test_resume_equals_uninterrupted(make, tmp_path: Path) -> None:
    straight = make()
    _trainer(straight, tmp_path / "a").train()
    interrupted = make()
    first = _trainer(interrupted, tmp_path / "b").train(stop_after=2)
    assert first["steps_done"] == 2 and not (tmp_path / "b" / WEIGHTS_NAME).exists()
    resumed = make()
    _trainer(resumed, tmp_path / "b").train(resume=True)
    a, b = straight.tensors(), resumed.tensors()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    log_a = [json.loads(x) for x in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    log_b = [json.loads(x) for x in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    strip = [{k: v for k, v in r.items() if k != "elapsed_s"} for r in log_a]
    assert strip == [{k: v for k, v in r.items() if k != "elapsed_s"} for r in log_b]
    # and the resume really continued: a fresh run of 2 steps differs from 4
    assert not all(torch.equal(a[k], interrupted.tensors()[k]) for k in a)


def test_resume_refuses_other_settings(tmp_path: Path) -> None:
    _trainer(LoRA(rank=2), tmp_path).train(stop_after=2)
    with pytest.raises(ConfigError, match="checkpoint"):
        _trainer(LoRA(rank=3), tmp_path).train(resume=True)
    with pytest.raises(ConfigError, match="--seed"):
        _trainer(LoRA(rank=2), tmp_path, seed=5).train(resume=True)
    with pytest.raises(InputError, match="no checkpoint"):
        _trainer(LoRA(rank=2), tmp_path / "empty").train(resume=True)


def test_parameter_free_configuration_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no trainable parameters"):
        _trainer(MoH(), tmp_path).train()
    model, _, _ = load_tiny("tiny-llama")
    assert getattr(model, "_hookkit_session", None) is None


def test_corpus_and_blocks() -> None:
    train, heldout = load_corpus(["kjv"])
    assert heldout.startswith("Colossians 2\n")
    refs_train, refs_heldout = load_corpus(["kjv-refs"])
    assert refs_train.startswith("Genesis 1:1 In the beginning") and refs_heldout.startswith("Colossians 2:1 ")
    _, processor, _ = load_tiny("tiny-llama")
    blocks = tokenize_blocks(processor, TEXT, 16)
    assert blocks.shape[1] == 16 and blocks.dtype == torch.long
    with pytest.raises(InputError):
        load_corpus(["/definitely/not/here.txt"])


def test_tune_cli_end_to_end(tmp_path: Path, capsys) -> None:
    from hookkit.cli.main import main

    data = tmp_path / "data.txt"
    data.write_text(TEXT)
    out = tmp_path / "run"
    args = ["tune", "--method", "moh", "--model", "tiny-llama", "--data", str(data), "--steps", "3",
            "--seq-len", "16", "--batch-size", "2", "--eval-every", "2", "--eval-blocks", "2", "--heldout-fraction",
            "0.3", "--output", str(out), "--no-progress", "--json"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["steps_done"] == 3 and summary["trainable_parameters"] > 0
    cfg = json.loads((out / CONFIG_NAME).read_text())
    assert cfg["method"] == "moh" and cfg["params"]["lora_rank"] == 16  # the CLI's default for query-norm MoH
    assert main(args + ["--resume"]) == 0  # already finished: resumes at step 3 and re-saves
    capsys.readouterr()
    assert main(["apply", "--model", "tiny-llama", "--recipe", str(out / RECIPE_NAME), "--prompt", "Is there a dog",
                 "--max-new-tokens", "2"]) == 0  # `hookkit apply --recipe DIR/recipe.json`
    assert main(["tune", "--method", "vhr", "--model", "tiny-llama", "--data", str(data), "--output",
                 str(tmp_path / "x")]) == 2
    shutil.rmtree(out)

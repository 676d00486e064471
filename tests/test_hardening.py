"""Regression tests for faults found by using hookkit as a careless user would (silent wrong results first).

Each test here failed before its fix. LongHeads' RoPE-variant refusals live in tests/test_longheads.py; the
property-based layer (every method, every parameter, generated values) in tests/test_properties.py; kill-and-resume
for every eval task in tests/test_fault_injection.py.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import load_tiny
from helpers import build_batch, make_image, max_logit_diff

import hookkit
from hookkit.cli.main import main
from hookkit.core.recipe import Recipe
from hookkit.errors import ConfigError, InputError, UnsupportedModelError, check_range
from hookkit.evals.runner import EvalTask, NothingScoredError, evaluate
from hookkit.generation import generate
from hookkit.methods.noop import Noop
from hookkit.methods.var import VAR
from hookkit.methods.vhr import VHR, select_heads


# ------------------------------------------------------------------------------------------------ a tiny POPE setup
@pytest.fixture(scope="module")
def pope(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("pope_hard")
    images = root / "images"
    images.mkdir()
    for i in range(2):
        make_image(i).save(images / f"img{i}.jpg")
    good = root / "coco_pope_random.json"
    good.write_text("".join(json.dumps({"question_id": q, "image": f"img{q % 2}.jpg",
                                        "text": "Is there a dog in the image?", "label": "yes" if q % 2 else "no"})
                            + "\n" for q in range(1, 5)))
    return root, images, good


def _pope(root: Path, images: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["eval", "pope", "--model", "tiny-llava", "--data", f"random={data}", "--images", str(images),
            "--output-path", str(out), "--no-progress", "--max-new-tokens", "2", *extra]


# ------------------------------------------------------------------------------------------------ 2. fingerprints
def test_eval_checks_the_recipe_fingerprint_like_apply(pope, tmp_path: Path, capsys) -> None:
    """A fixed-head VHR recipe made for LLaVA, used on Gemma3: refused by `eval` too, before any output exists."""
    root, images, good = pope
    llava, _, info = load_tiny("tiny-llava")
    vhr = VHR()
    vhr.set_fixed_heads(torch.ones(info.num_layers, info.num_heads, dtype=torch.bool))
    recipe = tmp_path / "r.json"
    Recipe.from_interventions([vhr], model=info.fingerprint()).save(recipe)
    out = tmp_path / "out"
    argv = _pope(root, images, good, out, "--recipe", str(recipe))
    argv[argv.index("tiny-llava")] = "tiny-gemma3"
    assert main(argv) == 2
    assert "made for another model" in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())
    gemma, _, _ = load_tiny("tiny-gemma3")
    with pytest.raises(ConfigError, match=r"recipe\.model: .*made for another model.*family"):
        hookkit.attach(gemma, Recipe.load(recipe))


# ------------------------------------------------------------------------------------------------ 3. numbers
@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan, True, False, "2", None, [2.0]])
def test_non_finite_numbers_and_booleans_are_not_numbers(value) -> None:
    with pytest.raises(ConfigError, match=r"^vhr\.alpha: "):
        check_range("vhr.alpha", value, low=0.0, low_inclusive=False)


def test_infinite_alpha_and_tau_are_refused_at_attach_and_on_the_command_line(capsys) -> None:
    model, _, _ = load_tiny("tiny-llava")
    for iv, field in ((VHR(alpha=math.inf), "vhr.alpha"), (VHR(alpha=True), "vhr.alpha"),
                      (VAR(tau=math.inf), "var.tau"), (VAR(p_move=math.nan), "var.p_move")):
        with pytest.raises(ConfigError, match=rf"^{field}: "):
            hookkit.attach(model, iv)
    assert main(["apply", "--method", "vhr", "--param", "alpha=Infinity", "--model", "tiny-llava",
                 "--prompt", "hi"]) == 2
    assert "vhr.alpha" in capsys.readouterr().err


def test_saved_recipes_are_strict_json(tmp_path: Path) -> None:
    path = Recipe.single("vhr", {"alpha": 2.5}).save(tmp_path / "r.json")
    json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    with pytest.raises(ValueError):
        Recipe.single("vhr", {"alpha": math.inf}).save(tmp_path / "bad.json")


# ------------------------------------------------------------------------------------------------ 4. scoring nothing
@pytest.mark.parametrize("content", [b"", b'[{"question_id": 1}]\n', bytes(range(256)) * 4,
                                     b'{"question_id": "x"}\n{"nope": 1}\nnot json\n'],
                         ids=["empty", "json-array", "binary", "all-malformed"])
def test_a_pope_run_that_scores_nothing_fails(pope, tmp_path: Path, content: bytes, capsys) -> None:
    root, images, _ = pope
    data = tmp_path / "coco_pope_random.json"
    data.write_bytes(content)
    out = tmp_path / "out"
    assert main(_pope(root, images, data, out)) == 2
    assert "nothing to evaluate" in capsys.readouterr().err
    assert not (out / "results_pope.json").exists()


def test_limit_zero_fails(pope, tmp_path: Path, capsys) -> None:
    root, images, good = pope
    assert main(_pope(root, images, good, tmp_path / "out", "--limit", "0")) == 2
    assert "selects none" in capsys.readouterr().err


class _AlwaysFails(EvalTask):
    name, version = "always_fails", "1"

    def samples(self):
        return [{"sample_id": f"s{i}"} for i in range(3)]

    def predict(self, batch):
        from hookkit.evals.runner import SampleError

        raise SampleError(batch[0]["sample_id"], "broken on purpose")

    def aggregate(self, records):
        return {"accuracy": sum(1 for _ in records) / max(len(records), 1)}  # would report 0.0 for nothing

    def higher_is_better(self):
        return {"accuracy": True}


def test_every_sample_erroring_writes_null_metrics_and_fails(tmp_path: Path) -> None:
    with pytest.raises(NothingScoredError, match="none of the 3 samples could be scored.*broken on purpose"):
        evaluate(_AlwaysFails(), output_dir=tmp_path, model_info={"model": "x"}, progress=False)
    results = json.loads((tmp_path / "results_always_fails.json").read_text())
    assert results["results"]["always_fails"]["accuracy,none"] is None
    assert results["results"]["always_fails"]["n_errors"] == 3


# ------------------------------------------------------------------------------------------------ 5. generation modes
def test_vhr_refuses_beam_search_and_static_caches_up_front() -> None:
    model, processor, info = load_tiny("tiny-llava")
    with hookkit.attach(model, VHR()):
        with pytest.raises(InputError, match=r"vhr cannot follow beam search \(num_beams=2\)"):
            generate(model, processor, ["Describe the image."], [make_image(0)], max_new_tokens=2, num_beams=2)
        with pytest.raises(InputError, match="dynamic KV cache.*static"):
            generate(model, processor, ["Describe the image."], [make_image(0)], max_new_tokens=2,
                     cache_implementation="static")
    with hookkit.attach(model, Noop(sites=["head_output"])):  # a method with no per-row state may beam-search
        batch = build_batch(info, processor, 1)
        model.generate(**batch, max_new_tokens=2, num_beams=2, pad_token_id=0)


def test_a_refused_generation_mode_leaves_no_run_folder(pope, tmp_path: Path, capsys) -> None:
    root, images, good = pope
    out = tmp_path / "out"
    assert main(_pope(root, images, good, out, "--method", "vhr", "--num-beams", "2")) == 2
    assert "beam search" in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())
    assert main(_pope(root, images, good, out, "--method", "vhr")) == 0  # the same folder is usable at once


def test_a_crash_on_the_first_batch_leaves_no_run_folder(tmp_path: Path) -> None:
    class Crashes(_AlwaysFails):
        def predict(self, batch):
            raise RuntimeError("crash before any record")

    with pytest.raises(RuntimeError, match="crash before any record"):
        evaluate(Crashes(), output_dir=tmp_path, model_info={"model": "x"}, progress=False)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------------ 6. several images
def test_several_images_per_prompt_where_the_family_allows_them() -> None:
    model, processor, info = load_tiny("tiny-qwen2.5-vl")
    images = [make_image(0), make_image(1, size=(64, 96))]
    out = generate(model, processor, ["Compare the two images."], [images], max_new_tokens=3,
                   suppress_tokens=list(range(500, info.text_config.vocab_size)))
    direct = info.adapter.build_inputs(processor, ["Compare the two images."], [images])
    one = info.adapter.build_inputs(processor, ["Compare the two images."], [images[:1]])
    image_id = info.image_token_ids[0]
    assert int((direct["input_ids"] == image_id).sum()) > int((one["input_ids"] == image_id).sum()) > 0
    assert len(out.new_token_ids[0]) == 3


def test_families_that_take_one_image_say_so() -> None:
    model, processor, info = load_tiny("tiny-instructblip")
    with pytest.raises(InputError, match=r"images\[0\]: 2 images, but instructblip takes at most 1"):
        generate(model, processor, ["Describe."], [[make_image(0), make_image(1)]], max_new_tokens=1)
    with pytest.raises(InputError, match=r"images\[0\]: expected None, a PIL image or a list of PIL images"):
        generate(model, processor, ["Describe."], [np.zeros((4, 4))], max_new_tokens=1)


# ------------------------------------------------------------------------------------------------ 7. architectures
def _save(tmp_path: Path, model, name: str) -> Path:
    from hookkit.models.tiny import make_tokenizer

    path = tmp_path / name
    model.save_pretrained(path)
    make_tokenizer({}).save_pretrained(path)
    return path


def test_models_without_an_sdpa_path_load_on_eager(tmp_path: Path) -> None:
    """Gemma2 has no sdpa implementation in transformers: the default load falls back to eager, exactly."""
    import transformers as T

    from hookkit.models.tiny import TEXT_CONFIG

    torch.manual_seed(0)
    path = _save(tmp_path, T.Gemma2ForCausalLM(T.Gemma2Config(**{**TEXT_CONFIG, "head_dim": 16})), "gemma2")
    model, tok = hookkit.load(str(path))
    info = hookkit.get_model_info(model)
    batch = tok(["w1 w2 w3 w4", "w5 w6"], padding=True, return_tensors="pt")
    kw = dict(max_new_tokens=3, min_new_tokens=3, do_sample=False, output_logits=True, return_dict_in_generate=True,
              pad_token_id=0)
    stock = model.generate(**batch, **kw)
    with hookkit.attach(model, Noop()) as session:
        assert session.describe()["attention_implementation"]["text"] == "hookkit_eager"
        hooked = model.generate(**batch, **kw)
    assert info.family == "generic" and max_logit_diff(stock, hooked) == 0.0
    with pytest.raises(UnsupportedModelError, match="sdpa"):
        hookkit.load(str(path), attn_implementation="sdpa")


def test_attention_sinks_are_refused_at_attach_not_at_the_first_forward(tmp_path: Path) -> None:
    import transformers as T

    from hookkit.models.tiny import TEXT_CONFIG

    torch.manual_seed(0)
    cfg = T.GptOssConfig(**{**TEXT_CONFIG, "head_dim": 16, "num_local_experts": 2, "num_experts_per_tok": 1})
    model, _ = hookkit.load(str(_save(tmp_path, T.GptOssForCausalLM(cfg), "gpt_oss")))
    with pytest.raises(UnsupportedModelError, match="attention sinks"):
        hookkit.attach(model, Noop(sites=["score_bias"]))
    with hookkit.attach(model, Noop(sites=["head_output"])):  # sites outside the attention function are fine
        pass


def test_a_missing_torchvision_names_the_install_command(monkeypatch) -> None:
    from hookkit.models import families

    def no_processor(source: str):
        raise ImportError("LlavaOnevisionVideoProcessor requires the Torchvision library but it was not found")

    monkeypatch.setattr(families, "_auto_processor", no_processor)
    with pytest.raises(InputError, match=r"pip install torchvision"):
        families.FamilyAdapter().load_processor("somewhere")


# ------------------------------------------------------------------------------------------------ 8. VHD noise
def test_vhd_noise_selects_no_head() -> None:
    g = torch.Generator().manual_seed(0)
    ta = torch.rand(2, 8, generator=g) + 0.5
    noise = torch.rand(2, 8, generator=g) * 1e-7
    assert select_heads(noise, ta).sum() > 0  # the plain rule picks half the heads from rounding noise
    assert select_heads(noise, ta, noise_tol=4 * torch.finfo(torch.float32).eps).sum() == 0
    signal = noise + torch.linspace(0.1, 0.8, 8)  # every head carries signal: the tolerance changes nothing
    assert select_heads(signal, ta, noise_tol=1e-6).tolist() == select_heads(signal, ta).tolist()


def test_lockstep_picks_no_head_where_the_last_position_cannot_see_the_image() -> None:
    """tiny-gemma3 layer 0 slides over 6 keys: with a long question the image is out of reach, so VHD is noise."""
    model, processor, info = load_tiny("tiny-gemma3")
    assert info.layer_types()[0] == "sliding_attention"
    prompt = "Is there a dog in the image ? Please answer the question using a single word or phrase ."
    vhr = VHR(layers=[0, 1])
    with hookkit.attach(model, vhr) as session:
        generate(model, processor, [prompt], [make_image(0)], max_new_tokens=1)
        state = session.states[vhr]
    assert float(state.vhd[0].max()) < 1e-5 and int(state.heads[0].sum()) == 0  # noise: nothing chosen
    assert float(state.vhd[1].max()) > 1e-3  # a full layer still sees the image


# ------------------------------------------------------------------------------------------------ 9. clear errors
def test_raw_tracebacks_became_clear_errors(capsys) -> None:
    model, processor, _ = load_tiny("tiny-llava")
    for bad in ("vhr", None, [None]):
        with pytest.raises(ConfigError, match="^interventions: "):
            hookkit.attach(model, bad)
    with pytest.raises(InputError, match="^prompts: "):
        generate(model, processor, [])
    assert main(["apply", "--method", "vhr", "--param", "layers=2", "--model", "tiny-llava", "--prompt", "hi"]) == 2
    assert "vhr.layers: expected a list of integers" in capsys.readouterr().err


def test_an_empty_prompt_without_template_or_bos_is_an_input_error(tmp_path: Path) -> None:
    import transformers as T

    from hookkit.models.tiny import TEXT_CONFIG, make_tokenizer

    torch.manual_seed(0)
    path = tmp_path / "bare"
    T.LlamaForCausalLM(T.LlamaConfig(**TEXT_CONFIG)).save_pretrained(path)
    make_tokenizer({}).save_pretrained(path)  # no chat template, no BOS added
    model, tok = hookkit.load(str(path))
    with pytest.raises(InputError, match=r"prompts\[0\]: the prompt is empty after tokenisation"):
        generate(model, tok, [""])

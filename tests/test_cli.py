"""The command line: list, inspect, apply (+ recipes), vhd, and its error messages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import make_image

from hookkit.cli.main import main


@pytest.fixture(scope="module")
def image_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("img") / "cat.png"
    make_image(0).save(path)
    return str(path)


def run_cli(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_list_shows_methods_parameters_and_aliases(capsys: pytest.CaptureFixture) -> None:
    code, out, _ = run_cli(capsys, "list", "--json")
    data = json.loads(out)
    assert code == 0
    vhr = {p["name"]: p["default"] for p in data["methods"]["vhr"]["parameters"]}
    assert vhr["alpha"] == 2.0 and vhr["selection"] == "lockstep"
    assert data["methods"]["var"]["vision_only"] is True
    assert data["models"]["llava"] == "llava-hf/llava-1.5-7b-hf"
    code, out, _ = run_cli(capsys, "list")
    assert "--param alpha=2.0" in out and "tiny-qwen2-vl" in out


def test_inspect_reports_the_model_and_active_hooks(capsys: pytest.CaptureFixture) -> None:
    code, out, _ = run_cli(capsys, "inspect", "--model", "tiny-qwen2-vl", "--json", "--method", "vhr",
                           "--param", "layers=[1,2]")
    data = json.loads(out)
    assert code == 0
    assert (data["num_layers"], data["num_heads"], data["num_kv_heads"], data["head_dim"]) == (4, 4, 2, 16)
    assert data["hooks"] == {"head_output": {"1": ["vhr"], "2": ["vhr"]}}
    code, out, _ = run_cli(capsys, "inspect", "--model", "tiny-gemma3")
    assert "S F S F" in out and "active hooks" in out


def test_apply_compare_json_and_recipe_round_trip(capsys: pytest.CaptureFixture, image_file: str,
                                                  tmp_path: Path) -> None:
    recipe = tmp_path / "vhr.json"
    code, out, _ = run_cli(capsys, "apply", "--method", "vhr", "--param", "alpha=2", "--model", "tiny-llava",
                           "--image", image_file, "--prompt", "Describe this image in detail.",
                           "--max-new-tokens", "6", "--compare", "--json", "--save-recipe", str(recipe))
    assert code == 0
    record = json.loads(out)
    assert set(record) >= {"text", "token_ids", "recipe", "recipe_hash", "timings", "stock"}
    assert record["recipe"]["methods"][0] == {"method": "vhr", "params": {
        "alpha": 2, "layers": None, "selection": "lockstep", "outlier_rule": True, "outlier_std": "population",
        "noise_tol": None}}
    assert record["timings"]["prefill_s"] > 0
    saved = json.loads(recipe.read_text())
    assert saved["model"]["family"] == "llava"
    code, out2, _ = run_cli(capsys, "apply", "--recipe", str(recipe), "--model", "tiny-llava", "--image",
                            image_file, "--prompt", "Describe this image in detail.", "--max-new-tokens", "6",
                            "--json")
    assert code == 0 and json.loads(out2)["token_ids"] == record["token_ids"]
    code, text, _ = run_cli(capsys, "apply", "--recipe", str(recipe), "--model", "tiny-llava", "--image",
                            image_file, "--prompt", "Describe this image in detail.", "--max-new-tokens", "6",
                            "--compare")
    assert code == 0 and text.startswith("[stock]") and "[vhr(alpha=2" in text


def test_recipe_for_another_model_is_refused(capsys: pytest.CaptureFixture, image_file: str, tmp_path: Path) -> None:
    recipe = tmp_path / "r.json"
    assert run_cli(capsys, "apply", "--method", "var", "--model", "tiny-llava", "--image", image_file, "--prompt",
                   "hi", "--max-new-tokens", "1", "--save-recipe", str(recipe))[0] == 0
    code, _, err = run_cli(capsys, "apply", "--recipe", str(recipe), "--model", "tiny-gemma3", "--image",
                           image_file, "--prompt", "hi")
    assert code == 2 and "made for another model" in err and "family" in err


@pytest.mark.parametrize("argv,message", [
    (["--method", "vhrx", "--model", "tiny-llava", "--prompt", "hi"], "unknown method 'vhrx' (allowed:"),
    (["--method", "vhr", "--param", "alpha=0", "--model", "tiny-llava", "--prompt", "hi", "--image", "IMG"],
     "vhr.alpha: 0 is out of range"),
    (["--method", "var", "--param", "rho=1.5", "--model", "tiny-llava", "--prompt", "hi", "--image", "IMG"],
     "var.rho: 1.5 is out of range (allowed: [0, 1])"),
    (["--method", "vhr", "--param", "layers=[0,17]", "--model", "tiny-llava", "--prompt", "hi", "--image", "IMG"],
     "vhr.layers: 17 is out of range (allowed: 0..3)"),
    (["--method", "vhr", "--model", "tiny-llama", "--prompt", "hi"], "needs a vision-language model"),
    (["--method", "vhr", "--model", "tiny-llava", "--prompt", "hi"], "every prompt needs an image"),
    (["--method", "vhr", "--model", "tiny-llava", "--prompt", "hi", "--image", "/nonexistent.png"],
     "--image: file '/nonexistent.png' does not exist"),
    (["--method", "vhr", "--model", "tiny-llava", "--prompt", "hi", "--image", "CORRUPT"],
     "cannot read"),
    (["--method", "vhr", "--model", "nosuchmodel", "--prompt", "hi"], "unknown model 'nosuchmodel'"),
    (["--method", "vhr", "--param", "beta=1", "--model", "tiny-llava", "--prompt", "hi"],
     "vhr.beta: unknown parameter (allowed: 'alpha'"),
])
def test_apply_errors_are_clear(capsys: pytest.CaptureFixture, image_file: str, tmp_path: Path, argv: list[str],
                                message: str) -> None:
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    argv = [{"IMG": image_file, "CORRUPT": str(corrupt)}.get(a, a) for a in argv]
    code, _, err = run_cli(capsys, "apply", *argv)
    assert code == 2
    assert message in err


def test_vhd_writes_heatmap_and_values(capsys: pytest.CaptureFixture, image_file: str, tmp_path: Path) -> None:
    plot = tmp_path / "vhd.png"
    code, out, _ = run_cli(capsys, "vhd", "--model", "tiny-llava", "--image", image_file, "--prompt",
                           "Describe the image.", "--plot", str(plot), "--t-vhd-tokens", "2")
    assert code == 0
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    values = json.loads(plot.with_suffix(".json").read_text())
    assert values["shape"] == [4, 4] and len(values["vhd"]) == 4 and len(values["t_vhd"]) == 2

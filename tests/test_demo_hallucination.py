"""``hookkit demo --task hallucination`` on the tiny random-weight twin of scenes-llava (the real model runs in the
demo itself; docs/models/scenes-llava.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hookkit.cli.demo_hallucination import TEST_FIRST_ID, TEST_SEED, build_demo_questions
from hookkit.cli.main import main
from hookkit.evals.scenes import SceneConfig, generate_split


def test_questions_are_pope_adversarial_on_held_out_scenes(tmp_path: Path) -> None:
    questions, images, info = build_demo_questions(tmp_path, num_images=3)
    records = [json.loads(line) for line in questions.read_text().splitlines()]
    assert info["questions"] == len(records) == 18  # 3 present + 3 absent objects per image
    assert [r["label"] for r in records[:6]] == ["yes", "no"] * 3
    ids = {int(Path(r["image"]).stem.rsplit("_", 1)[1]) for r in records}
    assert len(ids) == 3 and min(ids) >= TEST_FIRST_ID  # the test split's id range: never a training scene
    # the images drawn on demand are byte-identical to what the generator writes for the test split
    one = min(ids)
    ref = generate_split(tmp_path / "ref", "test", 1, seed=TEST_SEED, cfg=SceneConfig(p_co=0.8), first_id=one)
    name = f"COCO_val2014_{one:012d}.png"
    assert (images / name).read_bytes() == (Path(ref["images"]) / name).read_bytes()
    assert sorted(p.name for p in images.iterdir()) == sorted({r["image"] for r in records})


def test_demo_runs_stock_and_vhr_and_prints_a_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from hookkit.models.scenes_llava import test_copy_path

    out = tmp_path / "demo"
    rc = main(["demo", "--task", "hallucination", "--model", str(test_copy_path()), "--dtype", "float32",
               "--images", "2", "--methods", "stock,vhr", "--vhr-param", "alpha=3", "--output-path", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    table = [line.split() for line in text.splitlines() if line.startswith(("stock ", "vhr "))]
    assert [row[0] for row in table] == ["stock", "vhr"] and all(len(row) == 7 for row in table)
    stock = json.loads((out / "stock" / "results_pope.json").read_text())
    vhr = json.loads((out / "vhr" / "results_pope.json").read_text())
    assert stock["n-samples"]["pope"]["effective"] == vhr["n-samples"]["pope"]["effective"] == 12
    assert stock["intervention"] is None
    assert vhr["intervention"]["recipe"]["methods"][0]["params"]["alpha"] == 3
    assert len(vhr["intervention"]["recipe_hash"]) == 64
    # the printed accuracy is the written one
    assert float(table[0][1]) == pytest.approx(stock["results"]["pope"]["accuracy,none"], abs=5e-4)


@pytest.mark.parametrize("methods", ["stock,beam", "", "vhr,vhr"])
def test_bad_method_lists_fail_before_the_model_loads(methods: str, capsys: pytest.CaptureFixture[str]) -> None:
    # "no-such-model" would fail to load: the error named must be the bad argument, found first
    assert main(["demo", "--task", "hallucination", "--model", "no-such-model", "--methods", methods]) == 2
    assert "--methods" in capsys.readouterr().err


@pytest.mark.parametrize(("extra", "message"), [(["--vhr-param", "alpha=-1"], "vhr.alpha"),
                                                (["--var-param", "tau=inf"], "var.tau"),
                                                (["--var-param", "sink_dim=3"], "sink_dim")])
def test_bad_parameters_fail_before_any_method_runs(extra: list[str], message: str, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from hookkit.models.scenes_llava import test_copy_path

    out = tmp_path / "demo"
    assert main(["demo", "--task", "hallucination", "--model", str(test_copy_path()), "--images", "2",
                 "--output-path", str(out), *extra]) == 2
    assert message in capsys.readouterr().err
    assert not (out / "stock").exists()  # stock runs first: a later method's bad parameter stops it too

"""VHR and VAR speed vs stock sdpa: tiny-llava generate with an image prompt, 64 new tokens.

    python bench/lvlm_methods.py --rounds 7 --out bench/results/lvlm_methods.json

Configurations (batch 1, greedy, min = max = 64 new tokens, suppressing image/special ids):

* ``stock``: sdpa, nothing attached;
* ``vhr``: defaults (α = 2, lock-step selection: the prefill runs the image and the no-image prompt together);
* ``vhr_probe``: ``selection="probe"`` (one extra unmodified prefill of both branches);
* ``var_default``: the paper's defaults (τ = 20, ρ = 0.5, summ = 0.2) with automatic sink dims;
* ``var_active``: VAR forced to edit (τ low enough that the random model has sinks, ρ = summ = 0), so every
  eligible query row is materialised and redistributed at prefill and at every decoding step — the worst case.

Models: ``tiny-llava`` (4 text layers, as the issue asks: VAR may edit only layer 2 of 4) and ``tiny-llava-32l``,
the same recipe with 32 text layers (VAR edits layers 2..30 like on LLaVA-1.5-7B). Each round runs every
configuration once in rotated order; medians over rounds; ratios to stock from the medians and per round.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import hookkit
from hookkit import compat
from hookkit.generation import generate
from hookkit.methods.var import VAR, find_sink_dims
from hookkit.methods.vhr import VHR

PROMPT = "Please describe this image in detail."


def deep_tiny_llava(layers: int) -> str:
    """The tiny-llava recipe with ``layers`` text layers, saved as a checkpoint folder."""
    import transformers as T

    from hookkit.models import tiny

    folder = Path(tempfile.gettempdir()) / f"hookkit-bench-tiny-llava-{layers}l"
    if not (folder / "config.json").exists():
        cfg = tiny._llava_config()
        cfg.text_config.num_hidden_layers = layers
        torch.manual_seed(0)
        compat.model_from_config(T.LlavaForConditionalGeneration, cfg).save_pretrained(folder)
        tiny._llava_processor().save_pretrained(folder)
    return str(folder)


def run(name: str, path: str, rounds: int, new_tokens: int) -> dict:
    model, processor = hookkit.load(path, dtype="float32")
    info = hookkit.get_model_info(model)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (336, 336, 3), dtype=np.uint8))
    suppress = list(range(500, info.text_config.vocab_size))
    dims = find_sink_dims(model, processor, [PROMPT], [image], tau=2.5)
    configs = {
        "stock": lambda: [],
        "vhr": lambda: [VHR()],
        "vhr_probe": lambda: [VHR(selection="probe")],
        "var_default": lambda: [VAR(sink_dims="auto")],
        "var_active": lambda: [VAR(tau=2.5, sink_dims=dims, rho=0.0, summ=0.0)],
    }
    gen = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, suppress_tokens=suppress)
    generate(model, processor, [PROMPT], [image], **gen)  # warm-up
    names = list(configs)
    samples: dict[str, list[dict]] = {n: [] for n in names}
    for r in range(rounds):
        for cfg in names[r % len(names):] + names[:r % len(names)]:
            ivs = configs[cfg]()
            if ivs:
                with hookkit.attach(model, ivs) as session:
                    out = generate(model, processor, [PROMPT], [image], **gen)
                    stats = {iv.name: getattr(session.states.get(iv), "stats", None) for iv in ivs}
            else:
                out, stats = generate(model, processor, [PROMPT], [image], **gen), {}
            samples[cfg].append({**out.timings, "stats": stats})
        print(f"  {name} round {r + 1}/{rounds}", file=sys.stderr)
    stock_tps = [s["decode_tokens_per_s"] for s in samples["stock"]]
    stock_pre = [s["prefill_s"] for s in samples["stock"]]
    rows = {}
    for cfg in names:
        tps = [s["decode_tokens_per_s"] for s in samples[cfg]]
        pre = [s["prefill_s"] for s in samples[cfg]]
        rows[cfg] = {"decode_tokens_per_s_median": statistics.median(tps),
                     "decode_ratio_vs_stock": statistics.median(tps) / statistics.median(stock_tps),
                     "decode_ratio_median_of_rounds": statistics.median(a / b for a, b in zip(tps, stock_tps)),
                     "prefill_s_median": statistics.median(pre),
                     "prefill_time_ratio_vs_stock": statistics.median(pre) / statistics.median(stock_pre),
                     "var_stats_last_run": samples[cfg][-1]["stats"].get("var"),
                     "runs": samples[cfg]}
    prompt_tokens = int(info.adapter.build_inputs(processor, [PROMPT], [image])["input_ids"].shape[1])
    return {"model": name, "text_layers": info.num_layers, "prompt_tokens": prompt_tokens,
            "new_tokens": new_tokens, "rounds": rounds, "var_active_sink_dims": dims, "configs": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--deep-layers", type=int, default=32, help="0 to skip the deep variant")
    parser.add_argument("--out", default="bench/results/lvlm_methods.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = {"command": " ".join(["python", *sys.argv]), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
               "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                           "torch_threads": args.threads, "torch": torch.__version__,
                           "load_average_at_start": os.getloadavg()}, "models": []}
    models = [("tiny-llava", "tiny-llava")]
    if args.deep_layers:
        models.append((f"tiny-llava-{args.deep_layers}l", deep_tiny_llava(args.deep_layers)))
    for name, path in models:
        results["models"].append(run(name, path, args.rounds, args.new_tokens))
    results["machine"]["load_average_at_end"] = os.getloadavg()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    for m in results["models"]:
        print(f"\n{m['model']} ({m['text_layers']} text layers, prompt {m['prompt_tokens']} tokens, "
              f"{m['new_tokens']} new, {m['rounds']} rounds)")
        print(f"{'config':<14}{'decode tok/s':>14}{'ratio':>8}{'prefill s':>11}{'ratio':>8}  VAR rows edited (last run)")
        for cfg, row in m["configs"].items():
            var = row["var_stats_last_run"]
            print(f"{cfg:<14}{row['decode_tokens_per_s_median']:>14.1f}{row['decode_ratio_vs_stock']:>8.3f}"
                  f"{row['prefill_s_median']:>11.4f}{row['prefill_time_ratio_vs_stock']:>8.3f}  "
                  f"{int(var['rows_selected']) if var else '-'}")


if __name__ == "__main__":
    main()

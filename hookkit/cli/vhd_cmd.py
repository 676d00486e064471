"""``hookkit vhd``: the vision-aware head divergence of every layer and head, as a heatmap and JSON."""

from __future__ import annotations

import argparse
from pathlib import Path

from hookkit.cli.common import add_model_args, load_model, print_json


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    p.add_argument("--image", required=True, help="image file")
    p.add_argument("--prompt", required=True, help="the user prompt")
    p.add_argument("--plot", help="write a layer x head heatmap PNG here (values go to the same name .json)")
    p.add_argument("--json-out", help="write the values here (default: beside --plot, or print them)")
    p.add_argument("--t-vhd-tokens", type=int, default=0,
                   help="also report T-VHD for this many greedily generated tokens")


def plot_vhd(vhd: list[list[float]], path: Path, title: str) -> None:
    try:
        from matplotlib.figure import Figure
    except ImportError:
        from hookkit.errors import HookkitError

        raise HookkitError("plotting needs matplotlib: pip install 'hookkit[plots]'") from None
    fig = Figure(figsize=(max(4, 0.35 * len(vhd[0]) + 2), max(3, 0.25 * len(vhd) + 1.5)))
    ax = fig.subplots()
    im = ax.imshow(vhd, aspect="auto", origin="lower", cmap="viridis")
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, label="VHD (L2, fp32)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def run(args: argparse.Namespace) -> int:
    from hookkit.evals.files import write_json_atomic
    from hookkit.generation import generate
    from hookkit.io import load_image
    from hookkit.methods.vhr import compute_vhd

    image = load_image(args.image, field="--image")
    model, processor = load_model(args)
    generated = None
    if args.t_vhd_tokens > 0:
        generated = generate(model, processor, [args.prompt], [image],
                             max_new_tokens=args.t_vhd_tokens).new_token_ids[0]
    result = compute_vhd(model, processor, image, args.prompt, generated_ids=generated)
    data = {"model": args.model, "image": args.image, "prompt": args.prompt, **result.to_dict()}
    json_path = Path(args.json_out) if args.json_out else (Path(args.plot).with_suffix(".json") if args.plot else None)
    if args.plot:
        plot_vhd(data["vhd"], Path(args.plot), f"VHD: {args.model}")
        print(f"heatmap written to {args.plot}")
    if json_path is not None:
        write_json_atomic(json_path, data)
        print(f"values written to {json_path}")
    else:
        print_json(data, indent=None)
    return 0


COMMAND = ("vhd", "vision-aware head divergence per layer and head (heatmap + JSON)", add_arguments, run)

"""``hookkit inspect --model M``: layers, heads, KV heads, head_dim, regions and (with a recipe) active hooks."""

from __future__ import annotations

import argparse

from hookkit.cli.common import add_method_args, add_model_args, load_model, print_json, recipe_from_args


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    add_method_args(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")


def run(args: argparse.Namespace) -> int:
    import hookkit
    from hookkit.core.session import describe_model

    model, _ = load_model(args)
    recipe = recipe_from_args(args)
    if recipe is None:
        data = describe_model(hookkit.get_model_info(model))
        data["hooks"] = {}
    else:
        with hookkit.attach(model, recipe) as session:
            data = session.describe()
    if args.json:
        print_json(data)
        return 0
    rows = [("model", f"{data['model']} ({data['family']})"), ("checkpoint", data["name_or_path"]),
            ("vision-language", str(data["vision_language"])),
            ("layers", str(data["num_layers"])), ("query heads", str(data["num_heads"])),
            ("KV heads", str(data["num_kv_heads"])), ("head_dim", str(data["head_dim"])),
            ("layer types", _compress(data["layer_types"])), ("sliding window", str(data["sliding_window"])),
            ("text attention", data["text_attention_path"]),
            ("image token ids", str(data["image_token_ids"])),
            ("vision modules", ", ".join(data["vision_modules"]) or "-"),
            ("vision attention", str(data["vision_attention_implementation"])),
            ("regions", ", ".join(data["regions"]))]
    if "interventions" in data:
        rows.append(("interventions", "; ".join(data["interventions"])))
        rows.append(("text attention impl", f"{data['attention_implementation']['text']} (was "
                     f"{data['attention_implementation']['previous_text'] or 'unchanged'})"))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    print(f"{'active hooks':<{width}}  " + ("none" if not data["hooks"] else ""))
    for site, layers in data["hooks"].items():
        print(f"  {site}: " + ", ".join(f"L{layer}={'+'.join(names)}" for layer, names in layers.items()))
    return 0


def _compress(types: list[str]) -> str:
    if len(set(types)) == 1:
        return f"{types[0]} x{len(types)}"
    return " ".join("S" if t == "sliding_attention" else "F" for t in types) + "  (S sliding, F full)"


COMMAND = ("inspect", "show what hookkit sees in a model: layers, heads, regions, hooks", add_arguments, run)

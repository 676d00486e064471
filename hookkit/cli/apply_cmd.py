"""``hookkit apply``: generate with a method attached (optionally next to the stock output)."""

from __future__ import annotations

import argparse

from hookkit.cli.common import add_method_args, add_model_args, load_model, print_json, recipe_from_args


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    add_method_args(p)
    p.add_argument("--image", help="image file (required by vision methods such as vhr and var)")
    p.add_argument("--prompt", required=True, help="the user prompt (the chat template is applied)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--save-recipe", help="write the recipe (JSON, plus safetensors when it has tensors)")
    p.add_argument("--compare", action="store_true", help="also print the stock model's output")
    p.add_argument("--json", action="store_true", help="print one JSON record instead of text")


def run(args: argparse.Namespace) -> int:
    import hookkit
    from hookkit.core.recipe import Recipe
    from hookkit.errors import ConfigError
    from hookkit.generation import generate
    from hookkit.io import load_image

    if args.max_new_tokens < 1:
        raise ConfigError("--max-new-tokens", f"must be >= 1, got {args.max_new_tokens}")
    recipe = recipe_from_args(args, required=True)
    image = load_image(args.image, field="--image") if args.image else None  # before the (slow) model load
    model, processor = load_model(args)
    info = hookkit.get_model_info(model)
    recipe.require_model(info.fingerprint())  # before the stock run of --compare (attach checks it again)

    gen = {"max_new_tokens": args.max_new_tokens}
    stock = generate(model, processor, [args.prompt], [image], **gen) if args.compare else None
    with hookkit.attach(model, recipe) as session:
        result = generate(model, processor, [args.prompt], [image], **gen)
        interventions = session.interventions
    saved = Recipe.from_interventions(interventions, model=info.fingerprint(),
                                      allow_stacking=recipe.allow_stacking)
    if args.save_recipe:
        saved.save(args.save_recipe)

    record = {"model": args.model, "prompt": args.prompt, "image": args.image, "text": result.texts[0],
              "token_ids": result.new_token_ids[0], "recipe": saved.to_dict(), "recipe_hash": saved.hash(),
              "timings": result.timings}
    if stock is not None:
        record["stock"] = {"text": stock.texts[0], "token_ids": stock.new_token_ids[0], "timings": stock.timings}
    if args.json:
        print_json(record, indent=None)
        return 0
    label = " + ".join(iv.describe() for iv in interventions)
    if stock is not None:
        print(f"[stock]\n{stock.texts[0]}\n")
        print(f"[{label}]")
    print(result.texts[0])
    if args.save_recipe:
        print(f"\nrecipe written to {args.save_recipe}")
    return 0


COMMAND = ("apply", "generate with a method attached (hookkit apply --method vhr --model llava ...)",
           add_arguments, run)

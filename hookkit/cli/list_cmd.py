"""``hookkit list``: methods with their parameters and defaults, model aliases and supported families."""

from __future__ import annotations

import argparse

from hookkit.cli.common import print_json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="machine-readable output")


def run(args: argparse.Namespace) -> int:
    from hookkit.methods.registry import get_method, method_names, method_parameters
    from hookkit.models.families import supported_families
    from hookkit.models.loading import all_aliases
    from hookkit.registry import TASKS

    methods = {}
    for name in method_names():
        cls = get_method(name)
        doc = (cls.__doc__ or "").strip().splitlines()
        methods[name] = {"summary": doc[0] if doc else "", "vision_only": cls.requires_vision,
                         "parameters": method_parameters(cls)}
    data = {"methods": methods, "models": all_aliases(), "families": supported_families(),
            "tasks": {name: task.help for name, task in TASKS.items()}}
    if args.json:
        print_json(data)
        return 0
    print("Methods")
    for name, m in methods.items():
        print(f"  {name}{'  [vision-language models only]' if m['vision_only'] else ''}")
        if m["summary"]:
            print(f"      {m['summary']}")
        for p in m["parameters"]:
            print(f"      --param {p['name']}={p['default']!r}" + (f"    {p['help']}" if p["help"] else ""))
    print("\nModel aliases")
    width = max(len(k) for k in data["models"])
    for alias, target in data["models"].items():
        print(f"  {alias:<{width}}  {target}")
    print("\nArchitecture families (config.model_type)")
    for family, types in data["families"].items():
        print(f"  {family:<12} {', '.join(types)}")
    print("  (other decoders: generic discovery of the text stack)")
    print("\nEval tasks (hookkit eval TASK)")
    for name, help_text in data["tasks"].items():
        print(f"  {name:<12} {help_text}")
    print("\nPlug-ins add methods, families and tasks through the hookkit.methods, hookkit.families and hookkit.tasks "
          "entry points (docs/writing-a-method.md, docs/adding-a-model.md).")
    return 0


COMMAND = ("list", "list methods (parameters, defaults), model aliases, architecture families and eval tasks",
           add_arguments, run)

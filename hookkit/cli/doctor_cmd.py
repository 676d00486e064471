"""``hookkit doctor``: is hookkit exact with the packages installed here?

It prints the versions of Python, torch, transformers, accelerate and peft and whether each lies in the tested
range, the device and dtype support, how the seam sees this transformers release (cache keyword, hub kernels)
and whether the embedded SmolLM2 is installed. Then, in a few seconds, it runs a parity self-check on a tiny
random-weight model: a neutral attachment on every site against the stock model, on sdpa and eager, over a
left-padded batch of 2, at prefill and for 3 cached decode steps, plus the cache tracking the session relies on.
Each check prints PASS/FAIL with the measured max-abs difference; the exit status is 1 when any check fails.

A user on a transformers release hookkit has never seen learns at once whether hookkit is exact there.
"""

from __future__ import annotations

import argparse
import platform
import time
from dataclasses import asdict, dataclass
from typing import Any

from hookkit.cli.common import print_json

#: Limits of the neutral-attachment checks: the eager path is bit-identical, sdpa within fp32 kernel noise
#: (transformers-v5.md §4: the float-mask + repeat_kv path differs from bool-mask + pack_gqa by ≤ 1.2e-6).
LIMITS = {"sdpa": 1e-5, "eager": 0.0}
NEW_TOKENS = 4  # prefill logits + 3 cached decode steps


@dataclass
class Check:
    name: str
    passed: bool
    max_abs_diff: float | None
    limit: float | None
    detail: str = ""

    def line(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        diff = "" if self.max_abs_diff is None else f"  max|Δ| = {self.max_abs_diff:.1e} (limit {self.limit:g})"
        return f"  {verdict}  {self.name:<22}{diff}{'  ' + self.detail if self.detail else ''}"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="tiny-llama",
                   help="tiny model for the parity self-check (default tiny-llama; any tiny-* alias)")
    p.add_argument("--skip-parity", action="store_true", help="only print the environment")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def environment() -> dict[str, Any]:
    """Versions, tested ranges, device and dtype support, the seam's view, the embedded model."""
    import torch
    import transformers

    from hookkit import compat

    versions = compat.installed_versions()
    packages = {name: {"version": version, "status": compat.version_status(name, version),
                       "tested": "{} to {}".format(*compat.TESTED_VERSIONS[name])}
                for name, version in versions.items()}
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtypes = {}
    for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16), ("float16", torch.float16)):
        try:
            x = torch.ones(4, 4, dtype=dtype, device=device)
            dtypes[name] = bool(torch.isfinite((x @ x).float()).all())
        except (RuntimeError, TypeError):
            dtypes[name] = False
    try:
        from hookkit.models.smollm2 import gguf_path

        smollm2 = f"installed ({gguf_path()})"
    except Exception as exc:  # noqa: BLE001 - any failure means "not usable"; the message says why
        smollm2 = f"not installed: {str(exc).splitlines()[0]}"
    return {
        "python": platform.python_version(),
        "packages": packages,
        "device": device,
        "cuda": torch.cuda.get_device_name(0) if device == "cuda" else None,
        "dtypes": dtypes,
        "cache_keyword": compat.cache_kwarg(),
        "load_kwargs": compat.load_kwargs(),
        "transformers_module": transformers.__file__,
        "smollm2": smollm2,
    }


def parity_checks(model_name: str) -> list[Check]:
    """Neutral attach vs stock on ``model_name`` (sdpa and eager): prefill, cached decode, cache tracking."""
    import torch

    import hookkit
    from hookkit.methods.noop import Noop

    checks: list[Check] = []
    for attn in ("sdpa", "eager"):
        limit = LIMITS[attn]
        try:
            model, processor = hookkit.load(model_name, dtype="float32", attn_implementation=attn)
            info = hookkit.get_model_info(model)
            batch = _batch(info, processor)
            stock = _generate(model, info, batch)
            recorder = past_length_recorder()
            with hookkit.attach(model, [Noop(), recorder]):
                hooked = _generate(model, info, batch)
        except Exception as exc:  # noqa: BLE001 - a crash is a failed check, reported with its cause
            checks.append(Check(f"{attn} run", False, None, None, f"{type(exc).__name__}: {exc}"))
            continue
        prefill = (stock.logits[0] - hooked.logits[0]).abs().max().item()
        decode = max((a - b).abs().max().item() for a, b in zip(stock.logits[1:], hooked.logits[1:]))
        checks.append(Check(f"{attn} prefill", prefill <= limit, prefill, limit))
        checks.append(Check(f"{attn} cached decode", decode <= limit and torch.equal(stock.sequences, hooked.sequences),
                            decode, limit, "" if torch.equal(stock.sequences, hooked.sequences)
                            else "greedy tokens differ"))
        prompt = batch["input_ids"].shape[1]
        expected = [0] + [prompt + i for i in range(NEW_TOKENS - 1)]
        checks.append(Check(f"{attn} cache tracking", recorder.seen == expected, None, None,
                            f"past lengths {recorder.seen}" + ("" if recorder.seen == expected
                                                               else f", expected {expected}")))
    return checks


def past_length_recorder() -> Any:
    """A read-only intervention recording the ``past_length`` the session computed for every forward."""
    from hookkit.core.intervention import Intervention
    from hookkit.core.sites import Site

    class PastLengths(Intervention):
        name = "past_lengths"

        def __init__(self) -> None:
            self.seen: list[int] = []

        def bind(self, model: Any) -> dict:
            return {Site.ATTN_INPUT: frozenset({0})}

        def writes(self, site: Site) -> bool:
            return False

        def attn_input(self, ctx: Any, state: Any, hidden: Any) -> None:
            self.seen.append(ctx.forward.past_length)

    return PastLengths()


def _batch(info: Any, processor: Any) -> Any:
    from PIL import Image

    prompts = ["Describe this image.", "Is there a dog in the image? Please answer yes or no."]
    images = [Image.new("RGB", (56, 56), (120, 60 * i, 200)) if info.is_vlm else None for i in range(2)]
    return info.adapter.build_inputs(processor, prompts, images)


def _generate(model: Any, info: Any, batch: Any) -> Any:
    import torch

    vocab = info.text_config.vocab_size
    # Random tiny VLMs would emit image/special tokens (transformers-v5.md pitfall 12).
    suppress = list(range(500, vocab)) if info.is_vlm else None
    with torch.no_grad():
        return model.generate(**batch, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False,
                              output_logits=True, return_dict_in_generate=True, suppress_tokens=suppress,
                              pad_token_id=0)


def run(args: argparse.Namespace) -> int:
    env = environment()
    checks: list[Check] = []
    elapsed = 0.0
    if not args.skip_parity:
        start = time.perf_counter()
        checks = parity_checks(args.model)
        elapsed = time.perf_counter() - start
    ok = all(c.passed for c in checks)
    if args.json:
        print_json({"environment": env, "model": args.model, "checks": [asdict(c) for c in checks],
                    "passed": ok, "seconds": round(elapsed, 2)})
        return 0 if ok else 1
    print(f"Python        {env['python']}")
    for name, p in env["packages"].items():
        print(f"{name:<13} {p['version'] or '-':<16} {p['status']} (tested range {p['tested']})")
    dtypes = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in env["dtypes"].items())
    print(f"device        {env['device']}{' (' + env['cuda'] + ')' if env['cuda'] else ''}; dtypes: {dtypes}")
    print(f"cache keyword {env['cache_keyword']!r}; load kwargs {env['load_kwargs']}")
    print(f"SmolLM2       {env['smollm2']}")
    if args.skip_parity:
        return 0
    print(f"\nParity self-check on {args.model}: neutral attach on every site vs stock, left-padded batch of 2, "
          f"prefill + {NEW_TOKENS - 1} cached decode steps")
    for check in checks:
        print(check.line())
    passed = sum(c.passed for c in checks)
    print(f"{'PASS' if ok else 'FAIL'}: {passed}/{len(checks)} checks passed in {elapsed:.1f} s")
    if not ok:
        print("hookkit is NOT exact with these packages; install the tested set (constraints.txt) or report the "
              "versions above.")
    return 0 if ok else 1


COMMAND = ("doctor", "check the environment and hookkit's exactness with the installed transformers",
           add_arguments, run)

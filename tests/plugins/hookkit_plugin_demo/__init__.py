"""An outside package that extends hookkit through its three entry point groups (used by tests/test_plugins.py).

* ``hookkit.methods``: ``scale_heads``, a head-output scaling (neutral at ``factor=1``);
* ``hookkit.families``: GPT-NeoX, which generic discovery cannot handle: the attention is ``layer.attention``
  (not ``self_attn``), the input projection is one fused ``query_key_value`` interleaved per head, and the output
  projection is ``dense``;
* ``hookkit.tasks``: ``hookkit eval next-token``, greedy next-token accuracy on fixed prompts, run on hookkit's
  shared runner (results JSON, per-sample JSONL, resume).

Its distribution metadata (``../hookkit_plugin_demo-0.1.0.dist-info/entry_points.txt``) is what an installed wheel
would put in site-packages; the tests put this folder on ``sys.path``, so ``importlib.metadata`` finds it.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any

import torch
import transformers as T

from hookkit.cli.common import add_method_args, add_model_args
from hookkit.cli.evaluation import TaskCommand, add_runner_args, run_eval
from hookkit.core.intervention import Binding, HookContext, Intervention
from hookkit.core.sites import Site
from hookkit.evals.runner import EvalTask
from hookkit.models.families import FamilyAdapter
from hookkit.models.tiny import TEXT_CONFIG, TinySpec, generic_template, make_tokenizer


# ---------------------------------------------------------------------------------------------- a method
@dataclass(eq=False)
class ScaleHeads(Intervention):
    """Multiply the output of chosen heads by ``factor`` (1 = neutral)."""

    name = "scale_heads"

    factor: float = field(default=1.0, metadata={"help": "scale of the chosen heads"})
    heads: list[int] = field(default_factory=lambda: [0], metadata={"help": "query heads to scale"})

    def bind(self, model: Any) -> Binding:
        return Binding({Site.HEAD_OUTPUT: frozenset(range(model.num_layers))})

    def head_output(self, ctx: HookContext, state: Any, heads: torch.Tensor) -> torch.Tensor:
        scale = torch.ones(heads.shape[-2], dtype=heads.dtype, device=heads.device)
        scale[self.heads] = self.factor
        return heads * scale[:, None]


# ---------------------------------------------------------------------------------------------- a family
def _gpt_neox_config() -> T.PretrainedConfig:
    cfg = {k: v for k, v in TEXT_CONFIG.items() if k != "num_key_value_heads"}
    return T.GPTNeoXConfig(**cfg)


def _tokenizer() -> Any:
    return make_tokenizer({}, chat_template=generic_template(""))


class GPTNeoXAdapter(FamilyAdapter):
    family = "gpt_neox"
    model_types = ("gpt_neox",)
    is_vlm = False
    attention_attr = "attention"
    q_proj = k_proj = v_proj = None
    qkv_proj = "query_key_value"
    o_proj = "dense"
    tiny_models = (TinySpec("tiny-gpt-neox", "gpt_neox", _gpt_neox_config, "GPTNeoXForCausalLM", _tokenizer,
                            "GPT-NeoX (plug-in family): fused per-head qkv, `dense`, `layer.attention`"),)

    def split_query_key(self, info: Any, outputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        # modeling_gpt_neox: qkv.view(..., heads, 3 * head_size).chunk(3, dim=-1)
        fused = outputs[info.query_key_targets()[0]]
        per_head = fused.view(*fused.shape[:-1], info.num_heads, 3, info.head_dim)
        return per_head[..., 0, :].flatten(-2), per_head[..., 1, :].flatten(-2)


# ---------------------------------------------------------------------------------------------- a task
PROMPTS = ["the cat is on the", "a man is riding a", "there is a dog in the", "two people are sitting at a"]


class NextTokenTask(EvalTask):
    """Greedy next token of fixed prompts against the stock model's own (so the stock run scores 1.0)."""

    name = "next_token"
    version = "1"

    def __init__(self, expected: dict[str, int] | None = None):
        self.expected = expected or {}

    def samples(self) -> list[dict[str, Any]]:
        return [{"sample_id": f"p{i}", "prompt": p} for i, p in enumerate(PROMPTS)]

    def predict(self, batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for sample in batch:
            ids = self.processor(sample["prompt"], return_tensors="pt")["input_ids"]
            with torch.no_grad():
                token = int(self.model(input_ids=ids).logits[0, -1].argmax())
            out.append({"sample_id": sample["sample_id"], "token": token,
                        "match": token == self.expected.get(sample["sample_id"], token)})
        return out

    def aggregate(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        return {"match_rate": sum(r["match"] for r in records) / len(records)}


def _add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    add_method_args(p)
    add_runner_args(p)


def _run(args: argparse.Namespace) -> int:
    def summary(results: dict[str, Any]) -> list[str]:
        return [f"next-token match rate {results['results']['next_token']['match_rate,none']:.2f}"]

    return run_eval(args, lambda processor: NextTokenTask(), summary, task_needs_processor=True)


NEXT_TOKEN = TaskCommand(help="greedy next token of fixed prompts (a plug-in task)", add_arguments=_add_arguments,
                         run=_run)

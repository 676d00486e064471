"""A small, exact trainer for hookkit adapters (MoH, ALoRA, LoRA) on plain-text files; used by ``hookkit tune``.

    from hookkit.evals.corpus import load_corpus
    from hookkit.methods.training import TrainConfig, Trainer
    model, tok = hookkit.load("smollm2")
    train_text, heldout_text = load_corpus(["kjv"])
    trainer = Trainer(model, tok, MoH(lora_rank=16), TrainConfig(steps=200), output_dir="runs/moh",
                      train_text=train_text, heldout_text=heldout_text)
    summary = trainer.train()

Data: the text is tokenised (no special tokens), concatenated and cut into fixed ``seq_len`` blocks; the held-out
part is the tail of the text (``hookkit.evals.corpus.load_corpus`` / ``split_train_heldout``, no RNG; the trainer
itself only takes the two texts). Batches are drawn from a
per-epoch permutation seeded by ``(seed, epoch)``, so the batch of step s is a pure function of the seed and s.

Training: the base model is frozen (its ``requires_grad`` flags and train/eval mode are restored afterwards), only
the adapter's own modules train, in float32, with AdamW, linear warm-up then cosine decay to 10 % (or a constant
LR), gradient clipping, and the method's auxiliary loss (MoH's β·L_b) added to the next-token loss.

Checkpoints (``OUTPUT/checkpoint/``, replaced atomically): the adapter folder (safetensors + JSON), the optimizer
state in ``optimizer.safetensors`` (tensor per parameter and state field; scalar hyper-parameters in
``trainer_state.json``), the torch RNG state (dropout), and the step. No pickle. ``resume=True`` reloads all of it
and continues so that the result equals an uninterrupted run bit for bit (tests/test_adapters_tune.py). The log is
``OUTPUT/log.jsonl``: one ``{"step", "loss", "aux", "lr"}`` line per step and ``{"step", "heldout_ppl",
"heldout_nll", "heldout_tokens"}`` lines at evaluations. The final adapter is written to ``OUTPUT/``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hookkit.errors import ConfigError, InputError, check_range
from hookkit.methods.trainable import AdapterIntervention, read_adapter, save_adapter

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoint"
STATE_NAME = "trainer_state.json"
OPTIMIZER_NAME = "optimizer.safetensors"
LOG_NAME = "log.jsonl"


@dataclass
class TrainConfig:
    steps: int = 200
    lr: float = 2e-4
    batch_size: int = 4
    seq_len: int = 256
    eval_every: int = 50
    eval_blocks: int | None = 32  # held-out blocks per evaluation (evenly spaced); None: all
    seed: int = 0
    weight_decay: float = 0.0
    warmup_steps: int = 10
    schedule: str = "cosine"  # cosine (to 10 % of lr) | constant
    grad_clip: float | None = 1.0
    save_every: int | None = None  # checkpoint interval; default: at every evaluation
    heldout_fraction: float = 0.05

    def validate(self) -> None:
        for name in ("steps", "batch_size", "seq_len", "eval_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < (2 if name == "seq_len" else 1):
                raise ConfigError(f"--{name.replace('_', '-')}", f"expected a positive integer, got {value!r}")
        check_range("--lr", self.lr, low=0.0, low_inclusive=False)
        check_range("--weight-decay", self.weight_decay, low=0.0)
        check_range("--heldout-fraction", self.heldout_fraction, low=0.0, high=1.0, low_inclusive=False,
                    high_inclusive=False)
        if self.schedule not in ("cosine", "constant"):
            raise ConfigError("--schedule", f"unknown schedule {self.schedule!r}", ["cosine", "constant"])
        if self.eval_blocks is not None and self.eval_blocks < 1:
            raise ConfigError("--eval-blocks", f"expected a positive integer, got {self.eval_blocks!r}")
        if self.warmup_steps < 0:
            raise ConfigError("--warmup-steps", f"expected an integer >= 0, got {self.warmup_steps!r}")

    def lr_at(self, step: int) -> float:
        """Learning rate of (0-based) ``step``: linear warm-up, then cosine to 10 % of ``lr`` (or constant)."""
        if self.warmup_steps and step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        if self.schedule == "constant":
            return self.lr
        span = max(1, self.steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))


# ---------------------------------------------------------------------------------------------- data
def tokenize_blocks(tokenizer: Any, text: str, seq_len: int) -> torch.Tensor:
    """``[N, seq_len]`` token blocks of ``text`` (no special tokens; the remainder is dropped).

    The text is tokenised paragraph by paragraph (split after blank lines) so no single call sees megabytes.
    """
    pieces, start = [], 0
    while start < len(text):
        end = text.find("\n\n", start)
        end = len(text) if end == -1 else end + 2
        pieces.append(text[start:end])
        start = end
    ids: list[int] = []
    for i in range(0, len(pieces), 512):
        for row in tokenizer(pieces[i:i + 512], add_special_tokens=False)["input_ids"]:
            ids.extend(row)
    n = len(ids) // seq_len
    return torch.tensor(ids[: n * seq_len], dtype=torch.long).view(n, seq_len)


def lm_loss(model: nn.Module, input_ids: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Next-token cross-entropy of ``model`` on full blocks (fp32 logits; every position after the first)."""
    logits = model(input_ids=input_ids, use_cache=False).logits
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), input_ids[:, 1:].flatten(), reduction=reduction)


@torch.no_grad()
def heldout_perplexity(model: nn.Module, blocks: torch.Tensor, batch_size: int = 4) -> dict[str, float]:
    """``exp`` of the mean next-token NLL over ``blocks`` ``[N, L]`` (N·(L−1) predicted tokens)."""
    device = next(p.device for p in model.parameters())
    total, count = 0.0, 0
    for i in range(0, len(blocks), batch_size):
        batch = blocks[i:i + batch_size].to(device)
        total += float(lm_loss(model, batch, reduction="sum"))
        count += batch.shape[0] * (batch.shape[1] - 1)
    nll = total / count
    return {"heldout_nll": nll, "heldout_ppl": math.exp(nll), "heldout_tokens": count}


def _hash_blocks(blocks: torch.Tensor) -> str:
    return hashlib.sha256(blocks.numpy().tobytes()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------- trainer
class Trainer:
    """Train one adapter intervention on a model (see the module docstring)."""

    def __init__(self, model: nn.Module, tokenizer: Any, intervention: AdapterIntervention, config: TrainConfig,
                 output_dir: str | Path, *, train_text: str, heldout_text: str, progress: bool = True,
                 data_sources: list[str] | None = None):
        from hookkit.core.session import get_model_info

        if not isinstance(intervention, AdapterIntervention):
            raise ConfigError("--method", f"{intervention.name!r} has no trainable weights")
        config.validate()
        self.model, self.tokenizer, self.intervention, self.config = model, tokenizer, intervention, config
        self.output_dir = Path(output_dir)
        self.progress = progress
        self.data_sources = data_sources or []
        self.info = get_model_info(model)
        self.train_blocks = tokenize_blocks(tokenizer, train_text, config.seq_len)
        self.heldout_blocks = tokenize_blocks(tokenizer, heldout_text, config.seq_len)
        if len(self.train_blocks) < 1:
            raise InputError(f"--data: the training text has fewer than --seq-len={config.seq_len} tokens")
        if len(self.heldout_blocks) < 1:
            raise InputError(f"--data: the held-out text has fewer than --seq-len={config.seq_len} tokens")
        n = len(self.heldout_blocks)
        k = n if config.eval_blocks is None else min(config.eval_blocks, n)
        self.eval_index = torch.linspace(0, n - 1, k).round().long().unique()
        self.device = next(p.device for p in model.parameters())
        self.data_hash = _hash_blocks(self.train_blocks)

    # ------------------------------------------------------------------ batches and evaluation
    def batch_indices(self, step: int) -> torch.Tensor:
        """Rows of step ``step``: consecutive slices of a permutation seeded by (seed, epoch)."""
        n, bs = len(self.train_blocks), self.config.batch_size
        out = []
        for pos in range(step * bs, step * bs + bs):
            epoch, offset = divmod(pos, n)
            gen = torch.Generator().manual_seed(self.config.seed * 1_000_003 + epoch)
            out.append(int(torch.randperm(n, generator=gen)[offset]))
        return torch.tensor(out)

    def _lm_loss(self, input_ids: torch.Tensor) -> torch.Tensor:
        return lm_loss(self.model, input_ids)

    def evaluate(self, blocks: torch.Tensor | None = None) -> dict[str, float]:
        """Held-out perplexity of the model as it is now (the adapter counts only while attached)."""
        blocks = self.heldout_blocks[self.eval_index] if blocks is None else blocks
        adapter = self.intervention.adapter_module if self.intervention.is_built else None
        was_training = adapter.training if adapter is not None else False
        if adapter is not None:
            adapter.eval()
        try:
            return heldout_perplexity(self.model, blocks, self.config.batch_size)
        finally:
            if adapter is not None:
                adapter.train(was_training)

    # ------------------------------------------------------------------ training
    def train(self, *, resume: bool = False, stop_after: int | None = None) -> dict[str, Any]:
        """Run (or resume) training; returns a summary. ``stop_after``: stop once that many steps are done
        (for tests of resume: an interrupted run)."""
        from tqdm.auto import tqdm

        import hookkit

        cfg = self.config
        iv = self.intervention
        session = hookkit.attach(self.model, iv)  # bind -> build: the adapter's own modules, base untouched
        adapter = iv.adapter_module
        params = [p for p in adapter.parameters()]
        if not params:
            session.detach()
            raise ConfigError(f"{iv.name}", "this configuration has no trainable parameters (e.g. MoH's query-norm "
                              "router is parameter-free: set lora_rank > 0, or use variant=learned)")
        saved_flags = [(p, p.requires_grad) for p in self.model.parameters()]
        # Dropout draws from the global torch RNG: seed it (and restore the caller's state afterwards), so a run is
        # a function of --seed and a resumed run continues the exact random stream (the checkpoint stores it).
        caller_rng = torch.get_rng_state()
        model_training = self.model.training
        start, t0 = 0, time.time()
        self.output_dir.mkdir(parents=True, exist_ok=True)
        try:
            for p in self.model.parameters():
                p.requires_grad_(False)
            for p in params:
                p.requires_grad_(True)
            optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
            if resume:
                start = self._restore(optimizer)
            else:
                torch.manual_seed(cfg.seed)
                self._truncate_log(0)
            self.model.eval()  # base modules: no dropout; only the adapter trains
            adapter.train()
            bar = tqdm(total=cfg.steps, initial=start, desc=f"tune {iv.name}", disable=not self.progress,
                       dynamic_ncols=True)
            last_eval: dict[str, float] | None = None
            done = start
            for step in range(start, cfg.steps):
                lr = cfg.lr_at(step)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                batch = self.train_blocks[self.batch_indices(step)].to(self.device)
                loss = self._lm_loss(batch)
                aux = iv.auxiliary_loss(session.states.get(iv))
                total = loss if aux is None else loss + aux
                total.backward()
                if cfg.grad_clip:
                    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                rng = torch.get_rng_state()
                record = {"step": step + 1, "loss": float(loss.detach()),
                          "aux": None if aux is None else float(aux.detach()),
                          "lr": lr, "elapsed_s": round(time.time() - t0, 2)}
                self._log(record)
                bar.update(1)
                bar.set_postfix(loss=f"{record['loss']:.3f}", **({"ppl": f"{last_eval['heldout_ppl']:.2f}"}
                                                             if last_eval else {}))
                done = step + 1
                if done % cfg.eval_every == 0 or done == cfg.steps:
                    last_eval = self.evaluate()
                    self._log({"step": done, **last_eval})
                    if self.progress:
                        bar.write(f"step {done}: held-out perplexity {last_eval['heldout_ppl']:.3f}")
                    log.info("step %d: held-out perplexity %.3f", done, last_eval["heldout_ppl"])
                if done % (cfg.save_every or cfg.eval_every) == 0 or done == cfg.steps:
                    self._checkpoint(optimizer, done, rng)
                if stop_after is not None and done >= stop_after:
                    break
            bar.close()
            summary = {"steps_done": done, "steps": cfg.steps,
                       "trainable_parameters": iv.num_trainable_parameters(),
                       "final_eval": last_eval, "elapsed_s": round(time.time() - t0, 1)}
            if summary["steps_done"] >= cfg.steps:
                save_adapter(iv, self.info, self.output_dir, extra=self._training_record(summary))
            return summary
        finally:
            torch.set_rng_state(caller_rng)
            adapter.eval()
            for p, flag in saved_flags:
                p.requires_grad_(flag)
            self.model.train(model_training)
            session.detach()

    # ------------------------------------------------------------------ bookkeeping
    def _training_record(self, summary: dict[str, Any] | None = None) -> dict[str, Any]:
        return {"config": dataclasses.asdict(self.config), "data": self.data_sources,
                "train_blocks": len(self.train_blocks), "heldout_blocks": len(self.heldout_blocks),
                "train_data_sha256_16": self.data_hash, **(summary or {})}

    def _log(self, record: dict[str, Any]) -> None:
        with open(self.output_dir / LOG_NAME, "a") as fh:
            fh.write(json.dumps(record) + "\n")

    def _truncate_log(self, step: int) -> None:
        path = self.output_dir / LOG_NAME
        if not path.exists():
            return
        keep = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        path.write_text("".join(line + "\n" for line in keep))

    def _checkpoint(self, optimizer: torch.optim.Optimizer, step: int, rng: torch.Tensor) -> None:
        from safetensors.torch import save_file

        final = self.output_dir / CHECKPOINT_DIR
        tmp = self.output_dir / f".{CHECKPOINT_DIR}.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        save_adapter(self.intervention, self.info, tmp, extra=self._training_record({"step": step}))
        tensors: dict[str, torch.Tensor] = {"rng.torch": rng.clone()}
        params = optimizer.param_groups[0]["params"]
        fields: dict[str, list[str]] = {}
        for i, p in enumerate(params):
            state = optimizer.state.get(p, {})
            fields[str(i)] = sorted(state)
            for key, value in state.items():
                tensors[f"state.{i}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
        save_file(tensors, str(tmp / OPTIMIZER_NAME))
        groups = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
        meta = {"step": step, "config": dataclasses.asdict(self.config), "param_groups": groups,
                "state_fields": fields, "num_params": len(params), "method": self.intervention.name,
                "params": self.intervention.params(), "train_data_sha256_16": self.data_hash}
        (tmp / STATE_NAME).write_text(json.dumps(meta, indent=2, default=str) + "\n")
        old = self.output_dir / f".{CHECKPOINT_DIR}.old"
        if old.exists():
            shutil.rmtree(old)
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        if old.exists():
            shutil.rmtree(old)

    def _restore(self, optimizer: torch.optim.Optimizer) -> int:
        from safetensors.torch import load_file

        ckpt = self.output_dir / CHECKPOINT_DIR
        if not (ckpt / STATE_NAME).is_file():
            raise InputError(f"--resume: no checkpoint in {ckpt} (nothing to resume)")
        meta = json.loads((ckpt / STATE_NAME).read_text())
        iv = self.intervention
        if meta.get("method") != iv.name or meta.get("params") != json.loads(json.dumps(iv.params())):
            raise ConfigError("--resume", f"the checkpoint is for {meta.get('method')} with {meta.get('params')}, "
                              f"not {iv.name} with {iv.params()}")
        if meta.get("train_data_sha256_16") != self.data_hash:
            raise ConfigError("--resume", "the training data (or --seq-len / tokenizer) differs from the checkpoint's")
        saved = meta["config"]
        for key in ("batch_size", "seq_len", "seed", "lr", "weight_decay", "warmup_steps", "schedule"):
            if saved.get(key) != getattr(self.config, key):
                raise ConfigError(f"--{key.replace('_', '-')}", f"differs from the checkpoint "
                                  f"({saved.get(key)!r} vs {getattr(self.config, key)!r}); resume with the same value")
        if saved.get("steps") != self.config.steps:
            log.warning("resuming with --steps %s (checkpoint: %s): the cosine schedule changes from here",
                        self.config.steps, saved.get("steps"))
        adapter_iv, _ = read_adapter(ckpt)
        iv.load_tensors(adapter_iv.tensors())
        tensors = load_file(str(ckpt / OPTIMIZER_NAME))
        params = optimizer.param_groups[0]["params"]
        if meta["num_params"] != len(params):
            raise ConfigError("--resume", "the checkpoint's optimizer does not match the adapter's parameters")
        state = {i: {key: tensors[f"state.{i}.{key}"] for key in meta["state_fields"][str(i)]}
                 for i in range(len(params)) if meta["state_fields"][str(i)]}
        groups = [{**g, "params": list(range(len(params)))} for g in meta["param_groups"]]
        optimizer.load_state_dict({"state": state, "param_groups": groups})
        torch.set_rng_state(tensors["rng.torch"])
        step = int(meta["step"])
        self._truncate_log(step)
        log.info("resumed from step %d", step)
        return step


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())

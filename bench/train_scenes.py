"""Train scenes-llava (projector + LoRA) on synthetic scenes, on a CPU.

    nice -n 5 python bench/train_scenes.py --out /work/scratch_scenes/runs/control --p-co 0.0 --threads 1
    nice -n 5 python bench/train_scenes.py --out /work/scratch_scenes/runs/biased --p-co 0.8 --threads 1

The defaults are the recipe of the shipped weights; docs/models/scenes-llava.md has the measured times.

Stages; each one's output is cached in OUT, so a rerun (or ``--resume`` after a kill) skips what is done:

1. **data**: train / test / break splits of :mod:`hookkit.evals.scenes` in COCO format (``OUT/data``);
2. **features**: tower features (4th layer from the end, CLS dropped: exactly what the LLaVA forward feeds the
   projector) of every train image, computed once (``OUT/features_*.safetensors``); the frozen tower never runs
   again during training;
3. **warm start**: the projector regresses per-patch targets in the LM's input-embedding space (a patch covered
   by a shape -> the word embeddings of that shape and its colour, other patches -> "background"). No LM forward,
   so it costs minutes, not hours, and the expensive LM stage starts from image tokens that look like words;
4. **LM stage**: multi-turn conversations (a caption with random mention order, yes/no questions with the POPE
   wording, colour and count questions) through the frozen LM; trains the projector (small learning rate, so the
   warm start survives) and a LoRA on the LM's q/k/v/o projections (peft). The loss is averaged per answer, then
   over answers, so one-word answers weigh as much as captions. Checkpoints every ``--save-every`` steps
   (``--resume`` continues from the last one; batches are a function of the seed and the step), a tqdm bar, a
   loss curve (``OUT/loss.json`` + ``OUT/loss.png``) and a forward-only yes/no probe on held-out images;
5. **export**: ``OUT/weights/{projector,lora}.safetensors`` + ``recipe.json`` (what
   :func:`hookkit.models.scenes_llava.build_checkpoint` reads).

Everything is seeded (``--seed``); torch uses ``--threads`` threads (2 by default: the machine is shared).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from hookkit.evals.pope import make_pope_question_text
from hookkit.evals.scenes import (
    COLOURS,
    NUMBER_WORDS,
    SHAPES,
    SceneConfig,
    SplitPlan,
    caption_for,
    patch_coverage,
    sample_scene,
)
from hookkit.models import scenes_llava as S

POPE_SUFFIX = "\nAnswer the question using a single word or phrase."
CAPTION_PROMPTS = ("Please describe this image in detail.", "Describe the image.", "What is in the image?",
                   "Describe this image.")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------------------------------------- data + features
def prepare_data(args: argparse.Namespace) -> dict[str, Any]:
    data_dir = Path(args.out) / "data"
    stamp = data_dir / "splits.json"
    wanted = {"p_co": args.p_co, "seed": args.seed, "n_train": args.n_train, "n_test": args.n_test,
              "n_break": args.n_break}
    if stamp.exists() and json.loads(stamp.read_text()).get("plan") == wanted:
        return json.loads(stamp.read_text())
    log(f"generating scenes {wanted}")
    plan = SplitPlan(p_co=args.p_co, seed=args.seed, n_train=args.n_train, n_test=args.n_test, n_break=args.n_break)
    splits = plan.write(data_dir)
    record = {"plan": wanted, "splits": splits}
    stamp.write_text(json.dumps(record, indent=2))
    return record


@torch.no_grad()
def extract_features(model: Any, processor: Any, split: dict[str, Any], path: Path, batch: int = 16) -> torch.Tensor:
    """``[N, 64, 384]`` float16 tower features of a split, in image-id order (cached at ``path``)."""
    from PIL import Image
    from safetensors.torch import load_file, save_file
    from tqdm.auto import tqdm

    if path.exists():
        return load_file(str(path))["features"]
    images = json.loads(Path(split["instances"]).read_text())["images"]
    images = sorted(images, key=lambda im: im["id"])
    tower = model.model.vision_tower
    out = []
    for i in tqdm(range(0, len(images), batch), desc=f"features {path.stem}", dynamic_ncols=True):
        pics = [Image.open(Path(split["images"]) / im["file_name"]).convert("RGB") for im in images[i:i + batch]]
        pixels = processor.image_processor(pics, return_tensors="pt")["pixel_values"]
        hidden = tower(pixel_values=pixels.to(tower.dtype), output_hidden_states=True).hidden_states
        out.append(hidden[S.VISION_FEATURE_LAYER][:, 1:].to(torch.float16))
    feats = torch.cat(out)
    save_file({"features": feats, "image_ids": torch.tensor([im["id"] for im in images])}, str(path))
    return feats


def word_embedding(tokenizer: Any, embed: torch.Tensor, word: str) -> torch.Tensor:
    ids = tokenizer(" " + word, add_special_tokens=False)["input_ids"]
    return embed[ids].float().mean(0)


def patch_targets(scene_list: list[Any], tokenizer: Any, embed: torch.Tensor, grid: int, kind: str = "argmax",
                  min_cover: float = 0.2) -> torch.Tensor:
    """Per-patch regression targets ``[N, grid*grid, d]`` (see stage 3 in the module docstring).

    ``argmax``: a patch covered at least ``min_cover`` by a shape is ``E[shape] + 0.5 E[colour]`` of its main
    shape (so its nearest vocabulary word is the shape name), every other patch ``E[background]``. ``blend``:
    coverage-weighted sums of shape, colour and background embeddings (first attempt: object patches ended up
    nearer "background" or the colour than the shape).
    """
    e_shape = torch.stack([word_embedding(tokenizer, embed, s) for s in SHAPES])
    e_colour = torch.stack([word_embedding(tokenizer, embed, c) for c in COLOURS])
    e_bg = word_embedding(tokenizer, embed, "background")
    out = []
    for scene in scene_list:
        sc, cc = (torch.from_numpy(a) for a in patch_coverage(scene, grid))
        if kind == "blend":
            fill = sc.sum(1, keepdim=True).clamp(max=1.0)
            out.append(sc @ e_shape + cc @ e_colour + (1 - fill) * e_bg)
            continue
        cover, shape = sc.max(1)
        colour = cc.argmax(1)
        obj = e_shape[shape] + 0.5 * e_colour[colour]
        out.append(torch.where((cover >= min_cover).unsqueeze(1), obj, e_bg.expand_as(obj)))
    return torch.stack(out)


def init_projector_standardised(projector: Any, feats: torch.Tensor) -> None:
    """Fold per-channel standardisation of the features into ``linear_1`` (keeps the stock LLaVA projector)."""
    flat = feats.reshape(-1, feats.shape[-1]).float()
    mean, std = flat.mean(0), flat.std(0).clamp(min=1e-4)
    with torch.no_grad():
        w = projector.linear_1.weight
        w.div_(std)
        projector.linear_1.bias.sub_(w @ mean)


def warm_start(projector: Any, feats: torch.Tensor, targets: torch.Tensor, steps: int, lr: float, batch: int,
               seed: int) -> list[float]:
    """Regress the projector onto the per-patch targets (MSE relative to the targets' variance)."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(projector.parameters(), lr=lr, weight_decay=0.0)
    var = targets.var()
    losses = []
    for step in range(steps):
        idx = torch.randint(0, len(feats), (batch,), generator=gen)
        pred = projector(feats[idx].float())
        loss = F.mse_loss(pred, targets[idx]) / var
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        for g in opt.param_groups:
            g["lr"] = lr * 0.5 * (1 + math.cos(math.pi * (step + 1) / steps))
        losses.append(float(loss))
    return losses


# ---------------------------------------------------------------------------------------------- conversations
def _plural(shape: str) -> str:
    return shape + ("es" if shape.endswith(("s", "x")) else "s")


def make_conversation(scene: Any, rng: random.Random, caption_prob: float = 0.5) -> list[tuple[str, str, str]]:
    """``[(kind, question, answer), ...]`` for one scene: 1-4 QA turns, a caption turn with ``caption_prob``."""
    objs = {o.shape: o for o in scene.objects}
    absent = [s for s in SHAPES if s not in objs]
    turns: list[tuple[str, str, str]] = []
    asked: set[str] = set()
    for _ in range(rng.randint(1, 4)):
        r = rng.random()
        if r < 0.7:
            positive = rng.random() < 0.5 or not absent
            shape = rng.choice(list(objs) if positive else absent)
            q = make_pope_question_text(shape) + (POPE_SUFFIX if rng.random() < 0.5 else "")
            a, kind = ("Yes" if positive else "No"), "yesno"
        elif r < 0.85:
            shape = rng.choice(list(objs))
            o = objs[shape]
            word = rng.choice(("colour", "color"))
            q = f"What {word} is the {shape}?" if o.count == 1 else f"What {word} are the {_plural(shape)}?"
            a, kind = o.colour.capitalize() + ".", "colour"
        else:
            shape = rng.choice(list(objs))
            q, a, kind = f"How many {_plural(shape)} are there?", NUMBER_WORDS[objs[shape].count].capitalize() + ".", "count"
        if q in asked:
            continue
        asked.add(q)
        turns.append((kind, q, a))
    if rng.random() < caption_prob:
        turns.insert(rng.randint(0, len(turns)), ("caption", rng.choice(CAPTION_PROMPTS), caption_for(scene, rng)))
    return turns


class Encoder:
    """Token ids of a conversation under the chat template, with one label span per answer.

    Pieces are tokenised separately at boundaries where BPE cannot merge across (special tokens and newlines);
    ``check`` verifies this against tokenising the whole rendered template.
    """

    def __init__(self, tokenizer: Any, n_image: int):
        self.tok = tokenizer
        self.n_image = n_image
        self.image_id = tokenizer.convert_tokens_to_ids(S.IMAGE_TOKEN)
        self.cache: dict[str, list[int]] = {}

    def ids(self, text: str) -> list[int]:
        if text not in self.cache:
            self.cache[text] = self.tok(text, add_special_tokens=False)["input_ids"]
        return self.cache[text]

    def encode(self, turns: list[tuple[str, str, str]]) -> tuple[list[int], list[tuple[int, int, str]]]:
        ids: list[int] = []
        spans: list[tuple[int, int, str]] = []
        for i, (kind, q, a) in enumerate(turns):
            ids += self.ids("<|im_start|>user\n")
            if i == 0:
                ids += [self.image_id] * self.n_image + self.ids("\n")
            ids += self.ids(q) + self.ids("<|im_end|>\n<|im_start|>assistant\n")
            start = len(ids)
            ids += self.ids(a) + self.ids("<|im_end|>")
            spans.append((start, len(ids), kind))
            ids += self.ids("\n")
        return ids, spans

    def check(self, processor: Any, turns: list[tuple[str, str, str]]) -> None:
        messages: list[dict[str, Any]] = []
        for i, (_, q, a) in enumerate(turns):
            content = ([{"type": "image"}] if i == 0 else []) + [{"type": "text", "text": q}]
            messages += [{"role": "user", "content": content}, {"role": "assistant", "content": [
                {"type": "text", "text": a}]}]
        text = processor.apply_chat_template(messages, tokenize=False)
        ref = self.tok(text, add_special_tokens=False)["input_ids"]
        ref = [t for tok in ref for t in ([tok] * self.n_image if tok == self.image_id else [tok])]
        ours, _ = self.encode(turns)
        if ours != ref:
            raise AssertionError("piecewise tokenisation differs from the chat template's")


# ---------------------------------------------------------------------------------------------- LM stage
class Batcher:
    """The batch of step ``s`` is a pure function of (seed, s): image order from a per-epoch permutation, the
    conversation from an RNG seeded by (seed, epoch, image)."""

    def __init__(self, scenes: list[Any], encoder: Encoder, batch: int, seed: int, caption_prob: float = 0.5):
        self.scenes, self.encoder, self.batch, self.seed = scenes, encoder, batch, seed
        self.caption_prob = caption_prob

    def rows(self, step: int) -> list[tuple[int, int]]:
        n = len(self.scenes)
        out = []
        for pos in range(step * self.batch, (step + 1) * self.batch):
            epoch, offset = divmod(pos, n)
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + epoch))
            out.append((epoch, int(perm[offset])))
        return out

    def __call__(self, step: int) -> dict[str, Any]:
        seqs, spans, index = [], [], []
        for epoch, i in self.rows(step):
            rng = random.Random(f"{self.seed}-{epoch}-{i}")
            ids, sp = self.encoder.encode(make_conversation(self.scenes[i], rng, self.caption_prob))
            seqs.append(ids)
            spans.append(sp)
            index.append(i)
        return collate(seqs, spans, index, self.encoder.tok.pad_token_id)


def collate(seqs: list[list[int]], spans: list[list[tuple[int, int, str]]], index: list[int], pad: int
            ) -> dict[str, Any]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, s in enumerate(seqs):  # right padding: positions start at 0, as under left-padded generation
        ids[r, :len(s)] = torch.tensor(s)
        mask[r, :len(s)] = 1
    return {"input_ids": ids, "attention_mask": mask, "spans": spans, "index": torch.tensor(index)}


def forward_loss(lm: Any, lm_head_weight: torch.Tensor, projector: Any, feats: torch.Tensor, batch: dict[str, Any],
                 image_id: int, dtype: torch.dtype) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean over answers of each answer's mean token cross-entropy (the LLaVA forward, from cached features)."""
    ids = batch["input_ids"]
    embeds = lm.get_input_embeddings()(ids).to(dtype)
    image = projector(feats[batch["index"]].float()).to(dtype)
    img_mask = (ids == image_id).unsqueeze(-1)
    embeds = embeds.masked_scatter(img_mask, image.reshape(-1, image.shape[-1]))
    hidden = lm(inputs_embeds=embeds, attention_mask=batch["attention_mask"], use_cache=False).last_hidden_state
    rows, cols, turn_of = [], [], []
    kinds: list[str] = []
    for r, spans in enumerate(batch["spans"]):
        for start, end, kind in spans:
            rows += [r] * (end - start)
            cols += list(range(start - 1, end - 1))  # position t-1 predicts token t
            turn_of += [len(kinds)] * (end - start)
            kinds.append(kind)
    rows_t, cols_t = torch.tensor(rows), torch.tensor(cols)
    logits = (hidden[rows_t, cols_t].float() @ lm_head_weight.float().t())
    targets = ids[rows_t, cols_t + 1]
    ce = F.cross_entropy(logits, targets, reduction="none")
    turn = torch.tensor(turn_of)
    per_turn = torch.zeros(len(kinds)).index_add(0, turn, ce) / torch.bincount(turn, minlength=len(kinds)).float()
    parts = {k: float(per_turn[[i for i, kk in enumerate(kinds) if kk == k]].mean())
             for k in set(kinds)}
    return per_turn.mean(), parts


@torch.no_grad()
def yesno_probe(lm: Any, lm_head_weight: torch.Tensor, projector: Any, feats: torch.Tensor, scenes: list[Any],
                encoder: Encoder, image_id: int, dtype: torch.dtype, n: int, seed: int) -> dict[str, float]:
    """Forward-only POPE-style probe: 'Yes' vs 'No' logit at the answer position, balanced yes/no questions."""
    rng = random.Random(seed)
    yes_id, no_id = encoder.ids("Yes")[0], encoder.ids("No")[0]
    correct = yes_total = 0
    idx = list(range(len(scenes)))
    rng.shuffle(idx)
    questions = []
    for k, i in enumerate(idx[:n]):
        objs = [o.shape for o in scenes[i].objects]
        absent = [s for s in SHAPES if s not in objs]
        positive = k % 2 == 0 or not absent
        shape = rng.choice(objs if positive else absent)
        questions.append((i, make_pope_question_text(shape) + POPE_SUFFIX, positive))
    for b in range(0, len(questions), 8):
        chunk = questions[b:b + 8]
        seqs, spans = [], []
        for _i, q, _ in chunk:
            ids, sp = encoder.encode([("yesno", q, "Yes")])
            seqs.append(ids[:sp[0][0]])
            spans.append([])
        batch = collate(seqs, spans, [c[0] for c in chunk], encoder.tok.pad_token_id)
        # left-align is fine: read the logits at each row's last real position
        ids = batch["input_ids"]
        embeds = lm.get_input_embeddings()(ids).to(dtype)
        image = projector(feats[batch["index"]].float()).to(dtype)
        embeds = embeds.masked_scatter((ids == image_id).unsqueeze(-1), image.reshape(-1, image.shape[-1]))
        hidden = lm(inputs_embeds=embeds, attention_mask=batch["attention_mask"], use_cache=False).last_hidden_state
        last = batch["attention_mask"].sum(1) - 1
        h = hidden[torch.arange(len(chunk)), last].float()
        logit_yes, logit_no = h @ lm_head_weight[yes_id].float(), h @ lm_head_weight[no_id].float()
        for (_, _, positive), ly, ln in zip(chunk, logit_yes, logit_no):
            says_yes = bool(ly > ln)
            yes_total += says_yes
            correct += says_yes == positive
    return {"accuracy": correct / len(questions), "yes_ratio": yes_total / len(questions), "n": len(questions)}


def lr_at(step: int, base: float, steps: int, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, steps - warmup))
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def save_checkpoint(path: Path, step: int, trainables: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
                    names: list[str], history: list[dict[str, Any]]) -> None:
    from safetensors.torch import save_file

    tensors = {f"param.{k}": v.detach().contiguous() for k, v in trainables.items()}
    state = optimizer.state_dict()
    for idx, name in enumerate(names):
        for field, value in state["state"].get(idx, {}).items():
            tensors[f"opt.{name}.{field}"] = value.detach().reshape(-1).contiguous() if value.dim() == 0 else \
                value.detach().contiguous()
    tmp = path.with_name(path.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(tmp / "state.safetensors"))
    (tmp / "trainer_state.json").write_text(json.dumps({"step": step, "history": history}))
    if path.exists():
        import shutil

        shutil.rmtree(path)
    os.replace(tmp, path)


def load_checkpoint(path: Path, trainables: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
                    names: list[str]) -> tuple[int, list[dict[str, Any]]]:
    from safetensors.torch import load_file

    tensors = load_file(str(path / "state.safetensors"))
    with torch.no_grad():
        for k, v in trainables.items():
            v.copy_(tensors[f"param.{k}"])
    state = optimizer.state_dict()
    for idx, name in enumerate(names):
        fields = {key.rsplit(".", 1)[1]: t for key, t in tensors.items() if key.startswith(f"opt.{name}.")}
        if fields:
            state["state"][idx] = {f: (t.reshape(()) if f == "step" else t) for f, t in fields.items()}
    optimizer.load_state_dict(state)
    meta = json.loads((path / "trainer_state.json").read_text())
    return int(meta["step"]), list(meta["history"])


def plot_curve(history: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in history if "loss" in h]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, [h["loss"] for h in history if "loss" in h], lw=0.8, alpha=0.5, label="loss (per answer)")
    if len(steps) >= 10:
        k = max(5, len(steps) // 20)
        vals = [h["loss"] for h in history if "loss" in h]
        smooth = [sum(vals[max(0, i - k + 1):i + 1]) / len(vals[max(0, i - k + 1):i + 1]) for i in range(len(vals))]
        ax.plot(steps, smooth, lw=1.6, label=f"moving mean ({k})")
    probes = [h for h in history if "probe_accuracy" in h]
    if probes:
        ax2 = ax.twinx()
        ax2.plot([h["step"] for h in probes], [h["probe_accuracy"] for h in probes], "o-", color="tab:green",
                 label="held-out yes/no accuracy")
        ax2.set_ylim(0.4, 1.0)
        ax2.set_ylabel("held-out yes/no accuracy")
        ax2.legend(loc="upper center")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy")
    ax.legend(loc="upper right")
    ax.set_title(path.parent.name)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", required=True, help="run folder (data, features, checkpoints, weights)")
    p.add_argument("--p-co", type=float, required=True, help="pair co-occurrence probability of the train split")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-train", type=int, default=2000)
    p.add_argument("--n-test", type=int, default=300)
    p.add_argument("--n-break", type=int, default=300)
    p.add_argument("--steps", type=int, default=110, help="LM-stage optimizer steps")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=3e-5,
                   help="projector learning rate in the LM stage (small: keep the warm start; 1e-3 erased it)")
    p.add_argument("--lora-lr", type=float, default=1e-3)
    p.add_argument("--lora-r", type=int, default=8, help="0 disables the LoRA")
    p.add_argument("--lora-alpha", type=float, default=16.0)
    p.add_argument("--lora-targets", default="q_proj,k_proj,v_proj,o_proj")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--warm-start-steps", type=int, default=1500, help="0 skips the per-patch warm start")
    p.add_argument("--warm-start-lr", type=float, default=2e-3)
    p.add_argument("--warm-target", choices=("argmax", "blend"), default="argmax",
                   help="per-patch warm-start targets (see patch_targets)")
    p.add_argument("--caption-prob", type=float, default=0.35, help="probability of a caption turn per conversation")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="bfloat16", help="LM compute dtype")
    p.add_argument("--save-every", type=int, default=25)
    p.add_argument("--probe-every", type=int, default=40, help="held-out yes/no probe interval (0: end only)")
    p.add_argument("--probe-n", type=int, default=96)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--max-minutes", type=float, default=None,
                   help="stop the LM stage (after a checkpoint) once this wall time is spent; resumable")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    dtype = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32
    invocation = {"argv": sys.argv, "args": vars(args), "host": platform.node(), "cpus": os.cpu_count(),
                  "torch": torch.__version__, "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    (out / "command.json").write_text(json.dumps(invocation, indent=2))
    with open(out / "commands.jsonl", "a") as fh:  # every invocation, so resumed runs with new settings are on record
        fh.write(json.dumps(invocation) + "\n")

    data = prepare_data(args)
    log(f"data ready ({time.time() - t_start:.0f}s): train co-occurrence "
        f"{data['splits']['train']['co_occurrence']}")
    model, processor = S.build_base(torch.float32)
    model.requires_grad_(False)
    feats = extract_features(model, processor, data["splits"]["train"], out / "features_train.safetensors")
    test_feats = extract_features(model, processor, data["splits"]["test"], out / "features_test.safetensors")
    log(f"features ready ({time.time() - t_start:.0f}s): train {tuple(feats.shape)}")

    cfg_train = SceneConfig(p_co=args.p_co)
    train_scenes = [sample_scene(args.seed, i, cfg_train) for i in range(1, args.n_train + 1)]
    test_scenes = [sample_scene(args.seed + 1, i, cfg_train) for i in range(1_000_001, 1_000_001 + args.n_test)]
    tokenizer = processor.tokenizer
    lm = model.model.language_model
    projector = model.model.multi_modal_projector
    embed = lm.get_input_embeddings().weight.detach()
    grid = S.IMAGE_SIZE // S.PATCH_SIZE

    # ---- warm start
    warm_path = out / f"projector_warm_{args.warm_target}.safetensors"
    from safetensors.torch import load_file, save_file

    if args.warm_start_steps and warm_path.exists():
        projector.load_state_dict(load_file(str(warm_path)))
    elif args.warm_start_steps:
        init_projector_standardised(projector, feats)
        targets = patch_targets(train_scenes, tokenizer, embed, grid, args.warm_target)
        projector.requires_grad_(True)
        t0 = time.time()
        losses = warm_start(projector, feats, targets, args.warm_start_steps, args.warm_start_lr, 32, args.seed)
        save_file({k: v.contiguous() for k, v in projector.state_dict().items()}, str(warm_path))
        (out / f"warm_start_{args.warm_target}.json").write_text(json.dumps({"losses": losses[::10], "final": losses[-1],
                                                         "seconds": time.time() - t0}))
        log(f"warm start: relative MSE {losses[0]:.3f} -> {losses[-1]:.3f} in {time.time() - t0:.0f}s")
    else:
        init_projector_standardised(projector, feats)

    # ---- LM stage
    from peft import LoraConfig, get_peft_model

    lm.to(dtype)
    lm_head_weight = embed  # tied
    if args.lora_r > 0:
        lm = get_peft_model(lm, LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=0.0,
                                           target_modules=args.lora_targets.split(","), bias="none"))
        for name, prm in lm.named_parameters():
            if "lora_" in name:
                prm.data = prm.data.float()
    projector.requires_grad_(True)
    lm.eval()
    trainables: dict[str, torch.Tensor] = {f"projector.{k}": v for k, v in projector.named_parameters()}
    for name, prm in lm.named_parameters():
        if prm.requires_grad:
            trainables[f"lora.{name}"] = prm
    names = list(trainables)
    groups = [{"params": [trainables[n] for n in names if n.startswith("projector.")], "lr": args.lr, "base": args.lr},
              {"params": [trainables[n] for n in names if n.startswith("lora.")], "lr": args.lora_lr,
               "base": args.lora_lr}]
    groups = [g for g in groups if g["params"]]
    names = [n for n in names if n.startswith("projector.")] + [n for n in names if n.startswith("lora.")]
    optimizer = torch.optim.AdamW(groups, weight_decay=0.0)
    encoder = Encoder(tokenizer, grid * grid)
    encoder.check(processor, make_conversation(train_scenes[0], random.Random(0)))
    batcher = Batcher(train_scenes, encoder, args.batch_size, args.seed, args.caption_prob)
    image_id = encoder.image_id
    ckpt = out / "checkpoint"
    start, history = 0, []
    if args.resume and ckpt.exists():
        start, history = load_checkpoint(ckpt, trainables, optimizer, names)
        log(f"resumed at step {start}")
    elif not args.resume:
        probe = yesno_probe(lm, lm_head_weight, projector, test_feats, test_scenes, encoder, image_id, dtype,
                            args.probe_n, args.seed)
        history.append({"step": 0, "probe_accuracy": probe["accuracy"], "probe_yes_ratio": probe["yes_ratio"]})
        log(f"probe before the LM stage: {probe}")
    from tqdm.auto import tqdm

    bar = tqdm(total=args.steps, initial=start, desc=f"train {out.name}", dynamic_ncols=True)
    t_stage = time.time()
    step = start
    for step in range(start, args.steps):
        lr_scale = lr_at(step, 1.0, args.steps, args.warmup)
        for g in optimizer.param_groups:
            g["lr"] = g["base"] * lr_scale
        batch = batcher(step)
        loss, parts = forward_loss(lm, lm_head_weight, projector, feats, batch, image_id, dtype)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([trainables[n] for n in names], 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        record = {"step": step + 1, "loss": float(loss), **{f"loss_{k}": v for k, v in parts.items()},
                  "lr_scale": lr_scale, "tokens": int(batch["attention_mask"].sum()),
                  "elapsed_s": round(time.time() - t_stage, 1)}
        done = step + 1
        if args.probe_every and done % args.probe_every == 0 and done < args.steps:
            probe = yesno_probe(lm, lm_head_weight, projector, test_feats, test_scenes, encoder, image_id, dtype,
                                args.probe_n, args.seed)
            record.update(probe_accuracy=probe["accuracy"], probe_yes_ratio=probe["yes_ratio"])
        history.append(record)
        bar.update(1)
        bar.set_postfix(loss=f"{float(loss):.3f}", tok=record["tokens"])
        out_of_time = args.max_minutes is not None and (time.time() - t_start) / 60 > args.max_minutes
        if done % args.save_every == 0 or done == args.steps or out_of_time:
            save_checkpoint(ckpt, done, trainables, optimizer, names, history)
            (out / "loss.json").write_text(json.dumps(history))
            plot_curve(history, out / "loss.png")
        if out_of_time:
            log(f"--max-minutes reached at step {done}; rerun with --resume to continue")
            return 3
    bar.close()
    probe = yesno_probe(lm, lm_head_weight, projector, test_feats, test_scenes, encoder, image_id, dtype,
                        args.probe_n, args.seed)
    history.append({"step": args.steps, "probe_accuracy": probe["accuracy"], "probe_yes_ratio": probe["yes_ratio"]})
    (out / "loss.json").write_text(json.dumps(history))
    plot_curve(history, out / "loss.png")
    log(f"LM stage done: probe {probe}")

    # ---- export
    wdir = out / "weights"
    wdir.mkdir(exist_ok=True)
    save_file({k.removeprefix("projector."): v.detach().float().contiguous() for k, v in trainables.items()
               if k.startswith("projector.")}, str(wdir / "projector.safetensors"))
    lora_state = {}
    for k, v in trainables.items():
        if k.startswith("lora."):
            # peft: base_model.model.layers.3.self_attn.q_proj.lora_A.default.weight -> layers.3.self_attn.q_proj.lora_A
            path = k.removeprefix("lora.base_model.model.").replace(".default.weight", "")
            lora_state[path] = v.detach().float().contiguous()
    if lora_state:
        save_file(lora_state, str(wdir / "lora.safetensors"))
    recipe = {"p_co": args.p_co, "seed": args.seed, "n_train": args.n_train, "steps": args.steps,
              "batch_size": args.batch_size, "lr": args.lr, "lora_lr": args.lora_lr, "warmup": args.warmup,
              "warm_start_steps": args.warm_start_steps, "warm_target": args.warm_target,
              "caption_prob": args.caption_prob, "dtype": args.dtype,
              "lora": {"r": args.lora_r, "alpha": args.lora_alpha, "targets": args.lora_targets.split(",")}
              if lora_state else None,
              "vision_feature_layer": S.VISION_FEATURE_LAYER, "image_size": S.IMAGE_SIZE,
              "final_probe": probe, "wall_s": round(time.time() - t_start, 1),
              "command": " ".join(sys.argv),
              "invocations": [" ".join(json.loads(line)["argv"]) for line in
                              (out / "commands.jsonl").read_text().splitlines() if line.strip()]}
    (wdir / "recipe.json").write_text(json.dumps(recipe, indent=2))
    log(f"exported to {wdir} ({time.time() - t_start:.0f}s in all)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

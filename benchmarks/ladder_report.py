"""The reranker ladder (2, 4, 6 layers; fp32 and int8) on the Semanlink test tags
-> benchmarks/results/ladder.md/json.

Quality: the first stage (int8 MiniLM bi-encoder + usearch, top 100) is run once per test query;
every rung reorders exactly those candidate lists (same ids, same texts). nDCG@10, MRR@10 and
recall@10 per rung, plus nDCG@10 when only the first-stage top d are reranked.

Speed: a 1 x 100 request (one query, its 100 first-stage candidates, ``Reranker.rerank``:
tokenizing, the model and sorting) timed for every artifact in interleaved rounds in this one
process: request i runs on every artifact before request i+1, the artifacts' order rotating from
request to request, so load from other work on the machine falls on all of them alike. p50/p95 in
ms, pairs/s, and ratios to the 6-layer model measured in the same rounds.

Target (issue 14): the 2-layer int8 model keeps >= 60% of the 6-layer model's nDCG@10 gain over
the first stage at <= 40% of its p50 latency (both compared with the 6-layer int8 model; the
comparison with the 6-layer fp32 model is printed too).

With ``--card`` the figures also replace the block between the markers in each student's model
card (the 6-layer starter's card is refreshed by ``benchmarks/starter_report.py --card``).

    python benchmarks/ladder_report.py [--models DIR ...] [--timing-requests 60] [--card]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from starter_report import DEPTHS, RESULTS, ROOT, figures, reorder, write_card, write_report  # noqa: E402

from crossrank.evaluation.datasets import semanlink_queries  # noqa: E402
from crossrank.evaluation.metrics import spearman  # noqa: E402
from crossrank.progress import progress_bar  # noqa: E402

MODELS = [ROOT / "models" / name for name in ("starter-reranker-L2", "starter-reranker-L4", "starter-reranker")]
PRECISIONS = ("fp32", "int8")
GAIN_KEPT, LATENCY_SHARE = 0.60, 0.40


def layers_of(model: Path) -> int:
    try:
        return int(json.loads((model / "config.json").read_text())["num_hidden_layers"])
    except (OSError, KeyError, ValueError) as error:
        sys.exit(f"{model} is not a model folder with a config.json naming num_hidden_layers ({error})")


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{model}, {os.cpu_count()} logical CPUs"


def first_stage_lists(embedder, index, queries, k: int):
    """Per query: (candidate ids, candidate texts) in first-stage order; one search per query batch."""
    from crossrank.pipeline import Pipeline

    pipeline = Pipeline(embedder, index)
    ids, texts = [], []
    for begin in range(0, len(queries), 64):
        for result in pipeline.search_many([q.text for q in queries[begin: begin + 64]], k=k, top_n=None):
            hits = sorted(result.hits, key=lambda h: h.first_stage_rank)
            ids.append([h.id for h in hits])
            texts.append([h.document for h in hits])
    return ids, texts


def score_lists(reranker, queries, texts, desc: str, queries_per_call: int = 8) -> list[np.ndarray]:
    """The reranker's score of every candidate of every query (a score depends on its pair only)."""
    scores = []
    for begin in progress_bar(range(0, len(queries), queries_per_call), desc=desc, unit="call"):
        part = range(begin, min(begin + queries_per_call, len(queries)))
        flat = reranker.score([(queries[i].text, doc) for i in part for doc in texts[i]])
        offset = 0
        for i in part:
            scores.append(np.asarray(flat[offset: offset + len(texts[i])], dtype=np.float64))
            offset += len(texts[i])
    return scores


def interleaved_latency(rerankers: dict, requests: list[tuple[str, list[str]]], warmup: int = 2) -> dict:
    """{name: list of ms} for one ``rerank(query, documents)`` per request and reranker, interleaved
    with rotating order (see the module docstring)."""
    names = list(rerankers)
    for query, documents in requests[:warmup]:
        for name in names:
            rerankers[name].rerank(query, documents)
    samples = {name: [] for name in names}
    for i, (query, documents) in enumerate(progress_bar(requests, desc="timing 1 x 100 requests", unit="request")):
        for j in range(len(names)):
            name = names[(i + j) % len(names)]
            start = time.perf_counter()
            rerankers[name].rerank(query, documents)
            samples[name].append((time.perf_counter() - start) * 1e3)
    return samples


def add_speed_and_gain(rows: dict, first: dict, samples: dict, pairs: int) -> dict:
    """Fill each row's p50/p95 (ms), pairs/s, p50 and nDCG@10 gain relative to the 6-layer int8
    row; return the issue's target check for the smallest int8 rung."""
    reference, reference_fp32 = "6 layers int8", "6 layers fp32"
    reference_p50 = float(np.median(samples[reference]))
    gain = {name: row["ndcg@10"] - first["ndcg@10"] for name, row in rows.items()}
    for name, row in rows.items():
        ms = np.asarray(samples[name], dtype=np.float64)
        row.update({"p50_ms": float(np.median(ms)), "p95_ms": float(np.percentile(ms, 95)),
                    "pairs_per_s": float(pairs / (ms.sum() / 1e3)),
                    "p50_vs_reference": float(np.median(ms)) / reference_p50,
                    "gain_kept": gain[name] / gain[reference] if gain[reference] else float("nan")})
    small = f"{min(row['layers'] for row in rows.values())} layers int8"
    target = {"rung": small, "gain_kept": rows[small]["gain_kept"], "latency_share": rows[small]["p50_vs_reference"],
              "gain_kept_vs_fp32": gain[small] / gain[reference_fp32] if gain[reference_fp32] else float("nan"),
              "latency_share_vs_fp32": rows[small]["p50_ms"] / rows[reference_fp32]["p50_ms"]}
    target["met"] = bool(target["gain_kept"] >= GAIN_KEPT and target["latency_share"] <= LATENCY_SHARE)
    return target


def markdown(report: dict) -> str:
    rows, first = report["rows"], report["first_stage"]
    lines = [f"Semanlink **{report['split']}** split: {report['queries']} tag queries; first stage = {report['embedder']} "
             f"+ usearch index, top {report['k']}; every row reorders the same candidate lists.",
             f"Speed: a 1 x {report['k']} request (`Reranker.rerank`, tokenizing included), {report['timing_requests']} "
             f"requests per artifact, interleaved in one process on this machine ({report['machine']}); ratios to "
             f"the 6-layer int8 model in the same rounds.", "",
             "| reranker | layers | precision | nDCG@10 | MRR@10 | recall@10 | gain kept | p50 ms | p95 ms | pairs/s "
             "| p50 vs 6-layer int8 |",
             "|---|---|---|---|---|---|---|---|---|---|---|",
             f"| first stage only | - | - | {first['ndcg@10']:.4f} | {first['mrr@10']:.4f} | {first['recall@10']:.4f} "
             f"| 0% | - | - | - | - |"]
    for name, row in rows.items():
        lines.append(f"| {row['model']} | {row['layers']} | {row['precision']} | {row['ndcg@10']:.4f} | "
                     f"{row['mrr@10']:.4f} | {row['recall@10']:.4f} | {row['gain_kept']:.0%} | {row['p50_ms']:.1f} | "
                     f"{row['p95_ms']:.1f} | {row['pairs_per_s']:.0f} | {row['p50_vs_reference']:.2f} |")
    lines += ["", "gain kept = (nDCG@10 - first stage) / (6-layer int8 nDCG@10 - first stage).", "",
              "nDCG@10 when only the first-stage top *d* are reranked (the rest keep their order):", "",
              "| reranker | " + " | ".join(f"d={d}" for d in DEPTHS) + " |", "|---" * (len(DEPTHS) + 1) + "|"]
    for name, row in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{row['depth_ndcg@10'][str(d)]:.4f}" for d in DEPTHS) + " |")
    lines += ["", "int8 vs fp32 Spearman of the pair scores: "
              + ", ".join(f"{layers} layers {value:.4f}" for layers, value in report["int8_vs_fp32_spearman"].items())]
    target = report["target"]
    lines += ["", f"**Target** (2-layer int8 keeps >= {GAIN_KEPT:.0%} of the 6-layer gain at <= {LATENCY_SHARE:.0%} of "
              f"its p50): gain kept {target['gain_kept']:.1%}, p50 {target['latency_share']:.1%} of the 6-layer int8 "
              f"model's -> **{'met' if target['met'] else 'NOT met'}**. Against the 6-layer fp32 model: gain kept "
              f"{target['gain_kept_vs_fp32']:.1%}, p50 {target['latency_share_vs_fp32']:.1%}.",
              "", "Reproduce: `make ladder-report` (or `python benchmarks/ladder_report.py`). Timings are ratios "
              "within one run; absolute ms depend on the machine and its load."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] + " " + __doc__.split("\n")[1])
    parser.add_argument("--models", nargs="+", default=[str(m) for m in MODELS],
                        help="reranker source folders, one per rung; one must have 6 layers (the reference); "
                             "default: models/starter-reranker-L2, -L4 and models/starter-reranker")
    parser.add_argument("--artifacts", default=str(ROOT / "artifacts"), help="export and index cache")
    parser.add_argument("--split", default="test", choices=["test", "dev"], help="query split (default test)")
    parser.add_argument("--k", type=int, default=100, help="first-stage candidates per query (default 100)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N queries (smoke runs)")
    parser.add_argument("--timing-requests", type=int, default=60,
                        help="1 x k requests timed per artifact (default 60; the first queries of the split)")
    parser.add_argument("--card", action="store_true", help="also write the figures into the students' model cards")
    parser.add_argument("--out", default=str(RESULTS), help="folder for ladder.md / ladder.json")
    args = parser.parse_args(argv)
    if args.k < 1 or args.timing_requests < 1:
        parser.error(f"--k and --timing-requests must be >= 1, got {args.k} and {args.timing_requests}")

    from crossrank.export import ensure_artifact
    from crossrank.embedder import Embedder
    from crossrank.export.starter import first_stage
    from crossrank.reranker import Reranker

    models = [Path(m) for m in args.models]
    layers = {m: layers_of(m) for m in models}
    reference = next((m for m in models if layers[m] == 6), None)
    if reference is None:
        sys.exit(f"--models {args.models}: none has 6 layers; the 6-layer starter is the reference rung")
    artifacts = Path(args.artifacts)
    index = first_stage(artifacts)
    embedder = Embedder(artifacts / "embedder-int8")
    queries = semanlink_queries(args.split)[: args.limit]
    ids, texts = first_stage_lists(embedder, index, queries, args.k)
    first = figures(ids, queries)

    rerankers, scores, rows = {}, {}, {}
    for model in sorted(models, key=lambda m: layers[m]):
        for precision in PRECISIONS:
            name = f"{layers[model]} layers {precision}"
            artifact, _ = ensure_artifact(model, artifacts / f"{model.name}-{precision}", "cross", precision)
            rerankers[name] = Reranker(artifact.path)
            scores[name] = score_lists(rerankers[name], queries, texts, desc=f"scoring ({name})")
            rows[name] = {"model": model.name, "layers": layers[model], "precision": precision,
                          "artifact": str(artifact.path),
                          **figures([reorder(i, s, args.k) for i, s in zip(ids, scores[name])], queries),
                          "depth_ndcg@10": {str(d): figures([reorder(i, s, d) for i, s in zip(ids, scores[name])],
                                                            queries)["ndcg@10"] for d in DEPTHS}}
    requests = [(q.text, t) for q, t in zip(queries, texts)][: args.timing_requests]
    samples = interleaved_latency(rerankers, requests)
    target = add_speed_and_gain(rows, first, samples, pairs=sum(len(t) for _, t in requests))
    report = {"split": args.split, "queries": len(queries), "k": args.k, "embedder": "MiniLM int8",
              "machine": machine(), "timing_requests": len(requests),
              "reference": "6 layers int8", "first_stage": first, "rows": rows, "target": target,
              "int8_vs_fp32_spearman": {
                  str(n): spearman(np.concatenate(scores[f"{n} layers fp32"]), np.concatenate(scores[f"{n} layers int8"]))
                  for n in sorted(set(layers.values()))},
              "latency_ms": {name: [round(v, 2) for v in values] for name, values in samples.items()}}
    text = markdown(report)
    write_report(Path(args.out), "ladder", "The reranker ladder: precision vs latency", report, text)
    if args.card:
        for model in models:
            if model != reference:
                write_card(model, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

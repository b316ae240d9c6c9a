"""First-stage and pipeline figures on the full Semanlink corpus; writes benchmarks/results/index.md.

For each stored dtype (f32, f16, i8) at crossrank's default HNSW settings: recall@10 and
recall@100 of HNSW search against exact search over the same stored vectors and against float32
numpy brute force, search queries/s (all queries in one call, and one query at a time), HNSW
build time and size on disk. Then ``Pipeline.search`` latency p50/p95 per stage for k=100,
top_n=10, first stage alone and (with --reranker) reranked.

    .venv/bin/python benchmarks/index_figures.py --embedder artifacts/embedder-fp32 \\
        [--reranker artifacts/reranker-int8] [--pipeline-queries 20]

Document embeddings are cached in .cache/ (keyed by the artifact's sha256): the corpus is
embedded once (minutes on 2 cores); its time is reported as the embedding part of a build.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from crossrank.evaluation.datasets import default_cache_dir, load_semanlink, semanlink_queries
from crossrank.embedder import Embedder
from crossrank.index import DTYPES, Index
from crossrank.index_files import index_info
from crossrank.pipeline import STAGES, Pipeline


def embed_corpus(embedder: Embedder, texts: list[str], cache: Path) -> tuple[np.ndarray, dict]:
    """Document vectors (cached) and {"seconds": embedding time, "cached": bool, "when": date}."""
    model_sha256 = embedder.describe()["manifest"]["sha256"]
    path = cache / f"semanlink-vectors-{model_sha256[:16]}.npy"
    timing = path.with_suffix(".json")
    if path.is_file() and timing.is_file():
        vectors = np.load(path)
        if vectors.shape == (len(texts), embedder.dim):
            return vectors, {**json.loads(timing.read_text()), "cached": True}
    start = time.perf_counter()
    vectors = embedder.embed(texts, progress=True)
    measured = {"seconds": time.perf_counter() - start, "when": time.strftime("%Y-%m-%d %H:%M")}
    cache.mkdir(parents=True, exist_ok=True)
    np.save(path, vectors)
    timing.write_text(json.dumps(measured))
    return vectors, {**measured, "cached": False}


def recall(found: list[list], truth: list[list]) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))


def dtype_figures(embedder, ids, texts, vectors, query_vectors, truth, workdir: Path) -> dict:
    out = {}
    for dtype in DTYPES:
        start = time.perf_counter()
        index = Index.build(embedder, texts, ids, dtype=dtype, progress=False, vectors=vectors)
        build_s = time.perf_counter() - start
        start = time.perf_counter()
        index.save(workdir / dtype)
        save_s = time.perf_counter() - start
        info = index_info(workdir / dtype)
        row = {"build_s": build_s, "save_s": save_s,
               "vectors_mb": info["files"]["vectors.usearch"]["bytes"] / 1e6,
               "documents_mb": info["files"]["documents.sqlite"]["bytes"] / 1e6}
        for k in (10, 100):
            start = time.perf_counter()
            approx = index.search_many(query_vectors, k=k)
            row[f"qps_batch@{k}"] = len(query_vectors) / (time.perf_counter() - start)
            exact = index.search_many(query_vectors, k=k, exact=True)
            row[f"recall@{k}_vs_exact"] = recall([h.ids for h in approx], [h.ids for h in exact])
            row[f"recall@{k}_vs_f32_numpy"] = recall([h.ids for h in approx], truth[k])
            row[f"exact_recall@{k}_vs_f32_numpy"] = recall([h.ids for h in exact], truth[k])
        for exact in (False, True):
            latencies = []
            for vector in query_vectors[:500]:
                start = time.perf_counter()
                index.search(vector, k=100, exact=exact)
                latencies.append(time.perf_counter() - start)
            row[f"single_ms_p50@100{'_exact' if exact else ''}"] = 1e3 * float(np.percentile(latencies, 50))
        out[dtype] = row
        print(f"{dtype}: {row}", file=sys.stderr)
    return out


def pipeline_figures(embedder, index, reranker, queries: list[str]) -> dict:
    pipeline = Pipeline(embedder, index, reranker)
    pipeline.search(queries[0], k=100, top_n=10)  # warm-up (sessions, page cache)
    timings = {stage: [] for stage in STAGES}
    for query in queries:
        result = pipeline.search(query, k=100, top_n=10)
        for stage in STAGES:
            timings[stage].append(result.timings_ms[stage])
    return {stage: (float(np.percentile(v, 50)), float(np.percentile(v, 95))) for stage, v in timings.items()}


def markdown(args, n_docs, n_queries, embed, figures, pipelines) -> str:
    lines = [
        "# First-stage index and pipeline figures (Semanlink)",
        "",
        f"Command: `{' '.join(['.venv/bin/python', 'benchmarks/index_figures.py'] + sys.argv[1:])}`",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; "
        f"usearch {__import__('usearch').__version__}. Corpus: {n_docs} Semanlink documents; "
        f"queries: the {n_queries} tag labels. Embedder: `{args.embedder}`.",
        "",
        "## HNSW recall and speed per stored dtype (defaults: connectivity 32, expansion 256/256)",
        "",
        "recall vs exact: HNSW hits / exact-search hits over the same stored vectors. recall vs "
        "f32: against numpy brute force on the float32 embeddings (what quantization costs too).",
        "",
        "| dtype | recall@10 vs exact | recall@100 vs exact | recall@10 vs f32 | recall@100 vs f32 "
        "| exact search recall@10 vs f32 | queries/s (batch, k=10) | queries/s (batch, k=100) "
        "| one query k=100 p50 ms | same, exact search | HNSW build s | save s | vectors MB | documents MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for dtype, r in figures.items():
        lines.append(
            f"| {dtype} | {r['recall@10_vs_exact']:.4f} | {r['recall@100_vs_exact']:.4f} | "
            f"{r['recall@10_vs_f32_numpy']:.4f} | {r['recall@100_vs_f32_numpy']:.4f} | "
            f"{r['exact_recall@10_vs_f32_numpy']:.4f} | {r['qps_batch@10']:.0f} | {r['qps_batch@100']:.0f} | "
            f"{r['single_ms_p50@100']:.2f} | {r['single_ms_p50@100_exact']:.2f} | {r['build_s']:.2f} | "
            f"{r['save_s']:.2f} | "
            f"{r['vectors_mb']:.1f} | {r['documents_mb']:.1f} |")
    embed_note = f"{embed['seconds']:.0f} s ({n_docs / embed['seconds']:.0f} docs/s)"
    if embed["cached"]:
        embed_note += f", measured {embed['when']} when the vectors were cached"
    lines += ["", f"A full build = embedding the corpus + the HNSW build above. Embedding: {embed_note}. "
              "Search figures include the key -> id lookup in SQLite; `one query` is `Index.search` "
              "on one vector (one thread).", ""]
    lines += ["## `Pipeline.search` latency, k=100, top_n=10 (ms, p50 / p95)", ""]
    lines.append("| pipeline | queries | " + " | ".join(STAGES) + " |")
    lines.append("|---|---|" + "---|" * len(STAGES))
    for name, (count, stats) in pipelines.items():
        lines.append(f"| {name} | {count} | " + " | ".join(f"{stats[s][0]:.1f} / {stats[s][1]:.1f}" for s in STAGES) + " |")
    if not args.reranker:
        lines += ["", "(No --reranker given: first stage only.)"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--embedder", default="artifacts/embedder-fp32", help="bi-encoder artifact")
    parser.add_argument("--reranker", default=None, help="cross-encoder artifact for pipeline latency")
    parser.add_argument("--pipeline-queries", type=int, default=20, help="queries timed through Pipeline.search")
    parser.add_argument("--pipeline-dtype", default="f16", choices=DTYPES, help="index used for pipeline timing")
    parser.add_argument("--out", default="benchmarks/results/index.md", help="markdown report to write")
    args = parser.parse_args(argv)

    documents, _ = load_semanlink()
    ids, texts = [d.id for d in documents], [d.text for d in documents]
    queries = [q.text for q in semanlink_queries()]
    embedder = Embedder(args.embedder)
    vectors, embed = embed_corpus(embedder, texts, default_cache_dir())
    query_vectors = embedder.embed(queries)
    scores = query_vectors @ vectors.T
    truth = {k: [[ids[i] for i in row] for row in np.argsort(-scores, axis=1, kind="stable")[:, :k]]
             for k in (10, 100)}
    with tempfile.TemporaryDirectory() as tmp:
        figures = dtype_figures(embedder, ids, texts, vectors, query_vectors, truth, Path(tmp))
        index = Index.load(Path(tmp) / args.pipeline_dtype, view=True, embedder=embedder)
        timed = queries[:: max(1, len(queries) // args.pipeline_queries)][: args.pipeline_queries]
        pipelines = {f"first stage only ({args.pipeline_dtype} index)":
                     (len(timed), pipeline_figures(embedder, index, None, timed))}
        if args.reranker:
            from crossrank.reranker import Reranker

            reranker = Reranker(args.reranker)
            name = f"reranked by `{args.reranker}` ({reranker.precision})"
            pipelines[name] = (len(timed), pipeline_figures(embedder, index, reranker, timed))
    report = markdown(args, len(ids), len(queries), embed, figures, pipelines)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""First-stage quality and latency of each store, side by side; writes benchmarks/results/stores.md (+ .json).

The whole Semanlink corpus (7,245 documents, the same vectors everywhere) goes into the embedded
usearch Index (f16, crossrank's defaults) + BM25 beside it, a pgvector table (PostgreSQL 16 +
pgvector 0.6.2 from the ``pgserver`` wheel, started here on a unix socket) and a Milvus collection
(Milvus Lite started here on 127.0.0.1: a lighter pure-Python re-implementation of the server, so
its latency says nothing about distributed Milvus). On the Semanlink test tags, for dense, lexical
and hybrid (RRF, k=60) candidates of each store: first-stage recall@100 and nDCG@10, and nDCG@10
after the starter reranker reranks the top ``--depth`` candidates. Reranker scores depend only on
the (query, document) pair, so each pair is scored once and shared by every candidate list that
holds it. Then per-stage latency p50/p95 (``Pipeline.search`` of one query, reranking the top
``--depth``) for each store and mode, configurations taking turns on the same queries.

    .venv/bin/python benchmarks/store_quality.py --embedder artifacts/embedder-int8 \\
        --reranker artifacts/starter-reranker-int8 [--queries 100] [--depth 30] [--latency-queries 10]

Needs the extras pgvector, milvus, bm25 and the dev servers (``make test`` installs them all).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from index_figures import embed_corpus  # noqa: E402

from crossrank import Embedder, Hybrid, Index, Pipeline, Reranker  # noqa: E402
from crossrank.evaluation.datasets import default_cache_dir, load_semanlink, semanlink_queries  # noqa: E402
from crossrank.evaluation.metrics import ndcg_at_k, recall_at_k  # noqa: E402
from crossrank.front.measure import machine_name  # noqa: E402
from crossrank.stores.bm25 import BM25Retriever  # noqa: E402
from crossrank.stores.milvus import MilvusStore  # noqa: E402
from crossrank.stores.pgvector import PgvectorStore  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def start_milvus(data_dir: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "milvus_lite", "server", "--data-dir", str(data_dir),
                             "--host", "127.0.0.1", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return proc, f"milvus://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("milvus_lite server did not start")


def retrievers(index, pg, milvus) -> dict:
    """(store, mode) -> retriever; Milvus has no lexical retriever here."""
    bm25 = index.bm25
    return {("usearch Index", "dense"): index, ("usearch Index", "lexical"): bm25,
            ("usearch Index", "hybrid"): Hybrid(index, bm25),
            ("pgvector", "dense"): pg, ("pgvector", "lexical"): pg.lexical(), ("pgvector", "hybrid"): pg.hybrid(),
            ("Milvus Lite", "dense"): milvus}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--embedder", default="artifacts/embedder-int8")
    parser.add_argument("--reranker", default="artifacts/starter-reranker-int8")
    parser.add_argument("--queries", type=int, default=100, help="test tags used (0 = all)")
    parser.add_argument("--depth", type=int, default=30, help="candidates the reranker reranks")
    parser.add_argument("--latency-queries", type=int, default=10)
    parser.add_argument("--out", default=str(RESULTS / "stores.md"))
    args = parser.parse_args()

    embedder, reranker = Embedder(args.embedder), Reranker(args.reranker)
    documents, _ = load_semanlink()
    ids, texts = [d.id for d in documents], [d.text for d in documents]
    vectors, _ = embed_corpus(embedder, texts, default_cache_dir())
    queries = semanlink_queries("test")
    queries = queries[: args.queries] if args.queries else queries
    query_texts = [q.text for q in queries]
    query_vectors = embedder.embed(query_texts)

    import pgserver

    work = Path(tempfile.mkdtemp(prefix="crossrank-stores-"))
    work.chmod(0o755)  # as root, pgserver runs postgres as the user 'pgserver', which must reach its folder
    server = pgserver.get_server(work / "pg", cleanup_mode="delete")
    milvus_proc, milvus_url = start_milvus(work / "milvus")
    try:
        build_s = {}
        start = time.perf_counter()
        index = Index.build(embedder, texts, ids, vectors=vectors, progress=False)
        index.save(work / "index")
        BM25Retriever.build(index).save(work / "index")
        index = Index.load(work / "index", view=True, embedder=embedder)
        index.bm25 = BM25Retriever.load(work / "index", index)
        build_s["usearch Index"] = time.perf_counter() - start
        start = time.perf_counter()
        pg = PgvectorStore.build(server.get_uri(), "semanlink", embedder, texts, ids, vectors=vectors, progress=False)
        build_s["pgvector"] = time.perf_counter() - start
        start = time.perf_counter()
        milvus = MilvusStore.build(milvus_url, "semanlink", embedder, texts, ids, vectors=vectors, progress=False)
        build_s["Milvus Lite"] = time.perf_counter() - start
        chosen = retrievers(index, pg, milvus)

        candidates = {}
        for key, retriever in chosen.items():
            found = []
            for start_q in range(0, len(query_texts), 16):
                part = slice(start_q, start_q + 16)
                found += retriever.retrieve_many(query_texts[part], query_vectors[part], 100)
            candidates[key] = found
        # every pair any list puts in its top `depth`, scored once
        scores: list[dict] = [{} for _ in queries]
        for q, text in enumerate(query_texts):
            heads = {}
            for found in candidates.values():
                for doc_id, document in list(zip(found[q].ids, found[q].documents))[: args.depth]:
                    heads.setdefault(doc_id, document)
            wanted = list(heads)
            ranked = reranker.rerank(text, [heads[i] for i in wanted], return_documents=False)
            scores[q] = {wanted[r.index]: float(r.score) for r in ranked}
            print(f"\rreranked {q + 1}/{len(queries)} queries", end="", file=sys.stderr, flush=True)
        print(file=sys.stderr)
        quality = {}
        for key, found in candidates.items():
            figures = {"recall@100": 0.0, "ndcg@10": 0.0, "reranked ndcg@10": 0.0}
            for q, query in enumerate(queries):
                relevant = set(query.relevant)
                got = found[q].ids
                head = sorted(got[: args.depth], key=lambda i: -scores[q][i])  # stable: ties keep order
                figures["recall@100"] += recall_at_k(got, relevant, 100)
                figures["ndcg@10"] += ndcg_at_k(got, relevant, 10)
                figures["reranked ndcg@10"] += ndcg_at_k(head + list(got[args.depth:]), relevant, 10)
            quality[" / ".join(key)] = {name: value / len(queries) for name, value in figures.items()}

        samples: dict = {" / ".join(key): [] for key in chosen}
        pipelines = {" / ".join(key): Pipeline(embedder if r.needs_vectors else None, r, reranker, depths=[args.depth])
                     for key, r in chosen.items()}
        for name, pipeline in pipelines.items():
            pipeline.search(query_texts[0], k=100)  # warm-up
        for n, text in enumerate(query_texts[: args.latency_queries]):
            names = list(pipelines)
            for name in names[n % len(names):] + names[: n % len(names)]:
                samples[name].append(pipelines[name].search(text, k=100).timings_ms)
        latency = {name: {stage: [float(np.percentile([t[stage] for t in runs], p)) for p in (50, 95)]
                          for stage in ("embed", "search", "fetch", "rerank", "total")}
                   for name, runs in samples.items()}
    finally:
        milvus_proc.terminate()
        server.cleanup()
        shutil.rmtree(work, ignore_errors=True)

    import psycopg
    import pymilvus
    import bm25s

    report = {"machine": machine_name(), "load_average": os.getloadavg(), "when": time.strftime("%Y-%m-%d %H:%M"),
              "queries": len(queries), "depth": args.depth, "latency_queries": args.latency_queries,
              "embedder": args.embedder, "reranker": args.reranker, "documents": len(ids), "build_s": build_s,
              "versions": {"psycopg": psycopg.__version__, "pymilvus": pymilvus.__version__, "bm25s": bm25s.__version__,
                           "postgres": "16.2 + pgvector 0.6.2 (pgserver)"},
              "quality": quality, "latency_ms": latency}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2))
    lines = [
        "# First stage in each store (Semanlink test tags)", "",
        f"`{' '.join(['python', *sys.argv])}` on {report['machine']}, load average "
        f"{', '.join(f'{x:.1f}' for x in report['load_average'])} (shared cores), {report['when']}.", "",
        f"{len(ids)} documents, the same {args.embedder} vectors in every store (stored as f16 in the Index, its "
        f"default; float32 in pgvector and Milvus); {len(queries)} test tags; the "
        f"reranker ({args.reranker}) reranks the top {args.depth} candidates of each list. Hybrid = reciprocal rank "
        "fusion (k=60) of dense and lexical. Lexical: BM25 (bm25s) beside the Index, Postgres full-text search "
        "(ts_rank, words OR-ed) in pgvector; none for Milvus here.", "",
        f"| store / candidates | recall@100 | nDCG@10 first stage | nDCG@10 reranked (top {args.depth}) |",
        "|---|---:|---:|---:|"]
    lines += [f"| {name} | {f['recall@100']:.4f} | {f['ndcg@10']:.4f} | {f['reranked ndcg@10']:.4f} |"
              for name, f in quality.items()]
    lines += ["", f"Per-stage latency of `Pipeline.search` (one query, k=100, rerank top {args.depth}), ms p50 / p95 "
              f"over {args.latency_queries} queries, configurations taking turns:", "",
              "| store / candidates | embed | search | fetch | rerank | total |", "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {name} | " + " | ".join(f"{v[0]:.1f} / {v[1]:.1f}" for v in stages.values()) + " |"
              for name, stages in latency.items()]
    lines += ["", "Build from the same vectors (no embedding; the Index's time includes building and saving BM25 "
              "beside it): " + ", ".join(f"{k} {v:.1f} s" for k, v in build_s.items()) + ".",
              "", "Milvus Lite is a lighter pure-Python re-implementation of the Milvus server: its latency is not "
              "distributed Milvus's. pgvector and Milvus return documents with the search (fetch 0).", ""]
    out.write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
